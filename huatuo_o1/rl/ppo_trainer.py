"""PPO for a causal LM with a pluggable reward, on accelerate (+ DeepSpeed ZeRO-3).

One update:
  1. rollout: each process samples responses for its prompts; in chunks of
     local_rollout_forward_batch_size it computes policy and reference log-probs, values and the
     reward (the verifier, through `reward_fn(responses_text, references)`);
  2. the original trainer's targets (ppo_core.rollout_targets): responses cut after the stop token,
     per-token rewards = -kl_coef * KL up to the last token + the score one position later, GAE over
     the padded length, advantages whitened over the policy's positions;
  3. num_ppo_epochs passes, each num_mini_batches optimizer steps, each accumulating
     gradient_accumulation_steps micro-batches: clipped policy loss + vf_coef * clipped value loss,
     gradients clipped to max_grad_norm; then one learning-rate schedule step (one per update, as the
     original).
Policy and value model sit in one module so DeepSpeed wraps (and shards) them together; the
reference and the verifier are frozen (sharded for inference under ZeRO-3 too).
"""

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedTokenizerBase
from trl.models.utils import prepare_deepspeed, unwrap_model_for_generation

from huatuo_o1 import training
from huatuo_o1.rl import ppo_core
from huatuo_o1.rl.config import BatchSizes, PPOConfig
from huatuo_o1.rl.loading import Models, Problem, stop_token_id_for
from huatuo_o1.verifier import RewardOutput, VerifierReward, decode_until_stop


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


class PolicyAndValue(torch.nn.Module):
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
        backbone = getattr(self.value_model, self.value_model.base_model_prefix)
        hidden = backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        values = self.value_model.score(hidden).squeeze(-1)
        logits = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            logits_to_keep=logits_to_keep,
        ).logits
        return logits, values

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


