"""Peak memory and seconds per update: PPO (ours) vs GRPO (trl) on the same model and batch, in one run.

Each algorithm runs RL_stage2.py's main() in its own child process (so peak RSS is its own), with
the same policy, verifier, batch (episodes per update), response length and number of updates;
PPO additionally holds a value model and a reference copy, GRPO a reference copy (trl, beta > 0).
A third child only imports and loads nothing, to show the fixed cost of the Python stack. Without
--policy / --verifier the tiny random test models are built by tests/tiny_models.py (run as a
program); without --data, data/demo_data.json (it carries the verifiable problems' two keys).

    python bench/rl_memory.py                                   # tiny random models, seconds
    python bench/rl_memory.py --policy .cache/models/SmolLM2-135M-Instruct --verifier DIR --updates 2
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
RL_SCRIPT = os.path.join(REPO_ROOT, "RL_stage2.py")


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def child(args):
    import torch

    torch.set_num_threads(args.threads)
    # what RL_stage2.py imports (the baseline measures the imports too)
    import huatuo_o1.rl.ppo_trainer  # noqa: F401
    import huatuo_o1.rl.trl_algorithms  # noqa: F401

    if args.child == "baseline":
        print(json.dumps({"peak_rss_mb": peak_rss_mb()}))
        return
    out = tempfile.mkdtemp(prefix=f"rl_bench_{args.child}_")
    argv = [
        "--model_name_or_path",
        args.policy,
        "--reward_model_path",
        args.verifier,
        "--value_model_path",
        args.value or args.policy,
        "--dataset_name",
        args.data,
        "--output_dir",
        out,
        "--rl_algorithm",
        args.child,
        "--response_length",
        str(args.response_length),
        "--temperature",
        "0.7",
        "--per_device_train_batch_size",
        str(args.batch),
        "--gradient_accumulation_steps",
        "1",
        "--num_mini_batches",
        "1",
        "--num_ppo_epochs",
        "1",
        "--num_generations",
        "2",
        "--local_rollout_forward_batch_size",
        str(args.batch),
        "--total_episodes",
        str(args.batch * args.updates),
        "--bf16",
        "False",
        "--learning_rate",
        "1e-6",
        "--save_strategy",
        "no",
        "--eval_strategy",
        "no",
        "--report_to",
        "none",
        "--logging_steps",
        "1",
        "--gradient_checkpointing",
        str(args.gradient_checkpointing),
        "--max_eval_samples",
        "1",
    ]
    sys.argv = [RL_SCRIPT, *argv]
    with contextlib.redirect_stdout(sys.stderr):  # this child's stdout carries only its figures
        runpy.run_path(RL_SCRIPT, run_name="__main__")
    summary = read_json(os.path.join(out, "rl_summary.json"))
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "updates": summary["updates"], "seconds": summary["seconds"]}))


def run_child(args, which):
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        which,
        "--policy",
        args.policy,
        "--verifier",
        args.verifier,
        "--data",
        args.data,
        "--updates",
        str(args.updates),
        "--batch",
        str(args.batch),
        "--threads",
        str(args.threads),
        "--response_length",
        str(args.response_length),
        "--gradient_checkpointing",
        str(args.gradient_checkpointing),
    ]
    if args.value:
        command += ["--value", args.value]
    started = time.time()
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{which} failed:\n{result.stderr[-3000:]}")
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    measured["wall_seconds"] = round(time.time() - started, 1)
    return measured


def main():
    parser = cli.argument_parser(__doc__)
    parser.add_argument("--policy", help="policy folder (default: tiny random Qwen2 built now)")
    parser.add_argument("--verifier", help="2-label verifier folder (default: tiny random verifier)")
    parser.add_argument("--value", help="value model backbone (default: the policy)")
    parser.add_argument("--data", help="verifiable problems JSON (default: data/demo_data.json)")
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4, help="episodes (responses) per update, both algorithms")
    parser.add_argument("--response_length", type=int, default=32)
    parser.add_argument("--gradient_checkpointing", default="True")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=["baseline", "ppo", "grpo"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    scratch = tempfile.mkdtemp(prefix="rl_bench_")
    if not args.policy or not args.verifier:
        tiny = os.path.join(scratch, "tiny")
        subprocess.run(
            [sys.executable, os.path.join(REPO_ROOT, "tests", "tiny_models.py"), "--output_dir", tiny],
            check=True,
            capture_output=True,
        )
        args.policy = args.policy or os.path.join(tiny, "tiny-qwen2")
        args.verifier = args.verifier or os.path.join(tiny, "tiny-verifier")
    args.data = args.data or os.path.join(REPO_ROOT, "data", "demo_data.json")

    results = {which: run_child(args, which) for which in ("baseline", "ppo", "grpo")}
    base = results["baseline"]["peak_rss_mb"]
    print(
        f"policy {args.policy}\nverifier {args.verifier}\n{args.batch} episodes per update, {args.updates} updates, "
        f"responses up to {args.response_length} tokens, {args.threads} threads"
    )
    print(f"{'':8}{'peak RSS MB':>12}{'above imports':>15}{'s / update':>12}")
    print(f"{'imports':8}{base:12.0f}")
    for which in ("ppo", "grpo"):
        r = results[which]
        print(f"{which:8}{r['peak_rss_mb']:12.0f}{r['peak_rss_mb'] - base:15.0f}{r['seconds'] / r['updates']:12.2f}")
    ppo, grpo = results["ppo"], results["grpo"]
    print(
        f"GRPO / PPO: memory above imports {(grpo['peak_rss_mb'] - base) / max(ppo['peak_rss_mb'] - base, 1):.2f}, "
        f"seconds per update {(grpo['seconds'] / grpo['updates']) / (ppo['seconds'] / ppo['updates']):.2f}"
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
