"""RL, the paper's stage 2: reinforcement learning with the medical verifier as the reward (PPO; RLOO/GRPO via trl).

The policy answers verifiable medical problems in the "## Thinking / ## Final Response" layout;
the verifier compares the final answer with the ground truth: 1.0 correct, 0.1 wrong, 0.0 when the
layout is broken (huatuo_o1/verifier.py). PPO is ours (huatuo_o1/rl/, trl has none since 1.13);
RLOO and GRPO are trl's trainers with the same reward as a callable. Off by default: the verifier served by
serve_verifier.py (--reward_url), a rule for closed-set problems (--reward_mode rule / hybrid; huatuo_o1/rl/reward.py).

Usage (the seed's command, 8 GPUs; its policy is the released model, already RL-trained: pass your SFT checkpoint):
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

import json
import os

import torch
from accelerate import PartialState
from accelerate.utils import set_seed

from huatuo_o1 import cli, manifests, training
from huatuo_o1.models import check_model_source
from huatuo_o1.outputs import check_outputs
from huatuo_o1.records import InputError, write_json_atomic
from huatuo_o1.rl.config import check_batch_sizes, parse_args
from huatuo_o1.rl.curves import write_curves
from huatuo_o1.rl.loading import load_models, load_problems, prompt_ids
from huatuo_o1.rl.ppo_trainer import PPOTrainer
from huatuo_o1.rl.reward import build_reward, check_reward_source
from huatuo_o1.rl.trl_algorithms import run_trl


def main(argv=None):
    if not torch.cuda.is_available() and cli.launched_processes() > 1:
        # Without CUDA accelerate leaves the backend unset and DeepSpeed miscounts processes.
        PartialState(backend="gloo")
    script_args, config, model_args = parse_args(argv)
    for name, value in (
        ("--model_name_or_path", model_args.model_name_or_path),
        ("--dataset_name", script_args.dataset_name),
    ):
        if not value:
            raise InputError(f"{name} is required")
    # Before anything loads: the models exist (and ours match their manifests), the verifier is a 2-label classifier
    # (or its server answers), a checkpoint to resume matches its manifest, the output folder can be written and is
    # none of the inputs.
    verify = manifests.verify_mode(config.verify_checkpoints)
    check_model_source(model_args.model_name_or_path, "--model_name_or_path", verify)
    if config.rl_algorithm == "ppo" and config.value_model_path:
        check_model_source(config.value_model_path, "--value_model_path", verify)
    check_reward_source(config, script_args, verify)
    if config.resume_from_checkpoint:
        if not training.Checkpoints.is_complete(config.resume_from_checkpoint):
            raise InputError(
                f"--resume_from_checkpoint {config.resume_from_checkpoint}: not a checkpoint of this script (no "
                f"{training.TRAINER_STATE})"
            )
        # a damaged one: the newest older one beside it that matches its manifest
        config.resume_from_checkpoint, skipped = training.checkpoint_to_resume(config.resume_from_checkpoint, verify)
        for line in skipped:
            PartialState().print(line)
    check_outputs(
        [("--output_dir", config.output_dir, True)],
        {
            "--model_name_or_path": model_args.model_name_or_path,
            "--value_model_path": config.value_model_path,
            "--reward_model_path": config.reward_model_path,
            "--dataset_name": script_args.dataset_name,
        },
        replaced_inside=training.CHECKPOINT_PREFIX,
    )
    try:
        sizes = check_batch_sizes(config, cli.launched_processes())
    except ValueError as e:
        raise InputError(f"batch sizes do not fit together: {e}") from None

    # Load.
    train, evaluation, skipped = load_problems(script_args, config.seed, config.reward_mode != "verifier")
    if sizes.num_updates is None:  # no --total_episodes: num_train_epochs passes over the train set
        config.total_episodes = int(config.num_train_epochs * len(train))
        sizes = check_batch_sizes(config, sizes.world_size)
    state = PartialState()
    set_seed(config.seed + state.process_index)  # same data order everywhere (own generator), different samples
    state.print(
        f"RL ({config.rl_algorithm}): {len(train)} train / {len(evaluation)} held-out problems "
        f"({skipped} rows without question or answer skipped); {sizes.num_updates} updates; {sizes.description}"
    )
    models = load_models(model_args, config)
    reward = build_reward(config, script_args, models)  # --reward_mode: the verifier's (here or served), a rule's
    for problem in train + evaluation:
        problem.prompt_ids = prompt_ids(models.tokenizer, problem.question)

    # Train (PPO: ours; RLOO / GRPO: trl's), evaluating on the held-out problems before and after.
    if config.rl_algorithm == "ppo":
        trainer = PPOTrainer(
            config=config,
            sizes=sizes,
            models=models,
            reward=reward,
            train_items=train,
            eval_items=evaluation,
            merge_lora=model_args.merge_lora,
        )
        if config.resume_from_checkpoint:
            trainer.resume(config.resume_from_checkpoint)
            state.print(f"resumed from {config.resume_from_checkpoint} at update {trainer.update}")
        eval_start = trainer.evaluate()
        seconds = trainer.train()
        eval_end = trainer.evaluate()
        trainer.save_policy(config.output_dir)
        trainer.end_training()
        updates, settings = (
            trainer.update,
            {
                "max_grad_norm": trainer.effective_max_grad_norm,
                "score_position": config.score_position,
                "rollouts": "vllm" if config.use_vllm else "generate",
            },
        )
    else:
        eval_start, eval_end, updates, seconds, settings = run_trl(
            config, sizes, models.tokenizer, models.policy, reward, train, evaluation, lora=model_args
        )

    # Save the summary and the curves.
    summary = {
        "algorithm": config.rl_algorithm,
        "policy_dir": os.path.abspath(config.output_dir),
        "updates": updates,
        "episodes_per_update": sizes.batch_size,
        "seconds": round(seconds, 1),
        "train_problems": len(train),
        "eval_problems": len(evaluation),
        "eval_start": {k.split("/")[-1]: v for k, v in eval_start.items()},
        "eval_end": {k.split("/")[-1]: v for k, v in eval_end.items()},
        **settings,  # as applied (max_grad_norm: read back from DeepSpeed's engine when it clips)
    }
    if model_args.enabled:
        summary["lora"] = {**model_args.settings(), "merged": model_args.merge_lora}
    if state.is_main_process:
        write_json_atomic(os.path.join(config.output_dir, "rl_summary.json"), summary)
        write_curves(config.output_dir, config.rl_algorithm)  # rl_curves.png: reward, format rate, KL per update
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    return summary


if __name__ == "__main__":
    cli.run(main)
