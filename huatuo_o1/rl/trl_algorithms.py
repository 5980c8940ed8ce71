"""RLOO and GRPO through trl's trainers, with the same verifier reward as PPO (RL_stage2.py --rl_algorithm).

trl takes the reward as Python callables (huatuo_o1.rl.reward.trl_reward_functions); our flags are
copied into trl's config, and under DeepSpeed they override the accelerate config file as for PPO.
DAPO's knobs: --cliprange_high is trl's epsilon_high, --loss_agg GRPO's loss_type, --overlong_penalty_len one
more reward callable, --dynamic_sampling a subclass of the trainer (huatuo_o1/rl/dynamic_sampling.py).
--lora_r: trl's peft_config (trl then computes the reference with the adapters off, and loads no copy); the policy is
saved merged, with its adapter beside, as PPO's (huatuo_o1/training.py's save_model_folder).
"""

import contextlib
import os
import time
from collections.abc import Iterator

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase
from transformers.integrations import is_deepspeed_zero3_enabled
from trl.models.utils import unwrap_model_for_generation

from huatuo_o1.lora import LoRAArguments
from huatuo_o1.records import write_json_atomic
from huatuo_o1.rl import ppo_core
from huatuo_o1.rl.config import BatchSizes, PPOConfig
from huatuo_o1.rl.dynamic_sampling import sampling_summary, with_dynamic_sampling
from huatuo_o1.rl.loading import Problem, stop_token_id_for
from huatuo_o1.rl.ppo_trainer import eval_figures, greedy_answers, place_frozen
from huatuo_o1.rl.reward import RLReward, trl_reward_functions
from huatuo_o1.training import save_model_folder, sealed_model_folder


@torch.no_grad()
def evaluate_plain(
    policy: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    items: list[Problem],
    reward: RLReward,
    config: PPOConfig,
) -> dict:
    """Greedy answers on the held-out problems, scored by the verifier (trl path: every process, all items)."""
    stop_id = stop_token_id_for(config, tokenizer)
    generation = GenerationConfig(max_new_tokens=config.response_length, do_sample=False, eos_token_id=stop_id,
                                  pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    was_training = policy.training
    policy.eval()
    answers = greedy_answers(policy, tokenizer, items, reward, generation, config.local_rollout_forward_batch_size,
                             stop_id)  # fmt: skip
    policy.train(was_training)
    return eval_figures(*answers)


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Environment variables set to `values` inside the block, restored after."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# --loss_agg -> GRPO's loss_type: the same aggregation of per-token losses ("dapo", trl's default, normalises by the
# tokens of the whole accumulated batch; "dr_grpo" by max_completion_length, our --response_length).
GRPO_LOSS_TYPES = {"token_mean": "dapo", "seq_mean_token_mean": "grpo", "seq_mean_token_sum_norm": "dr_grpo"}


def overlong_reward_function(response_length: int, penalty_length: int):
    """A trl reward callable: DAPO's overlong penalty (ppo_core.overlong_penalty) of each completion, whose token
    ids trl passes with the stop token included; added to the verifier's reward with weight 1."""

    def overlong(prompts, completions, completion_ids, **kwargs):
        lengths = torch.tensor([len(ids) for ids in completion_ids])
        return ppo_core.overlong_penalty(lengths, response_length, penalty_length).tolist()

    return overlong


def dapo_arguments(config: PPOConfig) -> dict:
    """trl config arguments for DAPO's knobs; with none given, what trl does by default (no argument changes)."""
    arguments = {"epsilon_high": config.cliprange_high}  # None: epsilon, trl's default
    if config.rl_algorithm == "grpo":
        arguments["loss_type"] = GRPO_LOSS_TYPES[config.loss_agg]
    return arguments


def deepspeed_gathered(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.parameters()))


def vllm_colocated(config: PPOConfig, policy: torch.nn.Module, lora: LoRAArguments) -> contextlib.ExitStack:
    """With --use_vllm: trl's colocated vLLM made to work without CUDA while the trainer is built and trained, and with
    LoRA its engine given the merged weights (huatuo_o1/lora.py) instead of trl's merge and unmerge in place;
    without: nothing."""
    stack = contextlib.ExitStack()
    if config.use_vllm:
        from huatuo_o1.rl.vllm_rollout import trl_colocate_on_cpu, trl_pushes_merged_lora

        stack.enter_context(trl_colocate_on_cpu(config.vllm_kv_cache_gib, config.vllm_enforce_eager, policy.dtype))
        if lora.enabled:
            stack.enter_context(trl_pushes_merged_lora())
    return stack


def run_trl(
    config: PPOConfig,
    sizes: BatchSizes,
    tokenizer: PreTrainedTokenizerBase,
    policy: torch.nn.Module,
    reward: RLReward,
    train: list[Problem],
    evaluation: list[Problem],
    lora: LoRAArguments | None = None,
) -> tuple[dict, dict, int, float, dict]:
    """Train with trl's RLOO or GRPO; returns (held-out figures before, after, optimizer steps, seconds, settings)."""
    lora = lora or LoRAArguments()
    with vllm_colocated(config, policy, lora):
        return train_with_trl(config, sizes, tokenizer, policy, reward, train, evaluation, lora)


