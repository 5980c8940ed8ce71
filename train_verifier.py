"""Train the medical verifier: a 2-label sequence classifier (label 1 = the answer is correct).

The paper fine-tuned its verifier on about 20K LLM verdicts; the search stage keeps every verdict
it asks for, so its own records are the training data. Each example is one (model response,
reference answer, verdict) triple, shown to the classifier as exactly the text RL_stage2.py shows
the verifier (ppo_utils/verifier_reward.py, templates/verifier_input.txt), so the saved folder
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

A rerun of the same command continues after the last finished epoch (state in <output_dir>/training_state).
"""

import json
import math
import os
import random
import re
import shutil
import sys
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, set_seed
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer, HfArgumentParser, get_cosine_schedule_with_warmup

from pipeline_io import InputError, attn_implementation, from_pretrained_or_explain, load_records, write_json_atomic
from ppo_utils.verifier_reward import MAX_VERIFIER_TOKENS, load_template, verifier_input
from RL_stage2 import distinct_pad_token

STATE_DIR, STATE_FILE, SUMMARY_FILE = "training_state", "trainer_state.json", "verifier_summary.json"
HEAD_NAMES = ("score", "classifier")  # the classification head's module name in transformers' *ForSequenceClassification


@dataclass
class VerifierArguments:
    model_path: str = field(metadata={"help": "Backbone: a causal LM (a new 2-label `score` head is added) or a classifier."})
    data_path: str = field(metadata={"help": "Search-stage records (items with 'verifications') or flat rows: local .json/.jsonl or a hub id."})
    output_dir: str = field(default="./ckpts/medical_verifier", metadata={"help": "The trained verifier (a Hugging Face folder)."})
    response_field: str = field(default="response", metadata={"help": "Field holding the model's answer."})
    reference_field: str = field(default="reference_answer", metadata={"help": "Field holding the ground-truth answer."})
    verdict_field: str = field(default="verdict", metadata={"help": "Field holding the verdict (true/false, 'True'/'False', 1/0)."})
    records_field: str = field(default="verifications", metadata={"help": "List field of a search record whose entries are examples."})
    verifier_template: str = field(default=None, metadata={"help": "Verifier input template (default templates/verifier_input.txt, as in RL)."})
    max_length: int = field(default=MAX_VERIFIER_TOKENS, metadata={"help": "Truncate inputs to this many tokens (RL truncates at 4000 too)."})
    eval_fraction: float = field(default=0.1, metadata={"help": "Share of the records held out for the final check."})
    max_eval_samples: int = field(default=2000, metadata={"help": "At most this many held-out examples."})
    class_balance: str = field(default="weighted", metadata={
        "help": "'weighted': the loss weights each class by n / (2 n_class), so a skewed set of verdicts does not teach "
                "'always True'; 'none': plain cross-entropy.", "choices": ["weighted", "none"]})
    threshold: float = field(default=0.4, metadata={"help": "Predict 'correct' when p(label 1) > threshold (RL's reward rule uses 0.4)."})
    train_bsz_per_gpu: int = field(default=8)
    eval_bsz_per_gpu: int = field(default=16)
    gradient_accumulation_steps: int = field(default=1)
    learning_rate: float = field(default=1e-5)
    head_learning_rate: float = field(default=None, metadata={
        "help": "Learning rate of the classification head (new when the backbone is a causal LM); default: --learning_rate. "
                "A higher one helps short runs on small data."})
    weight_decay: float = field(default=0.01)
    warmup_rates: float = field(default=0.05, metadata={"help": "Share of optimizer steps spent warming up (cosine decay after)."})
    n_epochs: int = field(default=2)
    max_steps: int = field(default=0, metadata={"help": "Stop after this many optimizer steps (0: n_epochs full passes)."})
    seed: int = field(default=42)
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations (long inputs, big backbones)."})
    logging_steps: int = field(default=10)
    eval_before_training: bool = field(default=True, metadata={"help": "Also score the held-out split with the untrained model."})
    save_epoch_state: bool = field(default=True, metadata={
        "help": "After each epoch but the last, save weights, optimizer and scheduler to <output_dir>/training_state so a "
                "rerun can resume (about 4x the model's size in float32)."})
    resume: bool = field(default=True, metadata={"help": "Continue after the last finished epoch saved in output_dir."})
    report_to: str = field(default="none", metadata={"help": "none, wandb or tensorboard (loss and learning rate; logs under output_dir/logs).",
                                                     "choices": ["none", "wandb", "tensorboard"]})


