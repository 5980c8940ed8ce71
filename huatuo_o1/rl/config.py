"""Command-line arguments of RL_stage2.py, and the batch arithmetic they imply.

Field names follow trl's ScriptArguments / PPOConfig / ModelConfig (trl <= 1.12) so the seed's
command parses unchanged, `--save_step` included (an alias of `--save_steps`; no flag is matched by its prefix).
PPOConfig is our own dataclass, not transformers' TrainingArguments: it holds the seed's flags and ours, each of
which does something, plus two the seed passes that are accepted and ignored (their help says why).
Defaults of the flags TrainingArguments used to provide are its own.
"""

import math
from dataclasses import dataclass, field

import torch

from huatuo_o1 import cli, training
from huatuo_o1.lora import LoRAArguments
from huatuo_o1.records import InputError
from huatuo_o1.rl.ppo_core import LOSS_AGGREGATIONS
from huatuo_o1.verifier import PAPER_REWARD

# Where the reward comes from (huatuo_o1/rl/reward.py): the verifier (the paper's), a rule, or the rule for closed-set
# problems and the verifier for the rest.
REWARD_MODES = ("verifier", "rule", "hybrid")

SCHEDULES = ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"]
STRATEGIES = ["no", "steps", "epoch"]


@dataclass
class ScriptArguments:
    dataset_name: str = field(
        default=None,
        metadata={
            "help": "Hub dataset id (e.g. FreedomIntelligence/medical-o1-verifiable-problem) or a local JSON/JSONL "
            "file of objects with 'Open-ended Verifiable Question' and 'Ground-True Answer'."
        },
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split to read from a hub dataset."})
    eval_fraction: float = field(default=0.1, metadata={"help": "Share of the problems held out for evaluation."})
    max_eval_samples: int = field(default=200, metadata={"help": "At most this many held-out problems."})
    verifier_template: str = field(
        default=None,
        metadata={"help": "Verifier input template file (default huatuo_o1/templates/verifier_input.txt)."},
    )

    def __post_init__(self):
        cli.check_ranges(self, at_least_1=("max_eval_samples",), fractions=("eval_fraction",))


@dataclass
class ModelConfig(LoRAArguments):
    """The policy's flags (trl's ModelConfig held its LoRA flags too): with --lora_r the policy trains LoRA adapters
    (PPO: its reference is the same network with the adapters off; RLOO / GRPO: trl's peft_config)."""

    model_name_or_path: str = field(default=None, metadata={"help": "Policy (and frozen reference) model."})
    model_revision: str = field(default="main")
    dtype: str = field(
        default="auto", metadata={"help": "auto (bf16 with --bf16 True, else float32), bfloat16, float32."}
    )
    trust_remote_code: bool = field(default=False)
    attn_implementation: str = field(
        default=None, metadata={"help": "Default: flash_attention_2 with a GPU and flash-attn, else sdpa."}
    )


@dataclass
class PPOConfig:
    # output and logging
    output_dir: str = field(
        default="trainer_output",
        metadata={
            "help": "The trained policy (a Hugging Face folder), its checkpoints, rl_log.jsonl and rl_summary.json."
        },
    )
    run_name: str | None = field(default=None, metadata={"help": "Run name for wandb / tensorboard."})
    report_to: list[str] = field(
        default_factory=lambda: ["none"],
        metadata={"help": "wandb and/or tensorboard (skipped with a warning when not installed), or none."},
    )
    logging_steps: float = field(
        default=500, metadata={"help": "Write a line to rl_log.jsonl every N updates (and after the last)."}
    )
    seed: int = field(
        default=42, metadata={"help": "Data order, held-out split and sampling (process i uses seed + i)."}
    )
    # models
    reward_model_path: str = field(
        default=None, metadata={"help": "The 2-label medical verifier (its own tokenizer)."}
    )
    # the reward (huatuo_o1/rl/reward.py; each of these flags applies to PPO, GRPO and RLOO alike)
    reward_mode: str = field(
        default="verifier",
        metadata={
            "choices": list(REWARD_MODES),
            "help": (
                "PPO, GRPO, RLOO: where the reward comes from. verifier (the paper's): the verifier judges every "
                "final answer. rule: no model; a closed-set problem (data_type medical_closed_set, from "
                "prepare_training_data.py, whose rows carry their options) is right when the evaluation's honest "
                "reader finds its option, by letter or text, and no other, in the final answer; any other problem "
                "when the final answer equals the ground truth after normalisation (NFKC, lower case, punctuation "
                "dropped, single spaces). hybrid: the rule for closed-set problems, the verifier for the rest. A "
                "broken layout gets --malformed_reward in every mode."
            ),
        },
    )
    reward_url: str = field(
        default=None,
        metadata={
            "help": (
                "PPO, GRPO, RLOO, --reward_mode verifier / hybrid: ask the verifier served by serve_verifier.py at "
                "this URL (e.g. http://127.0.0.1:8001) instead of loading --reward_model_path in every training "
                "process. A server that stops answering stops the run."
            )
        },
    )
    reward_timeout: float = field(
        default=300.0, metadata={"help": "PPO, GRPO, RLOO, --reward_url: seconds to wait for one request's answer."}
    )
    reward_retries: int = field(
        default=3,
        metadata={
            "help": (
                "PPO, GRPO, RLOO, --reward_url: retries of a request that failed (no connection, no answer within "
                "--reward_timeout, a server error), with exponential backoff; then the run stops, naming the URL."
            )
        },
    )
    verifier_threshold: float = field(
        default=PAPER_REWARD.threshold,
        metadata={
            "help": (
                "PPO, GRPO, RLOO, --reward_mode verifier / hybrid: a well-formed answer is right when the verifier's "
                "p(correct) is above this (the paper's verifier: 0.4)."
            )
        },
    )
    correct_reward: float = field(
        default=PAPER_REWARD.correct,
        metadata={"help": "PPO, GRPO, RLOO: the reward of a right final answer, every mode (paper: 1.0)."},
    )
    incorrect_reward: float = field(
        default=PAPER_REWARD.incorrect,
        metadata={"help": "PPO, GRPO, RLOO: the reward of a wrong final answer, every mode (paper: 0.1)."},
    )
    malformed_reward: float = field(
        default=PAPER_REWARD.malformed,
        metadata={
            "help": (
                "PPO, GRPO, RLOO: the reward of a response whose layout is broken (not exactly one '## Thinking' and "
                "one '## Final Response' and its blank line), every mode (paper: 0.0)."
            )
        },
    )
    value_model_path: str = field(
        default=None, metadata={"help": "Value model backbone (1 label); default: the policy."}
    )
    rl_algorithm: str = field(
        default="ppo",
        metadata={"help": "ppo (ours), rloo or grpo (trl's trainers).", "choices": ["ppo", "rloo", "grpo"]},
    )
    num_generations: int = field(
        default=2, metadata={"help": "rloo/grpo: completions per prompt (the paper's RLOO ablation: k=2)."}
    )
    bf16: bool = field(
        default=False,
        metadata={
            "help": "Load every model in bfloat16 (needs a GPU); DeepSpeed's precision "
            "comes from the accelerate config file."
        },
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations of the policy and value model."}
    )
    # rollout
    response_length: int = field(default=53, metadata={"help": "Maximum new tokens per response."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature for rollouts."})
    stop_token: str = field(
        default="eos",
        metadata={"help": "Responses end at this token ('eos': the policy's eos).", "choices": ["eos", "none"]},
    )
    stop_token_id: int = field(default=None, metadata={"help": "Explicit stop token id (overrides --stop_token)."})
    missing_eos_penalty: float = field(
        default=None, metadata={"help": "Subtracted from the score of responses without the eos token."}
    )
    local_rollout_forward_batch_size: int = field(
        default=64,
        metadata={"help": "Sequences per forward pass (generation, reference, value, verifier) during rollouts."},
    )
    ds3_gather_for_generation: bool = field(
        default=True, metadata={"help": "ZeRO-3: gather the full policy for fast generation."}
    )
    # vLLM rollouts (huatuo_o1/rl/vllm_rollout.py; rloo/grpo: trl's colocated vLLM)
    use_vllm: bool = field(
        default=False,
        metadata={
            "help": (
                "Sample rollouts (and held-out answers) with a vLLM engine inside each training process instead of "
                "generate(); the policy's weights are pushed to it after every update; log-probs are still computed "
                "by the policy."
            )
        },
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.3,
        metadata={
            "help": "GPU: share of the GPU's memory the engine may take (weights + KV cache), next to training."
        },
    )
    vllm_kv_cache_gib: float = field(
        default=1.0,
        metadata={
            "help": "CPU: the engine's KV cache in GiB (on CPU vLLM would otherwise reserve a share of the RAM)."
        },
    )
    vllm_enforce_eager: bool = field(
        default=True, metadata={"help": "Run the engine's model eagerly (no torch.compile at start-up)."}
    )
    # batch sizes
    per_device_train_batch_size: int = field(
        default=8, metadata={"help": "Responses per micro-batch on each process."}
    )
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    total_episodes: int = field(
        default=None, metadata={"help": "Responses to train on in total (default: num_train_epochs x train set)."}
    )
    num_train_epochs: float = field(
        default=3.0, metadata={"help": "Passes over the train set when --total_episodes is not given."}
    )
    # PPO
    num_ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout batch."})
    num_mini_batches: int = field(default=1, metadata={"help": "Optimizer steps per PPO epoch."})
    kl_coef: float = field(default=0.05, metadata={"help": "Per-token KL penalty against the reference."})
    kl_estimator: str = field(
        default="k1",
        metadata={
            "choices": ["k1", "k3"],
            "help": "k1: log p - log p_ref (the original's); k3: unbiased, non-negative.",
        },
    )
    score_position: str = field(
        default="after_stop",
        metadata={
            "choices": ["after_stop", "stop_token"],
            "help": (
                "Where the verifier's score is added. after_stop (the original's): one position past the stop token, "
                "where the value model is trained and bootstrapped too (at the last position when the response has no "
                "room after it). stop_token: on the stop token itself, values up to it (see docs/rl.md)."
            ),
        },
    )
    whiten_rewards: bool = field(
        default=False, metadata={"help": "Whiten the per-token rewards over the value model's positions."}
    )
    cliprange: float = field(
        default=0.2,
        metadata={"help": "PPO, GRPO, RLOO: the policy ratio is clipped to [1 - cliprange, 1 + cliprange_high]."},
    )
    cliprange_high: float = field(
        default=None,
        metadata={
            "help": (
                "PPO, GRPO, RLOO: the upper clip of the ratio (DAPO's clip-higher, e.g. 0.28; GRPO / RLOO: trl's "
                "epsilon_high). Default: --cliprange (symmetric, the original's)."
            )
        },
    )
    cliprange_value: float = field(default=0.2)
    loss_agg: str = field(
        default=None,
        metadata={
            "choices": list(LOSS_AGGREGATIONS),
            "help": (
                "PPO and GRPO: how per-token losses become one loss. token_mean (the default; PPO: the mean over "
                "every token of the micro-batch, the original's, value loss too; GRPO: trl's loss_type 'dapo', its "
                "default, the mean over the tokens of the accumulated batch); seq_mean_token_mean (each response's "
                "token mean, then the mean over responses; GRPO: 'grpo'); seq_mean_token_sum_norm (each response's "
                "token sum / --response_length, then the mean; GRPO: 'dr_grpo'). RLOO: refused (trl's RLOO loss is "
                "per response)."
            ),
        },
    )
    overlong_penalty_len: int = field(
        default=0,
        metadata={
            "help": (
                "PPO, GRPO, RLOO: DAPO's soft overlong penalty over the last L tokens before --response_length: a "
                "response of |y| tokens, its stop token counted, gets (response_length - L - |y|) / L added to its "
                "score when |y| > response_length - L (down to -1 at response_length). 0 (default): off."
            )
        },
    )
    dynamic_sampling: bool = field(
        default=False,
        metadata={
            "help": (
                "GRPO, RLOO: DAPO's dynamic sampling: groups whose rewards are all equal are dropped and the batch is "
                "refilled with groups of newly drawn prompts (the share dropped is logged per update). PPO: refused "
                "(one response per prompt, no groups)."
            )
        },
    )
    vf_coef: float = field(
        default=0.1,
        metadata={
            "help": (
                "Value loss weight. The paper's text says 1.0; the original code (and the seed's command) used 0.1."
            )
        },
    )
    gamma: float = field(default=1.0)
    lam: float = field(default=0.95)
    # optimizer and schedule
    learning_rate: float = field(default=5e-5)
    lr_scheduler_type: str = field(
        default="linear", metadata={"choices": SCHEDULES, "help": "Stepped once per update, as the original's."}
    )
    warmup_ratio: float = field(
        default=None, metadata={"help": "Share of the updates for linear warmup (same as a warmup_steps < 1)."}
    )
    warmup_steps: float = field(
        default=0, metadata={"help": "Updates of linear warmup; a value below 1 is a share of the updates."}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay, on all parameters."})
    adam_beta1: float = field(default=0.9)
    adam_beta2: float = field(default=0.999)
    adam_epsilon: float = field(default=1e-8)
    max_grad_norm: float = field(
        default=1.0,
        metadata={
            "help": (
                "Clip the gradient norm of policy + value at each optimizer step, with or without DeepSpeed (whose "
                "gradient_clipping is set from this flag, whatever the accelerate config file says); 0 turns "
                "clipping off. "
                "1.0 is what the original's DeepSpeed runs clipped at."
            )
        },
    )
    # saving and evaluation
    save_strategy: str = field(
        default="steps",
        metadata={
            "choices": STRATEGIES,
            "help": "When to save a checkpoint: every "
            "--save_steps updates, every pass over the train set, or never (the final policy is always saved).",
        },
    )
    save_steps: float = field(
        default=500,
        metadata={
            "help": "Updates between checkpoints (below 1: a share of the updates). --save_step is accepted too "
            "(the seed's command spells it so).",
            "aliases": ["--save_step"],
        },
    )
    save_total_limit: int = field(
        default=None, metadata={"help": "Keep at most this many checkpoints (oldest deleted first)."}
    )
    resume_from_checkpoint: str = field(
        default=None, metadata={"help": "A checkpoint-<update> folder to continue from."}
    )
    verify_checkpoints: str = training.verify_flag()
    eval_strategy: str = field(
        default="no",
        metadata={
            "choices": STRATEGIES,
            "help": "When to evaluate on the held-out "
            "problems besides the start and the end: every --eval_steps updates, every pass, or never.",
        },
    )
    eval_steps: float = field(
        default=None, metadata={"help": "Updates between evaluations (default: --logging_steps)."}
    )
    # accepted for the seed's command line
    dataloader_num_workers: int = field(
        default=0,
        metadata={
            "help": (
                "rloo/grpo: worker processes of trl's DataLoader. PPO: accepted and ignored (the seed's command "
                "passes 4; "
                "its prompts are already token ids in memory, there is no DataLoader to feed)."
            )
        },
    )
    num_sample_generations: int = field(
        default=10,
        metadata={
            "help": (
                "Accepted and ignored (the seed's command passes -1, which turned sample generations off): the "
                "held-out "
                "evaluation runs at --eval_strategy / --eval_steps instead."
            )
        },
    )

    def __post_init__(self):
        cli.check_ranges(
            self,
            at_least_1=(
                "per_device_train_batch_size",
                "gradient_accumulation_steps",
                "num_mini_batches",
                "local_rollout_forward_batch_size",
                "num_ppo_epochs",
                "response_length",
                "total_episodes",
                "num_generations",
                "save_total_limit",
            ),
            at_least_0=(
                "max_grad_norm",
                "weight_decay",
                "warmup_steps",
                "dataloader_num_workers",
                "cliprange_high",
                "overlong_penalty_len",
            ),
            above_0=("num_train_epochs", "learning_rate", "temperature", "logging_steps", "save_steps", "eval_steps"),
            shares=("warmup_ratio",),
        )
        self.check_dapo_flags()
        self.check_reward_flags()
        if self.warmup_ratio is not None:
            self.warmup_steps = self.warmup_ratio
        self.learning_rate = float(self.learning_rate)
        self.report_to = [name for name in self.report_to if name != "none"]
        if self.eval_strategy == "steps" and self.eval_steps is None:
            self.eval_steps = self.logging_steps
        if self.bf16 and not torch.cuda.is_available():
            raise InputError(
                "Your setup doesn't support bf16/gpu: --bf16 True needs a GPU; pass --bf16 False on a CPU machine"
            )

    def check_dapo_flags(self) -> None:
        """Refuse, in one line, a DAPO knob the chosen algorithm cannot honour; set --loss_agg's default."""
        if self.loss_agg is not None and self.rl_algorithm == "rloo":
            raise InputError(
                f"--loss_agg {self.loss_agg}: applies to ppo and grpo; trl's RLOO loss is one term per response "
                "(the ratio of whole-response probabilities), there are no per-token losses to aggregate"
            )
        if self.loss_agg is None and self.rl_algorithm != "rloo":
            self.loss_agg = "token_mean"
        if self.dynamic_sampling and self.rl_algorithm == "ppo":
            raise InputError(
                "--dynamic_sampling: applies to grpo and rloo; PPO samples one response per prompt, there is no "
                "group whose rewards could be compared"
            )
        if self.overlong_penalty_len > self.response_length:
            raise InputError(
                f"--overlong_penalty_len {self.overlong_penalty_len} must be at most --response_length "
                f"{self.response_length}: the penalty covers the last overlong_penalty_len tokens of a response"
            )

    def check_reward_flags(self) -> None:
        """Refuse, in one line, reward flags that contradict each other (which verifier answers is checked later, by
        reward.check_reward_source, before anything loads)."""
        if not 0 <= self.verifier_threshold <= 1:
            raise InputError(f"--verifier_threshold is a probability, 0 to 1, not {self.verifier_threshold}")
        if self.reward_timeout <= 0 or self.reward_retries < 0:
            raise InputError(
                f"--reward_timeout must be above 0 and --reward_retries 0 or more (got {self.reward_timeout}, "
                f"{self.reward_retries})"
            )
        if self.reward_url and self.reward_model_path:
            raise InputError(
                f"--reward_url {self.reward_url} and --reward_model_path {self.reward_model_path}: give one, the "
                "served verifier or the one to load here (serve_verifier.py --model_path names the served one)"
            )
        if self.reward_mode == "rule" and (self.reward_url or self.reward_model_path):
            flag = "--reward_url" if self.reward_url else "--reward_model_path"
            raise InputError(f"--reward_mode rule asks no verifier: drop {flag} (or use --reward_mode hybrid)")

    def get_warmup_steps(self, num_training_steps: int) -> int:
        """Warmup length in updates: warmup_steps itself, or that share of the updates when below 1 (rounded up)."""
        return int(self.warmup_steps) if self.warmup_steps >= 1 else math.ceil(num_training_steps * self.warmup_steps)

    @property
    def ddp_backend(self) -> str | None:
        """gloo without CUDA (accelerate leaves the backend unset there and DeepSpeed miscounts the processes)."""
        return "gloo" if not torch.cuda.is_available() and cli.launched_processes() > 1 else None


def parse_args(argv: list | None = None) -> tuple[ScriptArguments, PPOConfig, "ModelConfig"]:
    """RL_stage2.py's command line: (ScriptArguments, PPOConfig, ModelConfig), as trl grouped them."""
    return cli.parse((ScriptArguments, PPOConfig, ModelConfig), argv)


@dataclass
class BatchSizes:
    world_size: int
    local_batch_size: int  # prompts (= responses) per process per update
    batch_size: int  # episodes per update, all processes
    local_mini_batch_size: int  # responses per optimizer step, per process
    num_updates: int
    description: str


def check_batch_sizes(config: PPOConfig, world_size: int) -> "BatchSizes":
    """Derive the PPO batch sizes and stop early, saying why, when the flags cannot work together (each flag alone
    is in range already: PPOConfig checks that when it is parsed).

    One update = every process generates per_device_train_batch_size x gradient_accumulation_steps x
    num_mini_batches responses; each PPO epoch then takes num_mini_batches optimizer steps, each
    accumulating gradient_accumulation_steps micro-batches of per_device_train_batch_size.
    Rollout forward passes run in chunks of local_rollout_forward_batch_size; every process holds
    the same number of prompts, so ZeRO-3's collective calls stay matched whatever the chunk size
    (the seed's notes asking num_processes == local_rollout_forward_batch_size and
    num_mini_batches == per_device_train_batch_size are not needed here).
    """
    local_mini = config.per_device_train_batch_size * config.gradient_accumulation_steps
    local_batch = local_mini * config.num_mini_batches
    batch = local_batch * world_size
    if config.total_episodes is not None and config.total_episodes < batch:
        raise ValueError(
            f"--total_episodes {config.total_episodes} is smaller than one update: {world_size} process(es) x "
            f"per_device_train_batch_size {config.per_device_train_batch_size} x gradient_accumulation_steps "
            f"{config.gradient_accumulation_steps} x num_mini_batches {config.num_mini_batches} = {batch} responses. "
            "Raise --total_episodes or lower one of those."
        )
    if config.rl_algorithm in ("rloo", "grpo"):
        generation_batch = config.per_device_train_batch_size * world_size * config.gradient_accumulation_steps
        if config.num_generations < 2 or generation_batch % config.num_generations:
            raise ValueError(
                f"{config.rl_algorithm}: the responses generated per step ({world_size} process(es) x "
                f"per_device_train_batch_size {config.per_device_train_batch_size} x gradient_accumulation_steps "
                f"{config.gradient_accumulation_steps} = {generation_batch}) must be a multiple of --num_generations "
                f"({config.num_generations}, at least 2), because each prompt's completions are compared with "
                "each other."
            )
    if config.dynamic_sampling and local_mini % config.num_generations:
        raise ValueError(
            f"--dynamic_sampling: each process's responses per step (per_device_train_batch_size "
            f"{config.per_device_train_batch_size} x gradient_accumulation_steps "
            f"{config.gradient_accumulation_steps} = {local_mini}) must be a multiple of --num_generations "
            f"({config.num_generations}), so that every group lies on one process and can be dropped there whole"
        )
    num_updates = math.ceil(config.total_episodes / batch) if config.total_episodes else None
    description = (
        f"each update: {world_size} process(es) x {local_batch} prompts (per_device_train_batch_size "
        f"{config.per_device_train_batch_size} x gradient_accumulation_steps {config.gradient_accumulation_steps} x "
        f"num_mini_batches {config.num_mini_batches}) = {batch} episodes; {config.num_ppo_epochs} PPO epoch(s) x "
        f"{config.num_mini_batches} optimizer step(s) of {local_mini * world_size} episodes; rollout forward "
        "passes in "
        f"chunks of {min(config.local_rollout_forward_batch_size, local_batch)}"
    )
    return BatchSizes(world_size, local_batch, batch, local_mini, num_updates, description)
