"""PPO for a causal LM with a pluggable reward, on accelerate (+ DeepSpeed ZeRO-3): PPOTrainer, and the pieces of
a rollout that RLOO / GRPO's held-out evaluation shares (huatuo_o1/rl/trl_algorithms.py).

The PPO arithmetic itself (targets, losses) lives in huatuo_o1/rl/ppo_core.py as pure functions.
"""

import json
import math
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedTokenizerBase
from trl.models.utils import prepare_deepspeed, unwrap_model_for_generation

from huatuo_o1 import lora, training
from huatuo_o1.rl import ppo_core
from huatuo_o1.rl.config import BatchSizes, PPOConfig
from huatuo_o1.rl.loading import Models, Problem, stop_token_id_for
from huatuo_o1.rl.reward import SOURCES, RLReward
from huatuo_o1.verifier import RewardOutput, decode_until_stop


@dataclass
class Rollout:
    """One update's rollout on this process: the model inputs, what was sampled and scored, the targets."""

    query_responses: torch.Tensor  # prompt (left-padded) + response cut after its stop token
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    context_length: int  # prompt width: responses start there
    logprobs: torch.Tensor  # the policy's, zero past each response's last token
    well_formed: torch.Tensor  # bool per response: the answer layout
    texts: list  # the responses as the verifier read them
    # the rollout's raw pieces, to recompute the targets another way (tests, docs/rl.md's figure)
    sampled: torch.Tensor  # responses as generated, before the cut
    verifier_scores: torch.Tensor  # in the verifier's dtype
    ref_logprobs: torch.Tensor
    raw_values: torch.Tensor
    targets: ppo_core.Targets
    seconds: dict[str, float]  # where the rollout's time went, per phase (this process)
    reward_sources: list[str] | None = None  # who decided each reward (huatuo_o1/rl/reward.py), where the reward says


class PolicyAndValue(torch.nn.Module):
    """The policy and the value model as one module, so that DeepSpeed wraps (and shards) them together."""

    def __init__(self, policy, value_model):
        super().__init__()
        self.policy = policy
        self.value_model = value_model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        logits_to_keep: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Values at every position; logits at the last logits_to_keep positions (0: all)."""
        values = self.values(input_ids, attention_mask, position_ids)
        logits = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            logits_to_keep=logits_to_keep,
        ).logits
        return logits, values

    def values(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """The value model's estimate at every position, (batch, sequence length), in its dtype."""
        backbone = getattr(self.value_model, self.value_model.base_model_prefix)
        hidden = backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        return self.value_model.score(hidden).squeeze(-1)

    # trl's unwrap_model_for_generation switches checkpointing off for generate and back on after
    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.policy.is_gradient_checkpointing

    def gradient_checkpointing_disable(self) -> None:
        self.policy.gradient_checkpointing_disable()
        self.value_model.gradient_checkpointing_disable()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        self.policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self.value_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def place_frozen(model: torch.nn.Module, accelerator: Accelerator) -> torch.nn.Module:
    """A frozen model (PPO's reference, the verifier) ready for inference beside the trained one, in eval mode:
    under DeepSpeed an inference engine (sharded under ZeRO-3, whole on each process otherwise), else the model
    on the accelerator's device."""
    if accelerator.state.deepspeed_plugin is not None:
        model = prepare_deepspeed(model, accelerator)
    else:
        model = model.to(accelerator.device)
    model.eval()  # (DeepSpeed's engine returns None from eval())
    return model


