"""Stage 2: reinforcement learning with the medical verifier as the reward (PPO; RLOO/GRPO via trl).

The policy answers verifiable medical problems in the "## Thinking / ## Final Response" layout;
the verifier compares the final answer with the ground truth: 1.0 correct, 0.1 wrong, 0.0 when the
layout is broken (ppo_utils/verifier_reward.py). PPO is ours (ppo_utils/, trl has none since 1.13);
RLOO and GRPO are trl's trainers with the same reward as a callable.

Usage (the seed's command, 8 GPUs):
    accelerate launch --num_processes 8 --num_machines 1 --machine_rank 0 \
        --config_file ./configs/deepspeed_zero3.yaml --deepspeed_multinode_launcher standard RL_stage2.py \
        --model_name_or_path FreedomIntelligence/HuatuoGPT-o1-8B \
        --reward_model_path FreedomIntelligence/medical_o1_verifier_3B \
        --value_model_path meta-llama/Llama-3.2-3B-Instruct \
        --dataset_name FreedomIntelligence/medical-o1-verifiable-problem \
        --response_length 1300 --temperature 0.5 --local_rollout_forward_batch_size 8 --num_ppo_epochs 3 \
        --num_mini_batches 1 --total_episodes 20000 --per_device_train_batch_size 1 --gradient_accumulation_steps 16 \
        --bf16 True --output_dir ./ckpts --save_strategy steps --save_step 20 --save_total_limit 1 \
        --eval_strategy steps --eval_steps 20 --kl_coef 0.03 --learning_rate 5e-7 --warmup_ratio 0.05 \
        --gradient_checkpointing True --dataloader_num_workers 4 --run_name ppo_medical_o1_8B \
        --num_sample_generations -1 --report_to wandb

CPU, one process, tiny models (see docs/rl.md):
    python RL_stage2.py --model_name_or_path POLICY --reward_model_path VERIFIER --dataset_name problems.json \
        --response_length 64 --total_episodes 16 --per_device_train_batch_size 2 --gradient_accumulation_steps 2 \
        --bf16 False --output_dir out/rl
"""

import contextlib
import importlib.util
import json
import os
import random
import sys
import time

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import InitProcessGroupKwargs, set_seed
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, GenerationConfig,
                          HfArgumentParser)
from transformers.integrations import is_deepspeed_zero3_enabled
from trl.models.utils import prepare_deepspeed, unwrap_model_for_generation

from pipeline_io import (InputError, attn_implementation, from_pretrained_or_explain, load_chat_tokenizer, load_records,
                         write_json_atomic)
from ppo_utils.ppo_config import ModelConfig, PPOConfig, ScriptArguments, check_batch_sizes, world_size_from_env
from ppo_utils.ppo_trainer import PPOTrainer, generate_responses, left_pad
from ppo_utils.verifier_reward import VerifierReward, decode_until_stop, trl_reward_functions

QUESTION, ANSWER = "Open-ended Verifiable Question", "Ground-True Answer"
# Pad tokens to reuse (in this order) when a tokenizer has none or pads with eos; Llama-3's is the first.
PAD_CANDIDATES = ["<|end_of_text|>", "<|finetune_right_pad_id|>", "<|endoftext|>", "<pad>", "<|pad|>"]


def parse_args(argv=None):
    parser = HfArgumentParser((ScriptArguments, PPOConfig, ModelConfig))
    return parser.parse_args_into_dataclasses(args=argv)


# ---- data ---------------------------------------------------------------------------------------
def load_problems(script_args, seed):
    """Problems with a non-empty question and answer, shuffled; 10% (at most 200) held out.

    Question and answer are used as stored (the answer goes into the verifier's input unstripped, as the original's).
    """
    rows = load_records(script_args.dataset_name, split=script_args.dataset_train_split)
    problems = [
        {"question": str(r[QUESTION]), "reference": str(r[ANSWER])}
        for r in rows if str(r.get(QUESTION) or "").strip() and str(r.get(ANSWER) or "").strip()
    ]
    if len(problems) < 2:
        raise InputError(
            f"{script_args.dataset_name}: {len(problems)} usable row(s) of {len(rows)}; RL needs at least 2 rows with "
            f"non-empty '{QUESTION}' and '{ANSWER}' (one to train on, one to evaluate)."
        )
    random.Random(seed).shuffle(problems)
    n_eval = min(script_args.max_eval_samples, max(1, round(script_args.eval_fraction * len(problems))))
    return problems[n_eval:], problems[:n_eval], len(rows) - len(problems)