# ---- data ---------------------------------------------------------------------------------------
def parse_verdict(value, where):
    """True/False from a bool, 'True'/'False' (any case), or 0/1; None when the verdict is missing."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise InputError(f"{where}: verdict {value!r} is not true/false")


def read_examples(args, need_verdict=True):
    """Flat examples {response, reference, label, group}; group = the record they came from.

    Returns (examples, number skipped because their verdict is missing).
    """
    rows = load_records(args.data_path)
    as_records = any(isinstance(row.get(args.records_field), list) for row in rows)
    examples, skipped = [], 0
    for index, row in enumerate(rows):
        entries = [(f"{args.data_path}: row {index}", row)]
        if as_records:
            entries = [(f"{args.data_path}: row {index}, {args.records_field}[{j}]", v)
                       for j, v in enumerate(row.get(args.records_field) or [])]
        for where, entry in entries:
            if not isinstance(entry, dict):
                raise InputError(f"{where} is a {type(entry).__name__}, expected an object")
            for name in (args.response_field, args.reference_field) + ((args.verdict_field,) if need_verdict else ()):
                if name not in entry:
                    raise InputError(f"{where} lacks the field '{name}' (set --response_field / --reference_field / --verdict_field)")
            verdict = parse_verdict(entry.get(args.verdict_field), where)
            if need_verdict and verdict is None:
                skipped += 1
                continue
            examples.append({"response": str(entry[args.response_field] or ""), "reference": str(entry[args.reference_field] or ""),
                             "label": None if verdict is None else int(verdict), "group": index})
    return examples, skipped


def split_by_record(examples, eval_fraction, max_eval_samples, seed):
    """Hold out whole records (their examples share a question) until the held-out share is reached.

    With a single record, its examples are split one by one.
    """
    if len({e["group"] for e in examples}) < 2:
        examples = [{**e, "group": i} for i, e in enumerate(examples)]
    groups = sorted({e["group"] for e in examples})
    random.Random(seed).shuffle(groups)
    target = min(max_eval_samples, max(1, round(eval_fraction * len(examples))))
    size = {g: 0 for g in groups}
    for e in examples:
        size[e["group"]] += 1
    held_out, n = set(), 0
    for g in groups[:-1]:  # at least one record stays for training
        if n >= target:
            break
        held_out.add(g)
        n += size[g]
    return [e for e in examples if e["group"] not in held_out], [e for e in examples if e["group"] in held_out]


def normalise(text):
    return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())


def string_match(response, reference):
    """The baseline: the normalised reference appears as whole words in the normalised response."""
    reference = normalise(reference)
    return bool(reference) and f" {reference} " in f" {normalise(response)} "


def encode(examples, tokenizer, template, max_length):
    for index, e in enumerate(examples):
        text = verifier_input(e["response"], e["reference"], tokenizer.eos_token, template)
        e["input_ids"] = tokenizer(text, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
        e["index"] = index
    return examples


def collate(pad_token_id):
    def pad(batch):
        width = max(len(e["input_ids"]) for e in batch)
        return {
            "input_ids": torch.tensor([e["input_ids"] + [pad_token_id] * (width - len(e["input_ids"])) for e in batch]),
            "attention_mask": torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in batch]),
            "labels": torch.tensor([e["label"] for e in batch]),
            "index": torch.tensor([e["index"] for e in batch]),
        }
    return pad


# ---- model --------------------------------------------------------------------------------------
def load_backbone(args):
    """The classifier and its tokenizer, with a pad token distinct from eos.

    The classifier reads its score at the last token that is not padding. Our input ends with the
    tokenizer's eos, so a tokenizer that pads with eos would make it read the token before: give
    it another pad token (an unused special one if there is, else a new one and a bigger embedding).
    """
    tokenizer = from_pretrained_or_explain(AutoTokenizer, args.model_path)
    grew = distinct_pad_token(tokenizer)
    model = from_pretrained_or_explain(
        AutoModelForSequenceClassification, args.model_path, num_labels=2, dtype=torch.float32,
        attn_implementation=attn_implementation(), id2label={0: "False", 1: "True"}, label2id={"False": 0, "True": 1},
    )
    if grew:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, tokenizer


def parameter_groups(model, args):
    """AdamW groups: no decay for biases and norms; the new classification head at --head_learning_rate."""
    groups = {}
    for name, parameter in model.named_parameters():
        head = name.split(".")[0] in HEAD_NAMES
        matrix = len(getattr(parameter, "ds_shape", parameter.shape)) >= 2  # ZeRO-3 flattens shards: ds_shape is the real shape
        groups.setdefault((head, matrix), []).append(parameter)
    return [{"params": params, "weight_decay": args.weight_decay if matrix else 0.0,
             "lr": (args.head_learning_rate or args.learning_rate) if head else args.learning_rate}
            for (head, matrix), params in sorted(groups.items())]


def make_accelerator(args):
    # Without CUDA, accelerate leaves the process-group backend unset and DeepSpeed counts the
    # world size wrong (ENVIRONMENT-FACTS.md); the config file's accumulation would override ours.
    os.environ["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"] = str(args.gradient_accumulation_steps)
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    handlers = [InitProcessGroupKwargs(backend="gloo")] if launched and not torch.cuda.is_available() else []
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps, kwargs_handlers=handlers,
                              log_with=None if args.report_to == "none" else args.report_to,
                              project_dir=os.path.join(args.output_dir, "logs"))
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:  # our flags decide the batch shape, not the config file
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = args.train_bsz_per_gpu
        plugin.deepspeed_config["gradient_accumulation_steps"] = args.gradient_accumulation_steps
    return accelerator


# ---- evaluation ---------------------------------------------------------------------------------
@torch.no_grad()
def predict(accelerator, model, loader, n):
    """p(label 1) for each of the n examples behind `loader`, in order, on every process."""
    model.eval()
    p = torch.zeros(n)
    for batch in tqdm(loader, desc="held-out", disable=not accelerator.is_local_main_process, leave=False):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        probs, index = accelerator.gather_for_metrics((torch.softmax(logits.float(), -1)[:, 1], batch["index"]))
        p[index.cpu()] = probs.cpu()
    model.train()
    return p


def scores(predicted, labels):
    """Accuracy, and precision / recall of 'correct' (label 1); None where undefined."""
    predicted, labels = [bool(x) for x in predicted], [bool(x) for x in labels]
    tp = sum(p and y for p, y in zip(predicted, labels))
    n_pred, n_true = sum(predicted), sum(labels)
    return {
        "accuracy": round(sum(p == y for p, y in zip(predicted, labels)) / max(1, len(labels)), 4),
        "precision": round(tp / n_pred, 4) if n_pred else None,
        "recall": round(tp / n_true, 4) if n_true else None,
    }


def held_out_report(p, examples, threshold):
    labels = [e["label"] for e in examples]
    verifier = [x > threshold for x in p.tolist()]
    baseline = [string_match(e["response"], e["reference"]) for e in examples]
    agreement = round(sum(v == b for v, b in zip(verifier, baseline)) / max(1, len(labels)), 4)
    return scores(verifier, labels), scores(baseline, labels), agreement


# ---- checkpoints --------------------------------------------------------------------------------
def save_verifier(accelerator, model, tokenizer, folder):
    """Full weights (gathered under ZeRO-3) and the tokenizer as a Hugging Face folder."""
    state_dict = accelerator.get_state_dict(model)  # every process takes part in the gather
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.config.dtype = next(iter(state_dict.values())).dtype
        unwrapped.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(folder)
    accelerator.wait_for_everyone()


def save_training_state(accelerator, output_dir, progress):
    """Optimizer, scheduler and weights after a finished epoch; trainer_state.json is written last."""
    folder = os.path.join(output_dir, STATE_DIR)
    if accelerator.is_main_process and os.path.isdir(folder):
        shutil.rmtree(folder)
    accelerator.wait_for_everyone()
    accelerator.save_state(folder)
    if accelerator.is_main_process:
        write_json_atomic(os.path.join(folder, STATE_FILE), progress)
    accelerator.wait_for_everyone()


def saved_progress(output_dir):
    path = os.path.join(output_dir, STATE_DIR, STATE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


# ---- main ---------------------------------------------------------------------------------------
def main(argv=None):
    (args,) = HfArgumentParser(VerifierArguments).parse_args_into_dataclasses(args=argv)
    accelerator = make_accelerator(args)
    set_seed(args.seed)
    say = accelerator.print

    # Load.
    examples, skipped = read_examples(args)
    if len(examples) < 2:
        raise InputError(f"{args.data_path}: {len(examples)} example(s) with a verdict; need at least 2 (train and held out)")
    train, held_out = split_by_record(examples, args.eval_fraction, args.max_eval_samples, args.seed)
    model, tokenizer = load_backbone(args)
    template = load_template(args.verifier_template)
    encode(train, tokenizer, template, args.max_length)
    encode(held_out, tokenizer, template, args.max_length)
    n_correct = sum(e["label"] for e in train)
    if args.class_balance == "weighted" and 0 < n_correct < len(train):
        class_weights = torch.tensor([len(train) / (2 * (len(train) - n_correct)), len(train) / (2 * n_correct)])
    else:
        class_weights = torch.ones(2)
    say(f"verifier data: {len(examples)} examples ({skipped} without a verdict skipped) -> {len(train)} train "
        f"({n_correct} correct) / {len(held_out)} held out; class weights {[round(w, 3) for w in class_weights.tolist()]}")

    # Prepare.
    generator = torch.Generator().manual_seed(args.seed)
    train_loader = torch.utils.data.DataLoader(train, batch_size=args.train_bsz_per_gpu, shuffle=True,
                                               generator=generator, collate_fn=collate(tokenizer.pad_token_id))
    eval_loader = torch.utils.data.DataLoader(held_out, batch_size=args.eval_bsz_per_gpu, collate_fn=collate(tokenizer.pad_token_id))
    steps_per_epoch = math.ceil(len(train) / (args.train_bsz_per_gpu * accelerator.num_processes * args.gradient_accumulation_steps))
    total_steps = args.max_steps or steps_per_epoch * args.n_epochs
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    optimizer = torch.optim.AdamW(parameter_groups(model, args), lr=args.learning_rate)
    # accelerate steps a prepared scheduler once per process at each optimizer step
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(args.warmup_rates * total_steps) * accelerator.num_processes,
                                                total_steps * accelerator.num_processes)
    model, optimizer, train_loader, eval_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, eval_loader, scheduler)
    if args.report_to != "none":
        accelerator.init_trackers("train_verifier", config={k: v for k, v in asdict(args).items() if isinstance(v, (int, float, str, bool))})
    class_weights = class_weights.to(accelerator.device)

    progress = {"epoch": 0, "step": 0, "log": []}
    previous = saved_progress(args.output_dir) if args.resume else None
    if previous is not None:
        accelerator.load_state(os.path.join(args.output_dir, STATE_DIR))
        progress = previous
        say(f"resumed after epoch {progress['epoch']} (step {progress['step']})")
    before = progress.get("heldout_before")
    if before is None and args.eval_before_training:
        before = held_out_report(predict(accelerator, model, eval_loader, len(held_out)), held_out, args.threshold)[0]
        progress["heldout_before"] = before
        say(f"held-out before training: {json.dumps(before)}")

    # Train.
    bar = tqdm(total=total_steps, initial=progress["step"], desc="verifier", disable=not accelerator.is_local_main_process)
    running = []
    for epoch in range(progress["epoch"], n_epochs):
        train_loader.set_epoch(epoch)
        for batch in train_loader:
            with accelerator.accumulate(model):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                loss = F.cross_entropy(logits.float(), batch["labels"], weight=class_weights)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            running.append(loss.item())
            if not accelerator.sync_gradients:
                continue
            progress["step"] += 1
            bar.update(1)
            if progress["step"] % args.logging_steps == 0 or progress["step"] == total_steps:
                entry = {"step": progress["step"], "epoch": epoch, "loss": round(sum(running) / len(running), 4),
                         "lr": scheduler.get_last_lr()[0]}
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
            save_training_state(accelerator, args.output_dir, progress)
    bar.close()

    # Check and save.
    p = predict(accelerator, model, eval_loader, len(held_out))
    after, baseline, agreement = held_out_report(p, held_out, args.threshold)
    save_verifier(accelerator, model, tokenizer, args.output_dir)
    summary = {
        "output_dir": os.path.abspath(args.output_dir), "backbone": args.model_path, "data_path": args.data_path,
        "n_examples": len(examples), "n_skipped_without_verdict": skipped, "n_train": len(train), "n_held_out": len(held_out),
        "train_share_correct": round(n_correct / len(train), 4), "held_out_share_correct": round(sum(e["label"] for e in held_out) / len(held_out), 4),
        "threshold": args.threshold, "steps": progress["step"], "first_loss": progress["log"][0]["loss"] if progress["log"] else None,
        "last_loss": progress["log"][-1]["loss"] if progress["log"] else None,
        "heldout_before": before, "heldout": after, "baseline": baseline, "verifier_vs_baseline_agreement": agreement,
        "arguments": asdict(args),
    }
    if accelerator.is_main_process:
        write_json_atomic(os.path.join(args.output_dir, "heldout_predictions.json"), [
            {"response": e["response"], "reference_answer": e["reference"], "verdict": bool(e["label"]),
             "p_correct": round(x, 4), "predicted": x > args.threshold, "string_match": string_match(e["response"], e["reference"])}
            for e, x in zip(held_out, p.tolist())
        ])
        write_json_atomic(os.path.join(args.output_dir, "train_log.json"), progress["log"])
        write_json_atomic(os.path.join(args.output_dir, SUMMARY_FILE), summary)
        shutil.rmtree(os.path.join(args.output_dir, STATE_DIR), ignore_errors=True)  # finished: nothing to resume
        print(f"held-out ({len(held_out)} examples, threshold {args.threshold}): verifier accuracy {after['accuracy']}, "
              f"precision {after['precision']}, recall {after['recall']} | string match accuracy {baseline['accuracy']}, "
              f"precision {baseline['precision']}, recall {baseline['recall']} | verifier agrees with string match on {agreement}")
        print(f"verifier saved to {summary['output_dir']} (use it as RL_stage2.py --reward_model_path)")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


if __name__ == "__main__":
    try:
        main()
    except InputError as e:
        sys.exit(f"train_verifier.py: {e}")
