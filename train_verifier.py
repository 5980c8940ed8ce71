"""Train the medical verifier: a 2-label sequence classifier (label 1 = the answer is correct).

The paper fine-tuned its verifier on about 20K LLM verdicts; the search stage keeps every verdict
it asks for, so its own records are the training data. Each example is one (model response,
reference answer, verdict) triple, shown to the classifier as exactly the text RL_stage2.py shows
the verifier (huatuo_o1/verifier.py, huatuo_o1/templates/verifier_input.txt), so the saved folder
drops in as `RL_stage2.py --reward_model_path`.

Data (--data_path): the search stage's records (each item's "verifications" list of
{response, reference_answer, verdict} is flattened), or any JSON/JSONL file or hub dataset of flat
rows; --response_field / --reference_field / --verdict_field name the columns. Verdicts may be
booleans, "True"/"False" strings or 0/1. Examples of one record stay on one side of the held-out split.

At the end it prints, on the held-out split: accuracy, precision and recall of "correct", and the
same for a plain string-match baseline (reference contained in the response), and writes
verifier_summary.json and heldout_predictions.json into --output_dir beside the model.

Usage (8 GPUs, ZeRO-3 as in SFT):
    accelerate launch --config_file ./configs/deepspeed_zero3.yaml --num_processes 8 train_verifier.py \\
        --model_path meta-llama/Llama-3.2-3B-Instruct --data_path data/medical_CoT_search_records.json \\
        --output_dir ckpts/medical_verifier --train_bsz_per_gpu 8 --learning_rate 1e-5 --n_epochs 2

Usage (one CPU process):
    python train_verifier.py --model_path models/SmolLM2-135M-Instruct --data_path records.json \\
        --output_dir out/verifier --max_length 512 --learning_rate 5e-5 --n_epochs 3

A rerun of the same command continues after the last finished epoch (state in <output_dir>/checkpoint-<step>),
or does nothing when the verifier is already trained; one with other data or settings is refused
(--resume False trains afresh).
"""

import json
import math
import os
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from huatuo_o1 import cli, training
from huatuo_o1.models import check_model_source
from huatuo_o1.outputs import check_outputs
from huatuo_o1.records import InputError, digest, read_text, write_json_atomic
from huatuo_o1.verifier import MAX_VERIFIER_TOKENS, load_template
from huatuo_o1.verifier_training import (
    VerdictData,
    collate,
    encode,
    held_out_report,
    load_backbone,
    parameter_groups,
    predict,
    read_examples,
    split_by_record,
    string_match,
)