def forward_inputs(query_mask: torch.Tensor, policy_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention mask and position ids over prompt + response (response tokens after its last token masked).

    The value one position past the last token is read from the last token's hidden state, so it is covered.
    """
    attention_mask = torch.cat([query_mask, policy_mask.long()], dim=1)
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    return attention_mask, position_ids


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
        q, m = queries[start : start + chunk_size], query_mask[start : start + chunk_size]
        out = policy.generate(input_ids=q, attention_mask=m, generation_config=generation_config)
        chunks.append(out[:, q.shape[1] :])
    length = max(c.shape[1] for c in chunks)
    return torch.cat([torch.nn.functional.pad(c, (0, length - c.shape[1]), value=pad_id) for c in chunks])


@torch.no_grad()
def greedy_answers(
    policy: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    items: list[Problem],
    reward: VerifierReward,
    generation_config: GenerationConfig,
    chunk_size: int,
    stop_token_id: int,
) -> tuple[list, list, list]:
    """Greedy responses to the items' prompts, read up to the stop token and scored: (rewards, well-formed, texts)."""
    pad_id = tokenizer.pad_token_id
    queries, mask = training.pad_batch([it.prompt_ids for it in items], pad_id, side="left")
    device = next(policy.parameters()).device
    responses = generate_responses(policy, queries.to(device), mask.to(device), generation_config, chunk_size, pad_id)
    return scored_answers(tokenizer, responses, items, reward, stop_token_id)


def scored_answers(
    tokenizer: PreTrainedTokenizerBase,
    responses: torch.Tensor,
    items: list[Problem],
    reward: VerifierReward,
    stop_token_id: int,
) -> tuple[list, list, list]:
    """Responses (one row per item) read up to the stop token and scored: (rewards, well-formed, texts)."""
    texts = [decode_until_stop(tokenizer, r.tolist(), stop_token_id) for r in responses.cpu()]
    out = reward(texts, [it.reference for it in items])
    return out.rewards.tolist(), out.well_formed.tolist(), texts


def eval_figures(rewards: Sequence[float], well_formed: Sequence[bool], texts: Sequence[str]) -> dict:
    """What the held-out evaluation reports (PPO's and RLOO / GRPO's alike)."""
    return {"eval/mean_reward": sum(rewards) / len(rewards), "eval/format_rate": sum(well_formed) / len(well_formed),
            "eval/samples": len(rewards), "eval/example": texts[0][:300]}  # fmt: skip


def disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


class PPOTrainer:
    def __init__(
        self,
        *,
        config: PPOConfig,
        sizes: BatchSizes,
        models: Models,
        reward: VerifierReward,
        train_items: list[Problem],
        eval_items: list[Problem],
    ):
        """train_items / eval_items: problems with their prompt_ids. reward(response texts, references) ->
        an object with `.rewards` and `.well_formed` (huatuo_o1.verifier.VerifierReward). A reward with a
        `model` attribute (the verifier) gets that model placed (and sharded under ZeRO-3) like the reference;
        any other callable (a rule a test controls) is used as it is."""
        self.config, self.sizes, self.tokenizer = config, sizes, models.tokenizer
        self.reward_fn, self.train_items, self.eval_items = reward, train_items, eval_items
        self.num_updates = sizes.num_updates
        self.pad_id = self.tokenizer.pad_token_id
        stop_token_id = stop_token_id_for(config, self.tokenizer)
        # without a stop token responses only end at response_length; the pad token stands in as "never"
        self.stop_token_id = stop_token_id if stop_token_id is not None else self.pad_id
        self.max_grad_norm = config.max_grad_norm if config.max_grad_norm and config.max_grad_norm > 0 else 0.0
        self.checkpoints = training.Checkpoints(config.output_dir, keep=config.save_total_limit, resume_all=True)

        trackers = training.trackers(config.report_to, "RL_stage2.py", missing="warn")
        # No dataloader goes through prepare(): the toolkit gives DeepSpeed its batch sizes and clipping.
        self.accelerator = accelerator = training.make_accelerator(
            micro_batch_size=config.per_device_train_batch_size,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            max_grad_norm=self.max_grad_norm,
            log_with=trackers,
        )
        if trackers:
            accelerator.init_trackers(
                config.run_name or "rl_stage2",
                config={k: v for k, v in vars(config).items() if isinstance(v, (int, float, str, bool))},
            )
        self.device = accelerator.device

        policy, value_model = models.policy, models.value_model
        for model in (policy, value_model):
            disable_dropout(model)
            if config.gradient_checkpointing:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        policy.generation_config.pad_token_id = self.pad_id
        self.model = PolicyAndValue(policy, value_model)
        optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=config.learning_rate,
            eps=config.adam_epsilon,
            betas=(config.adam_beta1, config.adam_beta2),
            weight_decay=config.weight_decay,
        )
        self.model, self.optimizer = accelerator.prepare(self.model, optimizer)
        # As the original: the schedule counts updates (warmup_ratio of the updates) and steps once per update,
        # so the num_ppo_epochs x num_mini_batches optimizer steps of an update share one learning rate.
        self.scheduler = training.make_schedule(
            accelerator,
            config.lr_scheduler_type,
            self.optimizer,
            config.get_warmup_steps(self.num_updates),
            self.num_updates,
        )
        verifier = getattr(reward, "model", None)
        if accelerator.state.deepspeed_plugin is not None:
            self.ref_policy = prepare_deepspeed(models.ref_policy, accelerator)
            if verifier is not None:
                self.reward_fn.model = prepare_deepspeed(verifier, accelerator)
        else:
            self.ref_policy = models.ref_policy.to(self.device)
            if verifier is not None:
                self.reward_fn.model = verifier.to(self.device)
        self.ref_policy.eval()
        if verifier is not None:
            self.reward_fn.model.eval()
        self.effective_max_grad_norm = training.applied_max_grad_norm(accelerator, self.model, self.max_grad_norm)

        self.sample_config = GenerationConfig(
            max_new_tokens=config.response_length,
            do_sample=True,
            temperature=config.temperature + 1e-7,
            top_k=0,
            top_p=1.0,
            eos_token_id=self.stop_token_id,
            pad_token_id=self.pad_id,
        )
        self.greedy_config = GenerationConfig(
            max_new_tokens=config.response_length,
            do_sample=False,
            eos_token_id=self.stop_token_id,
            pad_token_id=self.pad_id,
        )
        self.update = 0
        self.log_path = os.path.join(config.output_dir, "rl_log.jsonl")
        # --use_vllm: a colocated vLLM engine samples the rollouts and held-out answers (huatuo_o1/rl/vllm_rollout.py)
        self.rollout_engine = None
        if config.use_vllm:
            from huatuo_o1.rl.vllm_rollout import engine_for_ppo

            self.rollout_engine = engine_for_ppo(config, self, [it.prompt_ids for it in train_items + eval_items])

    # ---- data -----------------------------------------------------------------------------------
    def batch_for_update(self, update: int) -> list[Problem]:
        """This process's prompts for an update: a seeded shuffle per pass over the train set."""
        n, batch = len(self.train_items), self.sizes.batch_size
        start = update * batch + self.accelerator.process_index * self.sizes.local_batch_size
        items = []
        for position in range(start, start + self.sizes.local_batch_size):
            epoch, offset = divmod(position, n)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.config.seed + epoch))
            items.append(self.train_items[order[offset].item()])
        return items

    # ---- rollout --------------------------------------------------------------------------------
    def engine_responses(self, items: list[Problem], greedy: bool) -> torch.Tensor:
        """Responses from the vLLM engine, padded as generate_responses pads them. The engine gets the policy's
        weights first whenever they changed (the update counter names the weights: optimise and resume move it)."""
        policy = self.accelerator.unwrap_model(self.model).policy
        prompts = [it.prompt_ids for it in items]
        return self.rollout_engine.responses(policy, self.update, prompts, self.pad_id, greedy=greedy).to(self.device)

    def score_responses(self, responses: torch.Tensor, references: list[str]) -> tuple[RewardOutput, list[str]]:
        texts = [decode_until_stop(self.tokenizer, r.tolist(), self.stop_token_id) for r in responses]
        return self.reward_fn(texts, references), texts

    def forward_logprobs(
        self,
        model_forward: Callable,
        query_responses: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        context_length: int,
        temperature: float,
    ) -> torch.Tensor:
        # only the positions that predict response tokens go through the vocabulary projection
        response_length = query_responses.shape[1] - context_length
        logits = model_forward(query_responses, attention_mask, position_ids, response_length + 1)
        logits = logits[:, -(response_length + 1) : -1]
        return ppo_core.logprobs_of(logits, query_responses[:, context_length:], temperature)

    @torch.no_grad()
    def rollout(self, items: list[Problem]) -> Rollout:
        cfg = self.config
        queries, query_mask = training.pad_batch([it.prompt_ids for it in items], self.pad_id, side="left")
        queries, query_mask = queries.to(self.device), query_mask.to(self.device)
        started = time.perf_counter()
        if self.rollout_engine is not None:
            responses = self.engine_responses(items, greedy=False)
        else:
            with unwrap_model_for_generation(
                self.model, self.accelerator, gather_deepspeed3_params=cfg.ds3_gather_for_generation
            ) as unwrapped:
                responses = generate_responses(
                    unwrapped.policy,
                    queries,
                    query_mask,
                    self.sample_config,
                    cfg.local_rollout_forward_batch_size,
                    self.pad_id,
                )
        # The original always samples response_length tokens; generation here ends once every response has
        # stopped, so keep one padding column past the longest: the score of a response that stopped lands
        # one position after its stop token exactly when it would in a response_length-wide tensor.
        width = min(cfg.response_length, responses.shape[1] + 1)
        responses = torch.nn.functional.pad(responses, (0, width - responses.shape[1]), value=self.pad_id)
        truncated = ppo_core.truncate_after_stop(responses, self.stop_token_id, self.pad_id)
        policy_mask = ppo_core.position_masks(ppo_core.sequence_ends(truncated, self.pad_id), width)[0]
        context_length = queries.shape[1]
        query_responses = torch.cat([queries, truncated], 1)
        attention_mask, position_ids = forward_inputs(query_mask, policy_mask)

        generated = time.perf_counter()
        self.model.eval()  # no dropout, no activation checkpointing while scoring the rollout
        unwrapped = self.accelerator.unwrap_model(self.model)
        logprobs, ref_logprobs, values = [], [], []
        for s in range(0, len(items), cfg.local_rollout_forward_batch_size):
            part = slice(s, s + cfg.local_rollout_forward_batch_size)
            qr, am, pi = query_responses[part], attention_mask[part], position_ids[part]

            def policy_fwd(i, a, p, k):
                return unwrapped.policy(
                    input_ids=i, attention_mask=a, position_ids=p, use_cache=False, logits_to_keep=k
                ).logits

            def ref_fwd(i, a, p, k):
                return self.ref_policy(
                    input_ids=i, attention_mask=a, position_ids=p, use_cache=False, logits_to_keep=k
                ).logits

            logprobs.append(self.forward_logprobs(policy_fwd, qr, am, pi, context_length, cfg.temperature + 1e-7))
            ref_logprobs.append(self.forward_logprobs(ref_fwd, qr, am, pi, context_length, cfg.temperature + 1e-7))
            backbone = getattr(unwrapped.value_model, unwrapped.value_model.base_model_prefix)
            hidden = backbone(input_ids=qr, attention_mask=am, position_ids=pi, use_cache=False).last_hidden_state
            values.append(unwrapped.value_model.score(hidden).squeeze(-1)[:, context_length - 1 : -1].float())
        logprobs, ref_logprobs, values = torch.cat(logprobs), torch.cat(ref_logprobs), torch.cat(values)
        forwarded = time.perf_counter()

        reward, texts = self.score_responses(truncated.cpu(), [it.reference for it in items])
        seconds = {"time/generate": generated - started, "time/forward": forwarded - generated,
                   "time/reward": time.perf_counter() - forwarded}  # fmt: skip
        verifier_scores = reward.rewards.to(self.device)  # the verifier's dtype, as the original kept them
        targets = ppo_core.rollout_targets(
            responses,
            verifier_scores,
            logprobs,
            ref_logprobs,
            values,
            stop_token_id=self.stop_token_id,
            pad_token_id=self.pad_id,
            eos_token_id=self.tokenizer.eos_token_id,
            kl_coef=cfg.kl_coef,
            gamma=cfg.gamma,
            lam=cfg.lam,
            whiten_rewards=cfg.whiten_rewards,
            missing_eos_penalty=cfg.missing_eos_penalty,
            score_position=cfg.score_position,
            kl_estimator=cfg.kl_estimator,
        )
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
        )

    # ---- optimisation ---------------------------------------------------------------------------
    def optimise(self, data: Rollout) -> dict:
        cfg, acc, targets = self.config, self.accelerator, data.targets
        stats = {
            k: []
            for k in ("pg_loss", "vf_loss", "pg_clipfrac", "vf_clipfrac", "approxkl", "entropy", "ratio", "grad_norm")
        }
        self.model.train()
        for _ in range(cfg.num_ppo_epochs):
            order = torch.randperm(self.sizes.local_batch_size, device=self.device)
            for mb_start in range(0, self.sizes.local_batch_size, self.sizes.local_mini_batch_size):
                mini = order[mb_start : mb_start + self.sizes.local_mini_batch_size]
                for mc_start in range(0, len(mini), cfg.per_device_train_batch_size):
                    idx = mini[mc_start : mc_start + cfg.per_device_train_batch_size]
                    with acc.accumulate(self.model):
                        c = data.context_length
                        response_length = data.query_responses.shape[1] - c
                        logits, values = self.model(
                            data.query_responses[idx],
                            data.attention_mask[idx],
                            data.position_ids[idx],
                            response_length + 1,  # logits only where they predict response tokens
                        )
                        logits = logits[:, -(response_length + 1) : -1]
                        new_values = values[:, c - 1 : -1].float()
                        mask, value_mask = targets.policy_mask[idx], targets.value_mask[idx]
                        new_logprobs = ppo_core.logprobs_of(
                            logits, data.query_responses[idx][:, c:], cfg.temperature + 1e-7
                        )
                        pg_loss, pg_clipfrac, approxkl = ppo_core.policy_loss(
                            new_logprobs, data.logprobs[idx], targets.advantages[idx], mask, cfg.cliprange
                        )
                        vf_loss, vf_clipfrac = ppo_core.value_loss(
                            new_values, targets.values[idx], targets.returns[idx], value_mask, cfg.cliprange_value
                        )
                        loss = pg_loss + cfg.vf_coef * vf_loss
                        acc.backward(loss)
                        grad_norm = training.optimizer_step(acc, self.model, self.optimizer, self.max_grad_norm)
                        if grad_norm is not None:
                            stats["grad_norm"].append(grad_norm.float())
                    with torch.no_grad():
                        stats["pg_loss"].append(pg_loss.detach())
                        stats["vf_loss"].append(vf_loss.detach())
                        stats["pg_clipfrac"].append(pg_clipfrac)
                        stats["vf_clipfrac"].append(vf_clipfrac)
                        stats["approxkl"].append(approxkl)
                        stats["entropy"].append(
                            ppo_core.masked_mean(ppo_core.entropy_of(logits.detach(), cfg.temperature + 1e-7), mask)
                        )
                        stats["ratio"].append(
                            ppo_core.masked_mean(torch.exp(new_logprobs.detach() - data.logprobs[idx]), mask)
                        )
        return {k: torch.stack(v).mean() for k, v in stats.items() if v}

    def mean_across_processes(self, metrics: dict[str, torch.Tensor]) -> dict[str, float]:
        keys = sorted(metrics)
        values = torch.stack([metrics[k].float().to(self.device) for k in keys])
        values = self.accelerator.reduce(values, reduction="mean")
        return {k: v.item() for k, v in zip(keys, values)}

    # ---- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Greedy responses on the held-out problems, split over the processes: mean reward and format rate."""
        if not self.eval_items:
            return {}
        acc = self.accelerator
        with acc.split_between_processes(list(range(len(self.eval_items))), apply_padding=True) as my_indices:
            items = [self.eval_items[i] for i in my_indices]
        gather = self.config.ds3_gather_for_generation
        if self.rollout_engine is not None:
            responses = self.engine_responses(items, greedy=True)
            answers = scored_answers(self.tokenizer, responses, items, self.reward_fn, self.stop_token_id)
        else:
            with unwrap_model_for_generation(self.model, acc, gather_deepspeed3_params=gather) as unwrapped:
                unwrapped.eval()
                answers = greedy_answers(unwrapped.policy, self.tokenizer, items, self.reward_fn, self.greedy_config,
                                         self.config.local_rollout_forward_batch_size, self.stop_token_id)  # fmt: skip
        by_index = dict(gather_object(list(zip(my_indices, zip(*answers)))))  # padding repeats an index: keep one
        return eval_figures(*zip(*(by_index[i] for i in range(len(self.eval_items)))))

    # ---- saving ---------------------------------------------------------------------------------
    def save_policy(self, folder: str) -> None:
        """The policy alone, as a Hugging Face folder (full weights gathered under ZeRO-3)."""
        training.save_model_folder(self.accelerator, self.model, self.tokenizer, folder, submodule="policy")

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
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.accelerator.log(
            {k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record.get("update")
        )

    def train(self) -> float:
        cfg, acc = self.config, self.accelerator
        save_every = self.every(cfg.save_strategy, cfg.save_steps)
        eval_every = self.every(cfg.eval_strategy, cfg.eval_steps)
        log_every = max(1, int(cfg.logging_steps)) if cfg.logging_steps >= 1 else 1
        start_time, start_update = time.time(), self.update
        bar = tqdm(total=self.num_updates, initial=self.update, desc="PPO updates", disable=not acc.is_main_process)
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
                    "objective/non_score_reward": (-cfg.kl_coef * targets.kl).sum(1).mean(),
                    "val/response_length": targets.policy_mask.sum(1).float().mean(),
                    "val/stop_rate": targets.has_eos.float().mean(),
                }
            )
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
