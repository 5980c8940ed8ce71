"""Peak memory and seconds per step with and without LoRA: SFT and PPO on the same model, in one run.

Each run is SFT_stage1.py or RL_stage2.py (PPO) whole, in its own child process (so its peak RSS is its own), with
the same model, data, batch and steps; the LoRA runs add --lora_r. A child that only imports and loads nothing shows
the fixed cost of the Python stack. PPO with LoRA loads no reference copy of the policy (the policy with its adapters
off is the reference) and trains no full policy weights; its value model stays fully trained in both runs. The
verifier is the tiny random one of tests/tiny_models.py (run as a program): the bench weighs the policy, not the
reward.

    python bench/lora_memory.py                                           # SmolLM2-135M-Instruct, float32
    python bench/lora_memory.py --model DIR --lora_r 16 --sft_steps 6 --ppo_updates 3
"""

import argparse
import contextlib
import json
import os
import resource
import runpy
import subprocess
import sys
import tempfile
import time

from huatuo_o1 import cli
from huatuo_o1.records import read_json

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = ("imports", "sft", "sft_lora", "ppo", "ppo_lora")


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def sft_argv(args, out):
    return [
        "--model_path", args.model, "--data_path", os.path.join(REPO_ROOT, "data", "demo_sft.json"),
        "--output_dir", out, "--log_dir", os.path.join(out, "logs"), "--train_bsz_per_gpu", str(args.batch),
        "--gradient_accumulation_steps", "1", "--max_steps", str(args.sft_steps), "--max_seq_len", "1024",
        "--learning_rate", "5e-5", "--save_training_state", "False", "--max_ckpts", "1",
    ]  # fmt: skip


def ppo_argv(args, out):
    return [
        "--model_name_or_path", args.model, "--reward_model_path", args.verifier, "--value_model_path", args.model,
        "--dataset_name", os.path.join(REPO_ROOT, "data", "demo_data.json"), "--output_dir", out,
        "--response_length", str(args.response_length), "--temperature", "0.7",
        "--per_device_train_batch_size", str(args.batch), "--gradient_accumulation_steps", "1",
        "--local_rollout_forward_batch_size", str(args.batch), "--num_ppo_epochs", "1",
        "--total_episodes", str(args.batch * args.ppo_updates), "--bf16", "False", "--learning_rate", "1e-6",
        "--save_strategy", "no", "--report_to", "none", "--logging_steps", "1", "--gradient_checkpointing", "True",
        "--max_eval_samples", "1",
    ]  # fmt: skip


def child(args):
    """One run in this process; prints its figures as the last line of stdout."""
    import torch

    torch.set_num_threads(args.threads)
    import huatuo_o1.rl.ppo_trainer  # noqa: F401  (what the scripts import: the baseline measures it too)
    import huatuo_o1.sft  # noqa: F401

    if args.child == "imports":
        print(json.dumps({"peak_rss_mb": peak_rss_mb()}))
        return
    out = tempfile.mkdtemp(prefix=f"lora_bench_{args.child}_")
    lora = ["--lora_r", str(args.lora_r)] if args.child.endswith("_lora") else []
    script = "SFT_stage1.py" if args.child.startswith("sft") else "RL_stage2.py"
    argv = sft_argv(args, out) if script == "SFT_stage1.py" else ppo_argv(args, out)
    sys.argv = [os.path.join(REPO_ROOT, script), *argv, *lora]
    with contextlib.redirect_stdout(sys.stderr):  # this child's stdout carries only its figures
        runpy.run_path(sys.argv[0], run_name="__main__")
    if script == "SFT_stage1.py":
        summary = read_json(os.path.join(out, "sft_stage1", "training_summary.json"))
        steps = summary["optimizer_steps"] - 1  # the steady rate: the first step (warm-up) left out
        seconds = summary["throughput"]["after_first_step"]["seconds"]
        trained = summary.get("lora", {}).get("trained_parameters")
    else:
        summary = read_json(os.path.join(out, "rl_summary.json"))
        steps, seconds, trained = summary["updates"], summary["seconds"], None
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "steps": steps, "seconds": seconds, "trained": trained}))


def run_child(args, which):
    command = [sys.executable, os.path.abspath(__file__), "--child", which, "--model", args.model, "--verifier",
               args.verifier, "--lora_r", str(args.lora_r), "--batch", str(args.batch), "--sft_steps",
               str(args.sft_steps), "--ppo_updates", str(args.ppo_updates), "--response_length",
               str(args.response_length), "--threads", str(args.threads)]  # fmt: skip
    started = time.time()
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{which} failed:\n{result.stderr[-3000:]}")
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    measured["wall_seconds"] = round(time.time() - started, 1)
    print(f"{which}: {json.dumps(measured)}", file=sys.stderr)
    return measured


def main():
    parser = cli.argument_parser(__doc__)
    parser.add_argument("--model", default=os.path.join(REPO_ROOT, ".cache", "models", "SmolLM2-135M-Instruct"))
    parser.add_argument("--verifier", help="2-label verifier folder (default: the tiny random one, built now)")
    parser.add_argument("--lora_r", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4, help="SFT examples per step; PPO episodes per update")
    parser.add_argument("--sft_steps", type=int, default=5, help="SFT optimizer steps (the first is left out)")
    parser.add_argument("--ppo_updates", type=int, default=2)
    parser.add_argument("--response_length", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stages", nargs="+", choices=("sft", "ppo"), default=["sft", "ppo"], help="what to compare")
    parser.add_argument("--child", choices=RUNS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if not args.verifier:
        tiny = os.path.join(tempfile.mkdtemp(prefix="lora_bench_"), "tiny")
        tiny_models = os.path.join(REPO_ROOT, "tests", "tiny_models.py")
        subprocess.run([sys.executable, tiny_models, "--output_dir", tiny], check=True, capture_output=True)
        args.verifier = os.path.join(tiny, "tiny-verifier")

    runs = ["imports", *(f"{stage}{kind}" for stage in args.stages for kind in ("", "_lora"))]
    results = {which: run_child(args, which) for which in runs}
    base = results["imports"]["peak_rss_mb"]
    print(
        f"model {args.model}; LoRA r {args.lora_r} on every linear layer; {args.threads} threads\n"
        f"SFT: {args.batch} examples per step, {args.sft_steps} steps (seconds per step from the second on); "
        f"PPO: {args.batch} episodes per update, responses up to {args.response_length} tokens, "
        f"{args.ppo_updates} updates"
    )
    print(f"{'':10}{'peak RSS MB':>12}{'above imports':>15}{'s / step':>10}")
    print(f"{'imports':10}{base:12.0f}")
    for which in runs[1:]:
        r = results[which]
        print(f"{which:10}{r['peak_rss_mb']:12.0f}{r['peak_rss_mb'] - base:15.0f}{r['seconds'] / r['steps']:10.2f}")
    for stage in args.stages:
        full, lora = results[stage], results[f"{stage}_lora"]
        print(
            f"{stage.upper()} LoRA / full: memory above imports "
            f"{(lora['peak_rss_mb'] - base) / max(full['peak_rss_mb'] - base, 1):.2f}, seconds per step "
            f"{(lora['seconds'] / lora['steps']) / (full['seconds'] / full['steps']):.2f}"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