@dataclass
class VerifierArguments:
    model_path: str = field(
        metadata={"help": "Backbone: a causal LM (a new 2-label `score` head is added) or a classifier."}
    )
    output_dir: str = field(
        default="./ckpts/medical_verifier", metadata={"help": "The trained verifier (a Hugging Face folder)."}
    )
    verifier_template: str = field(
        default=None,
        metadata={"help": "Verifier input template (default huatuo_o1/templates/verifier_input.txt, as in RL)."},
    )
    max_length: int = field(
        default=MAX_VERIFIER_TOKENS,
        metadata={"help": "Truncate inputs to this many tokens (RL truncates at 4000 too)."},
    )
    eval_fraction: float = field(default=0.1, metadata={"help": "Share of the records held out for the final check."})
    max_eval_samples: int = field(default=2000, metadata={"help": "At most this many held-out examples."})
    class_balance: str = field(
        default="weighted",
        metadata={
            "help": (
                "'weighted': the loss weights each class by n / (2 n_class), so a skewed set of verdicts does "
                "not teach "
                "'always True'; 'none': plain cross-entropy."
            ),
            "choices": ["weighted", "none"],
        },
    )
    threshold: float = field(
        default=0.4, metadata={"help": "Predict 'correct' when p(label 1) > threshold (RL's reward rule uses 0.4)."}
    )
    train_bsz_per_gpu: int = field(default=8)
    eval_bsz_per_gpu: int = field(default=16)
    gradient_accumulation_steps: int = field(default=1)
    learning_rate: float = field(default=1e-5)
    head_learning_rate: float = field(
        default=None,
        metadata={
            "help": (
                "Learning rate of the classification head (new when the backbone is a causal LM); default: "
                "--learning_rate. "
                "A higher one helps short runs on small data."
            )
        },
    )
    weight_decay: float = field(default=0.01)
    warmup_rates: float = field(
        default=0.05, metadata={"help": "Share of optimizer steps spent warming up (cosine decay after)."}
    )
    n_epochs: int = field(default=2)
    max_steps: int = field(
        default=0, metadata={"help": "Stop after this many optimizer steps (0: n_epochs full passes)."}
    )
    seed: int = field(default=42)
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations (long inputs, big backbones)."}
    )
    logging_steps: int = field(default=10)
    eval_before_training: bool = field(
        default=True, metadata={"help": "Also score the held-out split with the untrained model."}
    )
    max_grad_norm: float = field(
        default=1.0,
        metadata={
            "help": (
                "Clip the gradient norm at each optimizer step (DeepSpeed's gradient_clipping is set from it); 0: off."
            )
        },
    )
    save_epoch_state: bool = field(
        default=True,
        metadata={
            "help": (
                "After each epoch but the last, save a checkpoint (<output_dir>/checkpoint-<step>: the model, "
                "optimizer and "
                "scheduler) so a rerun can resume (about 5x the model's size in float32); removed when training ends."
            )
        },
    )
    resume: bool = field(
        default=True,
        metadata={
            "help": "Continue after the last finished epoch saved in output_dir, or do nothing when the verifier "
            "there is trained (a run made with other data or settings is refused); False trains afresh."
        },
    )
    report_to: str = field(
        default="none",
        metadata={
            "help": "none, wandb or tensorboard (loss and learning rate; logs under output_dir/logs).",
            "choices": ["none", "wandb", "tensorboard"],
        },
    )

    def __post_init__(self):
        cli.check_ranges(
            self,
            at_least_1=(
                "train_bsz_per_gpu",
                "eval_bsz_per_gpu",
                "gradient_accumulation_steps",
                "n_epochs",
                "max_length",
                "max_eval_samples",
                "logging_steps",
            ),
            at_least_0=("max_steps", "max_grad_norm", "weight_decay"),
            above_0=("learning_rate", "head_learning_rate"),
            shares=("warmup_rates", "threshold"),
            fractions=("eval_fraction",),
        )


# The settings a resumed or skipped run must share with the earlier one (with the data, the backbone, the template).
TRAINING_SETTINGS = (
    "max_length",
    "eval_fraction",
    "max_eval_samples",
    "class_balance",
    "train_bsz_per_gpu",
    "gradient_accumulation_steps",
    "learning_rate",
    "head_learning_rate",
    "weight_decay",
    "warmup_rates",
    "n_epochs",
    "max_steps",
    "seed",
)
SUMMARY = "verifier_summary.json"