def prompt_ids(tokenizer, question):
    """The question through the policy's chat template (Llama-3 layout for a base model, as in SFT)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ---- models -------------------------------------------------------------------------------------
def policy_pad_token(tokenizer):
    """The policy's pad token: the original's rule for Llama-3 (<|end_of_text|> whenever <|eot_id|> exists), else distinct_pad_token.

    The pad id ends a response when the policy samples it, so which token it is can change a number.
    Returns True when a new token had to be added.
    """
    vocab = tokenizer.get_vocab()
    if "<|eot_id|>" in vocab and vocab.get("<|end_of_text|>", tokenizer.eos_token_id) != tokenizer.eos_token_id:
        tokenizer.pad_token = "<|end_of_text|>"
        return False
    return distinct_pad_token(tokenizer)


def distinct_pad_token(tokenizer):
    """Make the pad token differ from eos (padding must not look like the end of an answer).

    Returns True when a new token had to be added (the embeddings must then grow by one).
    """
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return False
    vocab = tokenizer.get_vocab()
    for candidate in PAD_CANDIDATES:
        if candidate in vocab and vocab[candidate] != tokenizer.eos_token_id:
            tokenizer.pad_token = candidate
            return False
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    return True


def load_models(model_args, config):
    dtype = {"auto": torch.bfloat16 if config.bf16 else torch.float32, "bfloat16": torch.bfloat16,
             "float16": torch.float16, "float32": torch.float32}[model_args.dtype]
    common = dict(dtype=dtype, trust_remote_code=model_args.trust_remote_code,
                  attn_implementation=model_args.attn_implementation or attn_implementation())
    tokenizer = load_chat_tokenizer(model_args.model_name_or_path, revision=model_args.model_revision,
                                    padding_side="left", trust_remote_code=model_args.trust_remote_code)
    grew = policy_pad_token(tokenizer)
    policy = from_pretrained_or_explain(AutoModelForCausalLM, model_args.model_name_or_path, revision=model_args.model_revision, **common)
    ref_policy = None
    if config.rl_algorithm == "ppo":
        ref_policy = from_pretrained_or_explain(AutoModelForCausalLM, model_args.model_name_or_path, revision=model_args.model_revision, **common)
    value_model = None
    if config.rl_algorithm == "ppo":
        value_model = from_pretrained_or_explain(AutoModelForSequenceClassification,
                                                 config.value_model_path or model_args.model_name_or_path, num_labels=1, **common)
    for model in (policy, ref_policy, value_model):
        if model is None:
            continue
        if grew:
            model.resize_token_embeddings(len(tokenizer))
        model.config.pad_token_id = tokenizer.pad_token_id
    # The verifier exactly as shipped (tokenizer and config untouched): it reads its score where its own
    # config says, as it did when it was published (ppo_utils/verifier_reward.py pads accordingly).
    verifier_tokenizer = from_pretrained_or_explain(AutoTokenizer, config.reward_model_path, trust_remote_code=model_args.trust_remote_code)
    verifier = from_pretrained_or_explain(AutoModelForSequenceClassification, config.reward_model_path, num_labels=2, **common)
    for frozen in (ref_policy, verifier):
        if frozen is not None:
            frozen.requires_grad_(False).eval()
    return tokenizer, policy, ref_policy, value_model, verifier, verifier_tokenizer


def stop_token_id_for(config, tokenizer):
    if config.stop_token_id is not None:
        return config.stop_token_id
    return tokenizer.eos_token_id if config.stop_token == "eos" else None


# ---- PPO ----------------------------------------------------------------------------------------
def make_ppo_trainer(config, sizes, tokenizer, models, reward, train, evaluation):
    trackers = [t for t in config.report_to if t in ("wandb", "tensorboard") and importlib.util.find_spec(t)]
    if set(config.report_to) - set(trackers):
        print(f"RL_stage2.py: not reporting to {sorted(set(config.report_to) - set(trackers))} (not installed or not "
              "supported here); metrics still go to rl_log.jsonl", file=sys.stderr)
    # accelerate launch exports the config file's gradient_accumulation_steps, which would override ours
    os.environ["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"] = str(config.gradient_accumulation_steps)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps, log_with=trackers or None,
        step_scheduler_with_optimizer=False,  # the trainer steps the schedule once per update, not once per process
        kwargs_handlers=[] if torch.cuda.is_available() else [InitProcessGroupKwargs(backend="gloo")],
    )
    if trackers:
        accelerator.init_trackers(config.run_name or "rl_stage2",
                                  config={k: v for k, v in vars(config).items() if isinstance(v, (int, float, str, bool))})

    policy, ref_policy, value_model = models
    stop_id = stop_token_id_for(config, tokenizer)
    if stop_id is None:  # responses then only end at response_length; the pad token stands in as "never"
        stop_id = tokenizer.pad_token_id
    return PPOTrainer(config, accelerator, tokenizer, policy, ref_policy, value_model, reward, train, evaluation, sizes, stop_id)


def run_ppo(config, sizes, tokenizer, models, reward, train, evaluation):
    trainer = make_ppo_trainer(config, sizes, tokenizer, models, reward, train, evaluation)
    accelerator = trainer.accelerator
    if config.resume_from_checkpoint:
        trainer.resume(config.resume_from_checkpoint)
        accelerator.print(f"resumed from {config.resume_from_checkpoint} at update {trainer.update}")
    eval_start = trainer.evaluate()
    seconds = trainer.train()
    eval_end = trainer.evaluate()
    trainer.save_policy(config.output_dir)
    accelerator.end_training()
    return eval_start, eval_end, trainer.update, seconds, {"max_grad_norm": trainer.effective_max_grad_norm,
                                                          "score_position": config.score_position}


# ---- RLOO / GRPO (trl) --------------------------------------------------------------------------
@torch.no_grad()
def evaluate_plain(policy, tokenizer, items, reward, config):
    """Greedy answers on the held-out problems, scored by the verifier (trl path: every process, all items)."""
    stop_id = stop_token_id_for(config, tokenizer)
    generation = GenerationConfig(max_new_tokens=config.response_length, do_sample=False, eos_token_id=stop_id,
                                  pad_token_id=tokenizer.pad_token_id)
    queries, mask = left_pad([it["input_ids"] for it in items], tokenizer.pad_token_id)
    device = next(policy.parameters()).device
    was_training = policy.training
    policy.eval()
    responses = generate_responses(policy, queries.to(device), mask.to(device), generation,
                                   config.local_rollout_forward_batch_size, tokenizer.pad_token_id)
    policy.train(was_training)
    texts = [decode_until_stop(tokenizer, r.tolist(), stop_id) for r in responses.cpu()]
    out = reward(texts, [it["reference"] for it in items])
    return {"eval/mean_reward": out.rewards.float().mean().item(), "eval/format_rate": out.well_formed.float().mean().item(),
            "eval/samples": len(items), "eval/example": texts[0][:300]}


@contextlib.contextmanager
def environment(values):
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


def deepspeed_gathered(model):
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.parameters()))


def run_trl(config, sizes, tokenizer, models, reward, train, evaluation, problems):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    policy = models[0]
    config_cls, trainer_cls = {"grpo": (GRPOConfig, GRPOTrainer), "rloo": (RLOOConfig, RLOOTrainer)}[config.rl_algorithm]
    generation_batch = config.per_device_train_batch_size * sizes.world_size * config.gradient_accumulation_steps
    num_generations_steps = -(-config.total_episodes // generation_batch) if config.total_episodes else None
    copied = ["output_dir", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "lr_scheduler_type",
              "warmup_steps", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "seed", "bf16",
              "fp16", "gradient_checkpointing", "save_strategy", "save_steps", "save_total_limit", "logging_steps",
              "report_to", "run_name", "dataloader_num_workers", "eval_strategy", "eval_steps", "num_train_epochs",
              "ddp_backend"]  # ddp_backend: gloo without CUDA (see PPOConfig)
    def to_dataset(rows):
        return Dataset.from_list([{"prompt": [{"role": "user", "content": r["question"]}], "reference": r["reference"]} for r in rows])

    # Under DeepSpeed, accelerate launch exports the config file's accumulation count, clipping and precision, which
    # would override (or contradict, in DeepSpeed's and transformers' checks) our flags: the DeepSpeed plugin the trl
    # config creates reads these variables, so they carry the flags while the trainer is built.
    flags_for_deepspeed = {
        "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": str(config.gradient_accumulation_steps),
        "ACCELERATE_GRADIENT_CLIPPING": str(config.max_grad_norm),
        "ACCELERATE_MIXED_PRECISION": "bf16" if config.bf16 else "fp16" if config.fp16 else "no",
    } if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true" else {}
    with environment(flags_for_deepspeed):
        trl_args = config_cls(
            **{name: getattr(config, name) for name in copied},
            max_steps=num_generations_steps * config.num_ppo_epochs if num_generations_steps else -1,
            num_generations=config.num_generations, max_completion_length=config.response_length,
            temperature=config.temperature, beta=config.kl_coef, epsilon=config.cliprange,
            num_iterations=config.num_ppo_epochs, reward_weights=[1.0, 0.0], per_device_eval_batch_size=config.num_generations,
            gradient_checkpointing_kwargs={"use_reentrant": False}, disable_dropout=True,
        )
        trainer = trainer_cls(model=policy, reward_funcs=trl_reward_functions(reward), args=trl_args,
                              train_dataset=to_dataset(problems[0]),
                              eval_dataset=to_dataset(problems[1]) if trl_args.eval_strategy != "no" else None,
                              processing_class=tokenizer)
    if trainer.accelerator.state.deepspeed_plugin is not None:  # the verifier was loaded partitioned under ZeRO-3
        reward.model = prepare_deepspeed(reward.model, trainer.accelerator)
    else:
        reward.model = reward.model.to(trainer.accelerator.device)
    gathered = deepspeed_gathered(policy) if is_deepspeed_zero3_enabled() else contextlib.nullcontext()
    with gathered:
        eval_start = evaluate_plain(policy, tokenizer, evaluation, reward, config)
    start = time.time()
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    seconds = time.time() - start
    trainer.save_model(config.output_dir)
    if trainer.is_world_process_zero():
        write_json_atomic(os.path.join(config.output_dir, "rl_trl_log.json"),
                          [entry for entry in trainer.state.log_history if "rewards/verifier/mean" in entry])
    with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as trained:
        eval_end = evaluate_plain(trained, tokenizer, evaluation, reward, config)
    engine = trainer.model_wrapped if trainer.is_deepspeed_enabled else None
    clipping = engine.gradient_clipping() if engine is not None else trainer.args.max_grad_norm
    return eval_start, eval_end, trainer.state.global_step, seconds, {"max_grad_norm": clipping}


# ---- main ---------------------------------------------------------------------------------------
def main(argv=None):
    if not torch.cuda.is_available() and world_size_from_env() > 1:
        # Without CUDA accelerate leaves the backend unset and DeepSpeed miscounts processes (ENVIRONMENT-FACTS.md).
        PartialState(backend="gloo")
    script_args, config, model_args = parse_args(argv)
    for name, value in (("--model_name_or_path", model_args.model_name_or_path), ("--reward_model_path", config.reward_model_path),
                        ("--dataset_name", script_args.dataset_name)):
        if not value:
            raise SystemExit(f"RL_stage2.py: {name} is required")
    try:
        sizes = check_batch_sizes(config, world_size_from_env())
    except ValueError as e:
        raise SystemExit(f"RL_stage2.py: batch sizes do not fit together: {e}")

    train_rows, eval_rows, skipped = load_problems(script_args, config.seed)
    if sizes.num_updates is None:  # no --total_episodes: num_train_epochs passes over the train set
        config.total_episodes = int(config.num_train_epochs * len(train_rows))
        sizes = check_batch_sizes(config, sizes.world_size)

    state = PartialState()
    set_seed(config.seed + state.process_index)  # same data order everywhere (own generator), different samples
    state.print(f"RL ({config.rl_algorithm}): {len(train_rows)} train / {len(eval_rows)} held-out problems "
                      f"({skipped} rows without question or answer skipped); {sizes.num_updates} updates; {sizes.description}")

    tokenizer, policy, ref_policy, value_model, verifier, verifier_tokenizer = load_models(model_args, config)
    reward = VerifierReward(verifier, verifier_tokenizer, template=script_args.verifier_template,
                            batch_size=config.local_rollout_forward_batch_size)
    train = [{"input_ids": prompt_ids(tokenizer, r["question"]), "reference": r["reference"]} for r in train_rows]
    evaluation = [{"input_ids": prompt_ids(tokenizer, r["question"]), "reference": r["reference"]} for r in eval_rows]

    if config.rl_algorithm == "ppo":
        eval_start, eval_end, updates, seconds, settings = run_ppo(config, sizes, tokenizer, (policy, ref_policy, value_model),
                                                                   reward, train, evaluation)
    else:
        eval_start, eval_end, updates, seconds, settings = run_trl(config, sizes, tokenizer, (policy,), reward, train,
                                                                   evaluation, (train_rows, eval_rows))
    summary = {
        "algorithm": config.rl_algorithm, "policy_dir": os.path.abspath(config.output_dir), "updates": updates,
        "episodes_per_update": sizes.batch_size, "seconds": round(seconds, 1),
        "train_problems": len(train_rows), "eval_problems": len(eval_rows),
        "eval_start": {k.split("/")[-1]: v for k, v in eval_start.items()},
        "eval_end": {k.split("/")[-1]: v for k, v in eval_end.items()},
        **settings,  # as applied (max_grad_norm: read back from DeepSpeed's engine when it clips)
    }
    if state.is_main_process:
        write_json_atomic(os.path.join(config.output_dir, "rl_summary.json"), summary)
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    return summary


if __name__ == "__main__":
    try:
        main()
    except InputError as e:
        sys.exit(f"RL_stage2.py: {e}")
