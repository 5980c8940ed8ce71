"""The verifier fine-tune two ways on the same data: train_verifier.py (our loop on the training toolkit)
and transformers' Trainer, per seed: held-out accuracy / precision / recall (p > 0.4) and wall time.

Same examples, split, tokenization (huatuo_o1.verifier_training), steps, batch, learning rate, cosine schedule
with 5% warmup, weight decay 0.01, clipping 1.0, plain cross-entropy (--class_balance none: Trainer has no class
weights), head learning rate = learning rate. Each run is its own process. Without --model_path the tiny random
verifier (tests/tiny_models.py) and the synthetic verdicts of tests/verifier_helpers.py (run as programs).

    python bench/verifier_trainer_comparison.py                    # 600 steps, seeds 1 2 3, about 2 minutes
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from huatuo_o1 import cli
from huatuo_o1.records import read_json

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def trainer_run(args):
    """transformers' Trainer on the examples train_verifier.py would use; prints its held-out figures."""
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from huatuo_o1.verifier import load_template
    from huatuo_o1.verifier_training import VerdictData, encode, load_backbone, read_examples, scores, split_by_record

    torch.set_num_threads(args.threads)
    examples, _ = read_examples(VerdictData(data_path=args.data))
    train, held_out = split_by_record(examples, 0.1, 2000, args.seed)
    model, tokenizer = load_backbone(args.model_path)
    template = load_template(args.template)
    encode(train, tokenizer, template, 4000)
    encode(held_out, tokenizer, template, 4000)
    settings = TrainingArguments(
        output_dir=tempfile.mkdtemp(), max_steps=args.steps, per_device_train_batch_size=args.batch,
        learning_rate=args.learning_rate, lr_scheduler_type="cosine", warmup_steps=0.05, weight_decay=0.01,
        max_grad_norm=1.0, seed=args.seed, report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    rows = [{"input_ids": e["input_ids"], "labels": e["label"]} for e in train]
    Trainer(model=model, args=settings, train_dataset=rows, data_collator=DataCollatorWithPadding(tokenizer)).train()
    model.eval()
    with torch.no_grad():
        p = [
            torch.softmax(model(input_ids=torch.tensor([e["input_ids"]])).logits.float(), -1)[0, 1].item()
            for e in held_out
        ]
    print(json.dumps(scores([x > 0.4 for x in p], [e["label"] for e in held_out])))


def timed(command):
    started = time.time()
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(1)})  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"{command[1]} failed:\n{done.stderr[-3000:]}")
    return done.stdout, round(time.time() - started, 1)


def main():
    parser = cli.argument_parser(__doc__)
    parser.add_argument("--model_path", help="verifier backbone (default: the tiny random verifier)")
    parser.add_argument("--data", help="verdict records (default: 1500 synthetic verdicts)")
    parser.add_argument("--template", help="verifier input template (default: the short one of the tests)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--trainer_child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trainer_child:
        return trainer_run(args)

    scratch = tempfile.mkdtemp(prefix="verifier_bench_")
    if not args.model_path:
        subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tests", "tiny_models.py"), "--output_dir", scratch],
                       check=True, capture_output=True)  # fmt: skip
        args.model_path = os.path.join(scratch, "tiny-verifier")
    if not args.data:
        helpers = os.path.join(REPO_ROOT, "tests", "verifier_helpers.py")
        subprocess.run([sys.executable, helpers, "--output_dir", scratch], check=True, capture_output=True)
        args.data = os.path.join(scratch, "records.json")
        args.template = args.template or os.path.join(scratch, "short_template.txt")
    common = ["--steps", str(args.steps), "--batch", str(args.batch), "--learning_rate", str(args.learning_rate)]
    print(f"{'seed':>4} {'ours: acc / prec / rec':>26} {'s':>6} {'Trainer: acc / prec / rec':>28} {'s':>6}")
    for seed in args.seeds:
        out = os.path.join(scratch, f"ours_{seed}")
        _, ours_s = timed([
            sys.executable, "train_verifier.py", "--model_path", args.model_path, "--data_path", args.data,
            "--output_dir", out, "--max_steps", str(args.steps), "--learning_rate", str(args.learning_rate),
            "--train_bsz_per_gpu", str(args.batch), "--seed", str(seed), "--class_balance", "none",
            "--eval_before_training", "False", "--save_epoch_state", "False",
            *(["--verifier_template", args.template] if args.template else []),
        ])  # fmt: skip
        ours = read_json(os.path.join(out, "verifier_summary.json"))["heldout"]
        stdout, hf_s = timed([sys.executable, os.path.abspath(__file__), "--trainer_child", "--model_path",
                              args.model_path, "--data", args.data, "--seed", str(seed), *common,
                              *(["--template", args.template] if args.template else [])])  # fmt: skip
        hf = json.loads(stdout.strip().splitlines()[-1])
        figures = lambda s: f"{s['accuracy']:.3f} / {s['precision']:.3f} / {s['recall']:.3f}"  # noqa: E731
        print(f"{seed:>4} {figures(ours):>26} {ours_s:>6} {figures(hf):>28} {hf_s:>6}")


if __name__ == "__main__":
    main()