def main(argv=None):
    args, data = cli.parse((VerifierArguments, VerdictData), argv)
    # Before anything loads: the backbone exists, and the verifier can be written without touching an input.
    check_model_source(args.model_path, "--model_path")
    check_outputs(
        [("--output_dir", args.output_dir, True)],
        {"--model_path": args.model_path, "--data_path": data.data_path},
        replaced_inside=training.CHECKPOINT_PREFIX,
    )
    trackers = training.trackers([args.report_to], "train_verifier.py")
    accelerator = training.make_accelerator(
        micro_batch_size=args.train_bsz_per_gpu,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        max_grad_norm=args.max_grad_norm,
        log_with=trackers,
        project_dir=os.path.join(args.output_dir, "logs"),
    )
    set_seed(args.seed)
    checkpoints = training.Checkpoints(args.output_dir, keep=1)
    say = accelerator.print

    # Load.
    examples, skipped = read_examples(data)
    if len(examples) < 2:
        raise InputError(
            f"{data.data_path}: {len(examples)} example(s) with a verdict; need at least 2 (train and held out)"
        )
    train, held_out = split_by_record(examples, args.eval_fraction, args.max_eval_samples, args.seed)
    template = load_template(args.verifier_template)

    # An earlier run in output_dir: resumed (or, finished, left as it is) when its inputs were these, refused if not.
    run_inputs = {
        "data": digest([[e["response"], e["reference"], e["label"], e["group"]] for e in examples]),
        "model_path": args.model_path,
        "template": digest(template),
        "processes": accelerator.num_processes,
        **{name: getattr(args, name) for name in TRAINING_SETTINGS},
    }
    earlier, summary_path = checkpoints.list(), os.path.join(args.output_dir, SUMMARY)
    saved = None
    if earlier and args.resume:
        saved = training.Checkpoints.read_state(earlier[-1]).get("inputs")
    elif args.resume and os.path.isfile(summary_path):
        saved = json.loads(read_text(summary_path)).get("inputs")
    changed = training.changed_inputs(saved, run_inputs)
    if changed:
        raise InputError(
            f"{args.output_dir} holds a verifier run made with other inputs ({'; '.join(changed)}): pass --resume "
            "False to train afresh (it is replaced) or another --output_dir"
        )
    if args.resume and not earlier and saved is not None:
        say(f"{args.output_dir} holds a verifier trained on these inputs: nothing to do (--resume False trains again)")
        accelerator.end_training()
        return 0
    half_precision = accelerator.mixed_precision in ("bf16", "fp16")
    model, tokenizer = load_backbone(args.model_path, args.gradient_checkpointing, half_precision)
    encode(train, tokenizer, template, args.max_length)
    encode(held_out, tokenizer, template, args.max_length)
    n_correct = sum(e["label"] for e in train)
    if args.class_balance == "weighted" and 0 < n_correct < len(train):
        class_weights = torch.tensor([len(train) / (2 * (len(train) - n_correct)), len(train) / (2 * n_correct)])
    else:
        class_weights = torch.ones(2)
    say(
        f"verifier data: {len(examples)} examples ({skipped} without a verdict skipped) -> {len(train)} train "
        f"({n_correct} correct) / {len(held_out)} held out; class weights "
        f"{[round(w, 3) for w in class_weights.tolist()]}"
    )

    # Prepare.
    generator = torch.Generator().manual_seed(args.seed)
    train_loader = torch.utils.data.DataLoader(
        train,
        batch_size=args.train_bsz_per_gpu,
        shuffle=True,
        generator=generator,
        collate_fn=collate(tokenizer.pad_token_id),
    )
    eval_loader = torch.utils.data.DataLoader(
        held_out, batch_size=args.eval_bsz_per_gpu, collate_fn=collate(tokenizer.pad_token_id)
    )
    steps_per_epoch = math.ceil(
        len(train) / (args.train_bsz_per_gpu * accelerator.num_processes * args.gradient_accumulation_steps)
    )
    total_steps = args.max_steps or steps_per_epoch * args.n_epochs
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    optimizer = torch.optim.AdamW(
        parameter_groups(model, args.weight_decay, args.learning_rate, args.head_learning_rate), lr=args.learning_rate
    )
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    # stepped once per optimizer step
    scheduler = training.make_schedule(
        accelerator, "cosine", optimizer, int(args.warmup_rates * total_steps), total_steps
    )
    if trackers:
        accelerator.init_trackers(
            "train_verifier", config={k: v for k, v in asdict(args).items() if isinstance(v, (int, float, str, bool))}
        )
    class_weights = class_weights.to(accelerator.device)

    if earlier and not args.resume:
        say(f"--resume False: removing the checkpoint of the earlier run in {args.output_dir}")
        checkpoints.remove_all(accelerator)
    progress = {"epoch": 0, "step": 0, "log": [], "inputs": run_inputs}
    resumable = checkpoints.latest_resumable() if args.resume else None
    if resumable:
        progress = training.Checkpoints.load(accelerator, resumable)
        progress["inputs"] = run_inputs
        say(f"resumed after epoch {progress['epoch']} (step {progress['step']})")
    before = progress.get("heldout_before")
    if before is None and args.eval_before_training:
        before = held_out_report(predict(accelerator, model, eval_loader, len(held_out)), held_out, args.threshold)[0]
        progress["heldout_before"] = before
        say(f"held-out before training: {json.dumps(before)}")

    # Train.
    bar = tqdm(
        total=total_steps, initial=progress["step"], desc="verifier", disable=not accelerator.is_local_main_process
    )
    running = []
    timer = training.LoopTimer()
    tokens_seen = torch.zeros(2, device=accelerator.device)  # real tokens, processed tokens (padding included)
    for epoch in range(progress["epoch"], n_epochs):
        train_loader.set_epoch(epoch)
        for batch in train_loader:
            with accelerator.accumulate(model):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                loss = F.cross_entropy(logits.float(), batch["labels"], weight=class_weights)
                accelerator.backward(loss)
                training.optimizer_step(accelerator, model, optimizer, args.max_grad_norm)
            running.append(loss.item())
            n_real, n_processed = int(batch["attention_mask"].sum()), batch["input_ids"].numel()
            tokens_seen += torch.tensor([n_real, n_processed], dtype=torch.float, device=tokens_seen.device)
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            progress["step"] += 1
            timer.step(tokens_seen)
            bar.update(1)
            if progress["step"] % args.logging_steps == 0 or progress["step"] == total_steps:
                entry = {
                    "step": progress["step"],
                    "epoch": epoch,
                    "loss": round(sum(running) / len(running), 4),
                    "lr": scheduler.get_last_lr()[0],
                }
                progress["log"].append(entry)
                accelerator.log({"train/loss": entry["loss"], "train/lr": entry["lr"]}, step=entry["step"])
                bar.set_postfix(loss=entry["loss"])
                running = []
            if progress["step"] >= total_steps:
                break
        progress["epoch"] = epoch + 1
        if progress["step"] >= total_steps:
            break
        if args.save_epoch_state:
            with timer.paused():
                checkpoints.save(accelerator, model, tokenizer, progress["step"], progress)
    bar.close()

    throughput = timer.summary(accelerator, tokens_seen, ("real", "processed"))

    # Check and save.
    p = predict(accelerator, model, eval_loader, len(held_out))
    after, baseline, agreement = held_out_report(p, held_out, args.threshold)
    training.save_model_folder(accelerator, model, tokenizer, args.output_dir)
    summary = {
        "output_dir": os.path.abspath(args.output_dir),
        "backbone": args.model_path,
        "data_path": data.data_path,
        "n_examples": len(examples),
        "n_skipped_without_verdict": skipped,
        "n_train": len(train),
        "n_held_out": len(held_out),
        "train_share_correct": round(n_correct / len(train), 4),
        "held_out_share_correct": round(sum(e["label"] for e in held_out) / len(held_out), 4),
        "threshold": args.threshold,
        "steps": progress["step"],
        "first_loss": progress["log"][0]["loss"] if progress["log"] else None,
        "last_loss": progress["log"][-1]["loss"] if progress["log"] else None,
        # the training loop's time this run (checkpoint saving left out), and the rate from the second step on
        "throughput": throughput,
        "heldout_before": before,
        "heldout": after,
        "baseline": baseline,
        "verifier_vs_baseline_agreement": agreement,
        "arguments": {**asdict(args), **asdict(data)},
        "inputs": run_inputs,
    }
    if accelerator.is_main_process:
        write_json_atomic(
            os.path.join(args.output_dir, "heldout_predictions.json"),
            [
                {
                    "response": e["response"],
                    "reference_answer": e["reference"],
                    "verdict": bool(e["label"]),
                    "p_correct": round(x, 4),
                    "predicted": x > args.threshold,
                    "string_match": string_match(e["response"], e["reference"]),
                }
                for e, x in zip(held_out, p.tolist())
            ],
        )
        write_json_atomic(os.path.join(args.output_dir, "train_log.json"), progress["log"])
        write_json_atomic(summary_path, summary)
        print(
            f"held-out ({len(held_out)} examples, threshold {args.threshold}): verifier accuracy {after['accuracy']}, "
            f"precision {after['precision']}, recall {after['recall']} | string match accuracy "
            f"{baseline['accuracy']}, "
            f"precision {baseline['precision']}, recall {baseline['recall']} | verifier agrees with string match "
            f"on {agreement}"
        )
        print(f"verifier saved to {summary['output_dir']} (use it as RL_stage2.py --reward_model_path)")
    checkpoints.remove_all(accelerator)  # finished: nothing to resume
    accelerator.end_training()
    return summary


if __name__ == "__main__":
    cli.run(main)