def train_with_trl(config, sizes, tokenizer, policy, reward, train, evaluation, lora):
    """run_trl's work, inside its vLLM context."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    from huatuo_o1.rl.vllm_rollout import shutdown_engine, trl_vllm_arguments

    config_cls, trainer_cls = {"grpo": (GRPOConfig, GRPOTrainer), "rloo": (RLOOConfig, RLOOTrainer)}[
        config.rl_algorithm
    ]
    if config.dynamic_sampling:
        trainer_cls = with_dynamic_sampling(trainer_cls)
    reward_functions, reward_weights = trl_reward_functions(reward, train + evaluation)  # the reward, and logs
    if config.overlong_penalty_len:
        reward_functions.append(overlong_reward_function(config.response_length, config.overlong_penalty_len))
        reward_weights.append(1.0)
    generation_batch = config.per_device_train_batch_size * sizes.world_size * config.gradient_accumulation_steps
    num_generations_steps = -(-config.total_episodes // generation_batch) if config.total_episodes else None
    copied = [
        "output_dir",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "learning_rate",
        "lr_scheduler_type",
        "warmup_steps",
        "weight_decay",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
        "max_grad_norm",
        "seed",
        "bf16",
        "gradient_checkpointing",
        "save_strategy",
        "save_steps",
        "save_total_limit",
        "logging_steps",
        "report_to",
        "run_name",
        "dataloader_num_workers",
        "eval_strategy",
        "eval_steps",
        "num_train_epochs",
        "ddp_backend",
    ]  # ddp_backend: gloo without CUDA (see PPOConfig)

    def to_dataset(rows, first):
        """The rows as trl's dataset: the prompt, and the problem's index in train + evaluation for the reward."""
        return Dataset.from_list(
            [
                {"prompt": [{"role": "user", "content": problem.question}], "problem": first + index}
                for index, problem in enumerate(rows)
            ]
        )

    # Under DeepSpeed, accelerate launch exports the config file's accumulation count, clipping and precision, which
    # would override (or contradict, in DeepSpeed's and transformers' checks) our flags: the DeepSpeed plugin the trl
    # config creates reads these variables, so they carry the flags while the trainer is built.
    flags_for_deepspeed = (
        {
            "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": str(config.gradient_accumulation_steps),
            "ACCELERATE_GRADIENT_CLIPPING": str(config.max_grad_norm),
            "ACCELERATE_MIXED_PRECISION": "bf16" if config.bf16 else "no",
        }
        if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true"
        else {}
    )
    with environment(flags_for_deepspeed):
        trl_args = config_cls(
            **{name: getattr(config, name) for name in copied},
            max_steps=num_generations_steps * config.num_ppo_epochs if num_generations_steps else -1,
            num_generations=config.num_generations,
            max_completion_length=config.response_length,
            temperature=config.temperature,
            beta=config.kl_coef,
            epsilon=config.cliprange,
            num_iterations=config.num_ppo_epochs,
            reward_weights=reward_weights,
            per_device_eval_batch_size=config.num_generations,
            gradient_checkpointing_kwargs={"use_reentrant": False},
            disable_dropout=True,
            **dapo_arguments(config),
            **trl_vllm_arguments(config, policy, [problem.prompt_ids for problem in train + evaluation]),
        )
        trainer = trainer_cls(
            model=policy,
            reward_funcs=reward_functions,
            args=trl_args,
            train_dataset=to_dataset(train, 0),
            eval_dataset=to_dataset(evaluation, len(train)) if trl_args.eval_strategy != "no" else None,
            processing_class=tokenizer,
            peft_config=lora.peft_config("CAUSAL_LM") if lora.enabled else None,
        )
    if reward.model is not None:  # the in-process verifier: under ZeRO-3 it was loaded partitioned
        reward.model = place_frozen(reward.model, trainer.accelerator)
    gathered = deepspeed_gathered(policy) if is_deepspeed_zero3_enabled() else contextlib.nullcontext()
    with gathered:
        eval_start = evaluate_plain(policy, tokenizer, evaluation, reward, config)
    start = time.time()
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    seconds = time.time() - start
    if lora.enabled:  # trl's save_model would write the adapter alone: the merged policy, and the adapter beside it
        save_model_folder(
            trainer.accelerator, trainer.model_wrapped, tokenizer, config.output_dir, merge_lora=lora.merge_lora
        )
    else:
        with sealed_model_folder(trainer.accelerator, config.output_dir) as folder:  # its manifest.json written last
            trainer.save_model(folder)
    if trainer.is_world_process_zero():
        write_json_atomic(
            os.path.join(config.output_dir, "rl_trl_log.json"),
            [entry for entry in trainer.state.log_history if f"rewards/{reward.mode}/mean" in entry],
        )
    with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as trained:
        eval_end = evaluate_plain(trained, tokenizer, evaluation, reward, config)
    engine = trainer.model_wrapped if trainer.is_deepspeed_enabled else None
    clipping = engine.gradient_clipping() if engine is not None else trainer.args.max_grad_norm
    if config.use_vllm and trainer.vllm_generation.mode == "colocate":  # before accelerate's teardown (see PPO's)
        shutdown_engine(trainer.vllm_generation.llm)
    settings = {"max_grad_norm": clipping}
    if config.dynamic_sampling:
        settings["dynamic_sampling"] = sampling_summary(trainer.sampling_totals)
    return eval_start, eval_end, trainer.state.global_step, seconds, settings