def forward_inputs(query_mask: torch.Tensor, policy_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention mask and position ids over prompt + response (response tokens after its last token masked).

    The value one position past the last token is read from the last token's hidden state, so it is covered.
    """
    attention_mask = torch.cat([query_mask, policy_mask.long()], dim=1)
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    return attention_mask, position_ids


def response_logprobs(
    causal_lm: torch.nn.Module,
    query_responses: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    context_length: int,
    temperature: float,
) -> torch.Tensor:
    """log p(response token) under causal_lm at this temperature, (batch, response length); the responses start at
    context_length. Only the positions that predict response tokens go through the vocabulary projection."""
    response_length = query_responses.shape[1] - context_length
    logits = causal_lm(
        input_ids=query_responses,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
        logits_to_keep=response_length + 1,
    ).logits
    logits = logits[:, -(response_length + 1) : -1]
    return ppo_core.logprobs_of(logits, query_responses[:, context_length:], temperature)


@torch.no_grad()
def generate_responses(
    policy: torch.nn.Module,
    queries: torch.Tensor,
    query_mask: torch.Tensor,
    generation_config: GenerationConfig,
    chunk_size: int,
    pad_id: int,
) -> torch.Tensor:
    """Sample (or greedily decode) responses in chunks; returns (batch, longest response) token ids."""
    chunks = []
    for start in range(0, queries.shape[0], chunk_size):
        chunk_queries = queries[start : start + chunk_size]
        chunk_mask = query_mask[start : start + chunk_size]
        sequences = policy.generate(
            input_ids=chunk_queries, attention_mask=chunk_mask, generation_config=generation_config
        )
        chunks.append(sequences[:, chunk_queries.shape[1] :])
    length = max(chunk.shape[1] for chunk in chunks)
    return torch.cat([torch.nn.functional.pad(chunk, (0, length - chunk.shape[1]), value=pad_id) for chunk in chunks])


def read_and_score(
    tokenizer: PreTrainedTokenizerBase,
    responses: torch.Tensor,
    items: list[Problem],
    reward: RLReward,
    stop_token_id: int,
) -> tuple[RewardOutput, list[str]]:
    """Responses (token ids on the CPU, one row per item) read up to the stop token, and scored: (the reward's output,
    the texts it read)."""
    texts = [decode_until_stop(tokenizer, response.tolist(), stop_token_id) for response in responses]
    return reward(texts, items), texts


@torch.no_grad()
def greedy_answers(
    policy: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    items: list[Problem],
    reward: RLReward,
    generation_config: GenerationConfig,
    chunk_size: int,
    stop_token_id: int,
) -> tuple[list, list, list]:
    """Greedy responses to the items' prompts, read up to the stop token and scored: (rewards, well-formed, texts)."""
    pad_id = tokenizer.pad_token_id
    queries, query_mask = training.pad_batch([item.prompt_ids for item in items], pad_id, side="left")
    device = next(policy.parameters()).device
    responses = generate_responses(
        policy, queries.to(device), query_mask.to(device), generation_config, chunk_size, pad_id
    )
    return scored_answers(tokenizer, responses, items, reward, stop_token_id)


def scored_answers(
    tokenizer: PreTrainedTokenizerBase,
    responses: torch.Tensor,
    items: list[Problem],
    reward: RLReward,
    stop_token_id: int,
) -> tuple[list, list, list]:
    """Responses (one row per item) read up to the stop token and scored: (rewards, well-formed, texts)."""
    scored, texts = read_and_score(tokenizer, responses.cpu(), items, reward, stop_token_id)
    return scored.rewards.tolist(), scored.well_formed.tolist(), texts


def eval_figures(rewards: Sequence[float], well_formed: Sequence[bool], texts: Sequence[str]) -> dict:
    """What the held-out evaluation reports (PPO's and RLOO / GRPO's alike)."""
    return {"eval/mean_reward": sum(rewards) / len(rewards), "eval/format_rate": sum(well_formed) / len(well_formed),
            "eval/samples": len(rewards), "eval/example": texts[0][:300]}  # fmt: skip


def disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


class PPOTrainer:
    """PPO on a policy and a value model, against a frozen reference, rewarded by the verifier (or any rule).

    It owns the accelerator (and through it DeepSpeed, when the launch's config asks for it); `model`, the policy and
    the value model in one module (PolicyAndValue) so that DeepSpeed wraps and shards them together, with their AdamW
    optimizer and learning-rate schedule; the frozen reference policy and the verifier, placed for inference
    (`place_frozen`); the vLLM engine with --use_vllm; the checkpoints and rl_log.jsonl. With --lora_r the policy
    trains LoRA adapters and there is no reference model: the policy with its adapters off is the reference.

    One update (`train`):
      1. `rollout`: this process's prompts (`batch_for_update`) are answered by sampling, the responses cut after the
         stop token; in chunks of local_rollout_forward_batch_size the policy's and the reference's log-probs and the
         values are computed, then the reward (`reward_fn(response texts, problems)`); then the original trainer's
         targets (ppo_core.rollout_targets): per-token rewards = -kl_coef * KL up to the last token + the score one
         position later, GAE over the padded length, advantages whitened over the policy's positions;
      2. `optimise`: num_ppo_epochs passes, each num_mini_batches optimizer steps, each accumulating
         gradient_accumulation_steps micro-batches: clipped policy loss + vf_coef * clipped value loss, gradients
         clipped to max_grad_norm;
      3. one learning-rate schedule step (one per update, as the original); the update's figures are logged, the
         held-out problems answered (`evaluate`) and a checkpoint saved when due.

    Saved state: `save_checkpoint` writes checkpoint-<update>/, the policy as a Hugging Face folder plus accelerate's
    state (policy and value weights, optimizer, schedule, random generators) and the update counter, all that
    `resume` needs: the prompts of an update follow from its number. `save_policy` writes the policy alone.
    """

    def __init__(
        self,
        *,
        config: PPOConfig,
        sizes: BatchSizes,
        models: Models,
        reward: RLReward,
        train_items: list[Problem],
        eval_items: list[Problem],
        merge_lora: bool = True,
    ):
        """train_items / eval_items: problems with their prompt_ids. reward(response texts, problems) -> an object
        with `.rewards` and `.well_formed` (huatuo_o1.rl.reward.RLReward, whose `.reward_sources` the log counts in
        rule and hybrid modes). A reward with a `model` (the in-process verifier) gets that model placed (and sharded
        under ZeRO-3) like the reference; any other callable (a rule a test controls) is used as it is.
        merge_lora: a LoRA policy (models.policy a PEFT model, models.ref_policy None) is saved with its adapters
        merged, the adapter alone beside (huatuo_o1/training.py's save_model_folder)."""
        self.config, self.sizes, self.tokenizer = config, sizes, models.tokenizer
        self.reward_fn, self.train_items, self.eval_items = reward, train_items, eval_items
        self.num_updates = sizes.num_updates
        self.pad_id = self.tokenizer.pad_token_id
        stop_token_id = stop_token_id_for(config, self.tokenizer)
        # without a stop token responses only end at response_length; the pad token stands in as "never"
        self.stop_token_id = stop_token_id if stop_token_id is not None else self.pad_id
        # what logits are divided by, when sampling and when scoring, as the original
        self.temperature = config.temperature + ppo_core.TEMPERATURE_EPSILON
        self.max_grad_norm = config.max_grad_norm or 0.0  # 0: no clipping
        self.merge_lora = merge_lora
        self.checkpoints = training.Checkpoints(
            config.output_dir, keep=config.save_total_limit, resume_all=True, merge_lora=merge_lora
        )
        self.log_path = os.path.join(config.output_dir, "rl_log.jsonl")
        self.update = 0

        self.accelerator = self.start_accelerator()
        self.device = self.accelerator.device
        self.model, self.optimizer, self.scheduler = self.prepare_policy_and_value(models.policy, models.value_model)
        # None with LoRA: the reference is the policy with its adapters off (lora.reference_of)
        self.ref_policy = place_frozen(models.ref_policy, self.accelerator) if models.ref_policy is not None else None
        if getattr(reward, "model", None) is not None:
            reward.model = place_frozen(reward.model, self.accelerator)
        self.effective_max_grad_norm = training.applied_max_grad_norm(self.accelerator, self.model, self.max_grad_norm)
        self.sample_config, self.greedy_config = self.generation_configs()
        # --use_vllm: a colocated vLLM engine samples the rollouts and held-out answers (huatuo_o1/rl/vllm_rollout.py)
        self.rollout_engine = self.start_rollout_engine() if config.use_vllm else None

    # ---- set-up ---------------------------------------------------------------------------------
    def start_accelerator(self) -> Accelerator:
        """The accelerator, with the trackers of --report_to started. No dataloader goes through prepare(): the
        toolkit gives DeepSpeed its batch sizes and clipping."""
        config = self.config
        trackers = training.trackers(config.report_to, "RL_stage2.py", missing="warn")
        accelerator = training.make_accelerator(
            micro_batch_size=config.per_device_train_batch_size,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            max_grad_norm=self.max_grad_norm,
            log_with=trackers,
        )
        if trackers:
            accelerator.init_trackers(
                config.run_name or "rl_stage2",
                config={
                    key: value for key, value in vars(config).items() if isinstance(value, (int, float, str, bool))
                },
            )
        return accelerator

    def prepare_policy_and_value(
        self, policy: torch.nn.Module, value_model: torch.nn.Module
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """The trained pair without dropout, wrapped as one module, prepared with its optimizer; and the schedule."""
        config = self.config
        for model in (policy, value_model):
            disable_dropout(model)
            if config.gradient_checkpointing:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        policy.generation_config.pad_token_id = self.pad_id
        policy_and_value = PolicyAndValue(policy, value_model)
        optimizer = torch.optim.AdamW(
            [parameter for parameter in policy_and_value.parameters() if parameter.requires_grad],  # LoRA: adapters
            lr=config.learning_rate,
            eps=config.adam_epsilon,
            betas=(config.adam_beta1, config.adam_beta2),
            weight_decay=config.weight_decay,
        )
        policy_and_value, optimizer = self.accelerator.prepare(policy_and_value, optimizer)
        # As the original: the schedule counts updates (warmup_ratio of the updates) and steps once per update,
        # so the num_ppo_epochs x num_mini_batches optimizer steps of an update share one learning rate.
        scheduler = training.make_schedule(
            self.accelerator,
            config.lr_scheduler_type,
            optimizer,
            config.get_warmup_steps(self.num_updates),
            self.num_updates,
        )
        return policy_and_value, optimizer, scheduler

    def generation_configs(self) -> tuple[GenerationConfig, GenerationConfig]:
        """(sampling for the rollouts, greedy for the held-out answers): at most response_length new tokens, up to
        the stop token."""
        common = dict(
            max_new_tokens=self.config.response_length, eos_token_id=self.stop_token_id, pad_token_id=self.pad_id
        )
        sampling = GenerationConfig(do_sample=True, temperature=self.temperature, top_k=0, top_p=1.0, **common)
        return sampling, GenerationConfig(do_sample=False, **common)

    def start_rollout_engine(self):
        from huatuo_o1.rl.vllm_rollout import engine_for_ppo

        prompts = [item.prompt_ids for item in self.train_items + self.eval_items]
        return engine_for_ppo(self.config, self, prompts)

    # ---- data -----------------------------------------------------------------------------------
    def batch_for_update(self, update: int) -> list[Problem]:
        """This process's prompts for an update: a seeded shuffle per pass over the train set."""
        num_items, batch = len(self.train_items), self.sizes.batch_size
        start = update * batch + self.accelerator.process_index * self.sizes.local_batch_size
        items = []
        for position in range(start, start + self.sizes.local_batch_size):
            epoch, offset = divmod(position, num_items)
            order = torch.randperm(num_items, generator=torch.Generator().manual_seed(self.config.seed + epoch))
            items.append(self.train_items[order[offset].item()])
        return items

    # ---- rollout --------------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, items: list[Problem]) -> Rollout:
        """Sample responses to the items' prompts, score every token and every response, and derive the targets."""
        queries, query_mask = training.pad_batch([item.prompt_ids for item in items], self.pad_id, side="left")
        queries, query_mask = queries.to(self.device), query_mask.to(self.device)
        started = time.perf_counter()
        responses, truncated, policy_mask = self.cut_after_stop(self.sample_responses(items, queries, query_mask))
        context_length = queries.shape[1]
        query_responses = torch.cat([queries, truncated], 1)
        attention_mask, position_ids = forward_inputs(query_mask, policy_mask)

        generated = time.perf_counter()
        logprobs, ref_logprobs, values = self.logprobs_and_values(
            query_responses, attention_mask, position_ids, context_length
        )
        forwarded = time.perf_counter()
        reward, texts = read_and_score(self.tokenizer, truncated.cpu(), items, self.reward_fn, self.stop_token_id)
        seconds = {"time/generate": generated - started, "time/forward": forwarded - generated,
                   "time/reward": time.perf_counter() - forwarded}  # fmt: skip
        verifier_scores = reward.rewards.to(self.device)  # the verifier's dtype, as the original kept them
        targets = self.targets(responses, verifier_scores, logprobs, ref_logprobs, values)
        return Rollout(
            query_responses=query_responses,
            attention_mask=attention_mask,
            position_ids=position_ids,
            context_length=context_length,
            logprobs=logprobs.masked_fill(~targets.policy_mask, 0.0),
            well_formed=reward.well_formed.to(self.device),
            texts=texts,
            sampled=responses,
            verifier_scores=verifier_scores,
            ref_logprobs=ref_logprobs,
            raw_values=values,
            targets=targets,
            seconds=seconds,
            reward_sources=getattr(reward, "sources", None),
        )

    def engine_responses(self, items: list[Problem], greedy: bool) -> torch.Tensor:
        """Responses from the vLLM engine, padded as generate_responses pads them. The engine gets the policy's
        weights first whenever they changed (the update counter names the weights: optimise and resume move it)."""
        policy = self.accelerator.unwrap_model(self.model).policy
        prompts = [item.prompt_ids for item in items]
        return self.rollout_engine.responses(policy, self.update, prompts, self.pad_id, greedy=greedy).to(self.device)

    def sample_responses(self, items: list[Problem], queries: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
        """The policy's samples for the items (queries: their prompts, left-padded), (batch, longest response): from
        the vLLM engine, or from generate() on the policy (gathered whole under ZeRO-3 unless told otherwise)."""
        if self.rollout_engine is not None:
            return self.engine_responses(items, greedy=False)
        with unwrap_model_for_generation(
            self.model, self.accelerator, gather_deepspeed3_params=self.config.ds3_gather_for_generation
        ) as unwrapped:
            return generate_responses(
                unwrapped.policy,
                queries,
                query_mask,
                self.sample_config,
                self.config.local_rollout_forward_batch_size,
                self.pad_id,
            )

    def cut_after_stop(self, responses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the responses as sampled, padded to their scoring width; the same cut after their stop token; the
        positions the policy acted at), each (batch, width)."""
        # The original always samples response_length tokens; generation here ends once every response has
        # stopped, so keep one padding column past the longest: the score of a response that stopped lands
        # one position after its stop token exactly when it would in a response_length-wide tensor.
        width = min(self.config.response_length, responses.shape[1] + 1)
        responses = torch.nn.functional.pad(responses, (0, width - responses.shape[1]), value=self.pad_id)
        truncated = ppo_core.truncate_after_stop(responses, self.stop_token_id, self.pad_id)
        policy_mask = ppo_core.position_masks(ppo_core.sequence_ends(truncated, self.pad_id), width)[0]
        return responses, truncated, policy_mask

    def logprobs_and_values(
        self,
        query_responses: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        context_length: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per response position, float32 (batch, response length): the policy's and the reference's log-probs of
        the response token there and the value model's estimate before it; in chunks of
        local_rollout_forward_batch_size sequences. With LoRA the reference is the policy with its adapters off."""
        self.model.eval()  # no dropout, no activation checkpointing while scoring the rollout
        policy_and_value = self.accelerator.unwrap_model(self.model)
        chunk_size = self.config.local_rollout_forward_batch_size
        logprobs, ref_logprobs, values = [], [], []
        for start in range(0, query_responses.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            inputs = (query_responses[rows], attention_mask[rows], position_ids[rows])
            logprobs.append(response_logprobs(policy_and_value.policy, *inputs, context_length, self.temperature))
            if self.ref_policy is not None:
                ref_logprobs.append(response_logprobs(self.ref_policy, *inputs, context_length, self.temperature))
            else:
                with lora.reference_of(policy_and_value.policy):
                    ref_logprobs.append(
                        response_logprobs(policy_and_value.policy, *inputs, context_length, self.temperature)
                    )
            values.append(policy_and_value.values(*inputs)[:, context_length - 1 : -1].float())
        return torch.cat(logprobs), torch.cat(ref_logprobs), torch.cat(values)

    def targets(
        self,
        responses: torch.Tensor,
        verifier_scores: torch.Tensor,
        logprobs: torch.Tensor,
        ref_logprobs: torch.Tensor,
        values: torch.Tensor,
    ) -> ppo_core.Targets:
        """What the update trains on, with this run's settings (ppo_core.rollout_targets)."""
        config = self.config
        return ppo_core.rollout_targets(
            responses,
            verifier_scores,
            logprobs,
            ref_logprobs,
            values,
            stop_token_id=self.stop_token_id,
            pad_token_id=self.pad_id,
            eos_token_id=self.tokenizer.eos_token_id,
            kl_coef=config.kl_coef,
            gamma=config.gamma,
            lam=config.lam,
            whiten_rewards=config.whiten_rewards,
            missing_eos_penalty=config.missing_eos_penalty,
            score_position=config.score_position,
            kl_estimator=config.kl_estimator,
            overlong_penalty_len=config.overlong_penalty_len,
            response_length=config.response_length,
        )

    # ---- optimisation ---------------------------------------------------------------------------
    def optimise(self, data: Rollout) -> dict:
        """num_ppo_epochs passes over the rollout in a fresh random order, num_mini_batches optimizer steps each;
        returns the mean of each figure over the micro-batches."""
        sizes, micro_batch_size = self.sizes, self.config.per_device_train_batch_size
        figures = defaultdict(list)
        self.model.train()
        for _ in range(self.config.num_ppo_epochs):
            order = torch.randperm(sizes.local_batch_size, device=self.device)
            for mini_start in range(0, sizes.local_batch_size, sizes.local_mini_batch_size):
                mini_batch = order[mini_start : mini_start + sizes.local_mini_batch_size]
                for micro_start in range(0, len(mini_batch), micro_batch_size):
                    rows = mini_batch[micro_start : micro_start + micro_batch_size]
                    with self.accelerator.accumulate(self.model):
                        for name, value in self.micro_batch_step(data, rows).items():
                            figures[name].append(value)
        return {name: torch.stack(values).mean() for name, values in figures.items()}

    def micro_batch_step(self, data: Rollout, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rollout's `rows` through policy and value model: clipped policy loss + vf_coef * clipped value loss,
        backward, and (at the end of an accumulation) the optimizer step. Returns the micro-batch's figures;
        grad_norm only where we clip, at an accumulation's end."""
        config, targets, context_length = self.config, data.targets, data.context_length
        response_length = data.query_responses.shape[1] - context_length
        query_responses = data.query_responses[rows]
        logits, values = self.model(
            query_responses,
            data.attention_mask[rows],
            data.position_ids[rows],
            response_length + 1,  # logits only where they predict response tokens
        )
        logits = logits[:, -(response_length + 1) : -1]
        new_values = values[:, context_length - 1 : -1].float()
        policy_mask, value_mask = targets.policy_mask[rows], targets.value_mask[rows]
        new_logprobs = ppo_core.logprobs_of(logits, query_responses[:, context_length:], self.temperature)
        aggregation = {"loss_agg": config.loss_agg, "norm_length": config.response_length}
        pg_loss, pg_clipfrac, approxkl = ppo_core.policy_loss(
            new_logprobs,
            data.logprobs[rows],
            targets.advantages[rows],
            policy_mask,
            config.cliprange,
            config.cliprange_high,
            **aggregation,
        )
        vf_loss, vf_clipfrac = ppo_core.value_loss(
            new_values, targets.values[rows], targets.returns[rows], value_mask, config.cliprange_value, **aggregation
        )
        self.accelerator.backward(pg_loss + config.vf_coef * vf_loss)
        grad_norm = training.optimizer_step(self.accelerator, self.model, self.optimizer, self.max_grad_norm)
        with torch.no_grad():
            entropy = ppo_core.entropy_of(logits.detach(), self.temperature)
            ratio = torch.exp(new_logprobs.detach() - data.logprobs[rows])
            figures = {
                "pg_loss": pg_loss.detach(),
                "vf_loss": vf_loss.detach(),
                "pg_clipfrac": pg_clipfrac,
                "vf_clipfrac": vf_clipfrac,
                "approxkl": approxkl,
                "entropy": ppo_core.masked_mean(entropy, policy_mask),
                "ratio": ppo_core.masked_mean(ratio, policy_mask),
            }
        if grad_norm is not None:
            figures["grad_norm"] = grad_norm.float()
        return figures

    def mean_across_processes(self, metrics: dict[str, torch.Tensor]) -> dict[str, float]:
        names = sorted(metrics)
        values = torch.stack([metrics[name].float().to(self.device) for name in names])
        values = self.accelerator.reduce(values, reduction="mean")
        return {name: value.item() for name, value in zip(names, values)}

    def count_sources(self, sources: list[str]) -> dict[str, int]:
        """How many of the update's rewards (all processes) each source decided: reward/from_<source>."""
        counts = torch.tensor([sources.count(source) for source in SOURCES], device=self.device)
        counts = self.accelerator.reduce(counts, reduction="sum")
        return {f"reward/from_{source}": int(count) for source, count in zip(SOURCES, counts.tolist())}

    # ---- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Greedy responses on the held-out problems, split over the processes: mean reward and format rate."""
        if not self.eval_items:
            return {}
        accelerator = self.accelerator
        with accelerator.split_between_processes(list(range(len(self.eval_items))), apply_padding=True) as my_indices:
            items = [self.eval_items[index] for index in my_indices]
        gather = self.config.ds3_gather_for_generation
        if self.rollout_engine is not None:
            responses = self.engine_responses(items, greedy=True)
            answers = scored_answers(self.tokenizer, responses, items, self.reward_fn, self.stop_token_id)
        else:
            with unwrap_model_for_generation(self.model, accelerator, gather_deepspeed3_params=gather) as unwrapped:
                unwrapped.eval()
                answers = greedy_answers(unwrapped.policy, self.tokenizer, items, self.reward_fn, self.greedy_config,
                                         self.config.local_rollout_forward_batch_size, self.stop_token_id)  # fmt: skip
        by_index = dict(gather_object(list(zip(my_indices, zip(*answers)))))  # padding repeats an index: keep one
        return eval_figures(*zip(*(by_index[index] for index in range(len(self.eval_items)))))

    # ---- saving ---------------------------------------------------------------------------------
    def save_policy(self, folder: str) -> None:
        """The policy alone, as a Hugging Face folder (full weights gathered under ZeRO-3)."""
        training.save_model_folder(
            self.accelerator, self.model, self.tokenizer, folder, submodule="policy", merge_lora=self.merge_lora
        )

    def save_checkpoint(self) -> None:
        """checkpoint-<update>/: the policy (loadable on its own) + the training state for --resume_from_checkpoint."""
        self.checkpoints.save(
            self.accelerator,
            self.model,
            self.tokenizer,
            self.update,
            {"update": self.update, "num_updates": self.num_updates},
            submodule="policy",
        )

    def resume(self, checkpoint: str) -> None:
        self.update = training.Checkpoints.load(self.accelerator, checkpoint)["update"]

    def end_training(self) -> None:
        """Stop the vLLM engine, if any, then accelerate's trackers and process groups. The engine goes first: its
        teardown destroys the process groups it joined, and after end_training it found them gone ("Invalid process
        group specified", 2 processes, ZeRO-3)."""
        if self.rollout_engine is not None:
            from huatuo_o1.rl.vllm_rollout import shutdown_engine

            shutdown_engine(self.rollout_engine.llm)
        self.accelerator.end_training()

    # ---- the loop -------------------------------------------------------------------------------
    def every(self, strategy: str, steps: float) -> int | None:
        strategy = getattr(strategy, "value", strategy)
        if strategy == "no":
            return None
        if strategy == "epoch":
            return max(1, math.ceil(len(self.train_items) / self.sizes.batch_size))
        return max(1, math.ceil(steps * self.num_updates) if steps < 1 else int(steps))

    def log(self, record: dict) -> None:
        if self.accelerator.is_main_process:
            os.makedirs(self.config.output_dir, exist_ok=True)
            with open(self.log_path, "a", encoding="utf-8") as log_file:
                log_file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.accelerator.log(
            {key: value for key, value in record.items() if isinstance(value, (int, float))}, step=record.get("update")
        )

    def train(self) -> float:
        config, accelerator = self.config, self.accelerator
        save_every = self.every(config.save_strategy, config.save_steps)
        eval_every = self.every(config.eval_strategy, config.eval_steps)
        log_every = max(1, int(config.logging_steps))
        start_time, start_update = time.time(), self.update
        bar = tqdm(
            total=self.num_updates, initial=self.update, desc="PPO updates", disable=not accelerator.is_main_process
        )
        while self.update < self.num_updates:
            data = self.rollout(self.batch_for_update(self.update))
            lr = self.scheduler.get_last_lr()[0]  # the rate of this update's optimizer steps
            optimise_start = time.perf_counter()
            stats = self.optimise(data)
            seconds = dict(data.seconds, **{"time/optimise": time.perf_counter() - optimise_start})
            self.scheduler.step()
            self.update += 1
            targets = data.targets
            stats.update(
                {
                    "objective/score": targets.scores.mean(),
                    "objective/format_rate": data.well_formed.float().mean(),
                    "objective/kl": targets.kl.sum(1).mean(),
                    "objective/non_score_reward": (-config.kl_coef * targets.kl).sum(1).mean(),
                    "val/response_length": targets.policy_mask.sum(1).float().mean(),
                    "val/stop_rate": targets.has_eos.float().mean(),
                }
            )
            if config.overlong_penalty_len:  # (part of objective/score)
                lengths = targets.policy_mask.sum(1)
                penalty = ppo_core.overlong_penalty(lengths, config.response_length, config.overlong_penalty_len)
                stats["objective/overlong_penalty"] = penalty.mean()
            record = {
                "update": self.update,
                "episodes": self.update * self.sizes.batch_size,
                **self.mean_across_processes(stats),
                "lr": lr,
                "episodes_per_second": (self.update - start_update)
                * self.sizes.batch_size
                / (time.time() - start_time),
                **seconds,
            }
            # the spread of this update's rewards (all processes): all equal, and PPO has nothing to learn from them
            scores = accelerator.gather(targets.scores.float().to(self.device))
            record.update({"objective/score_min": scores.min().item(), "objective/score_max": scores.max().item(),
                           "objective/score_std": scores.std(unbiased=False).item()})  # fmt: skip
            if config.reward_mode != "verifier" and data.reward_sources is not None:
                record.update(self.count_sources(data.reward_sources))
            if eval_every and self.update % eval_every == 0:
                record.update(self.evaluate())
            if self.update % log_every == 0 or self.update == self.num_updates:
                self.log(record)
            bar.update(1)
            bar.set_postfix(score=f"{record['objective/score']:.3f}", kl=f"{record['objective/kl']:.3f}")
            if save_every and self.update % save_every == 0 and self.update < self.num_updates:
                self.save_checkpoint()
        bar.close()
        return time.time() - start_time
