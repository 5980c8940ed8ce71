"""The verifier's training: what train_verifier.py and score_verifier.py share (verdict data, the split, the
string-match baseline, the metrics, the backbone with a distinct pad token, predictions on held-out examples), and
train_verifier.py's flags and its trainer (VerifierTrainer, on the training toolkit huatuo_o1.training).

The verifier's input text and the reward are huatuo_o1.verifier's (RL reads the same text).
"""

import json
import math
import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from huatuo_o1 import cli, manifests, training
from huatuo_o1.lora import PEFT_PREFIX, LoRAArguments, add_adapters
from huatuo_o1.models import attn_implementation, distinct_pad_token, from_pretrained_or_explain
from huatuo_o1.records import (
    ANSWER_IDX,
    GROUND_TRUTH,
    OPTIONS,
    REFERENCE_ANSWER,
    VERDICT,
    VERIFICATIONS,
    VERIFIED_RESPONSE,
    InputError,
    digest,
    load_records,
    read_text,
    write_json_atomic,
)
from huatuo_o1.training import pad
from huatuo_o1.verifier import MAX_VERIFIER_TOKENS, verifier_input

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import PreTrainedTokenizerBase

HEAD_NAMES = (
    "score",
    "classifier",
)  # the classification head's module name in transformers' *ForSequenceClassification


@dataclass
class VerdictData:
    """Where the (response, reference answer, verdict) examples come from: the flags both scripts take."""

    data_path: str = field(
        default=None,
        metadata={
            "help": "Search-stage records (items with 'verifications') or flat rows: local .json/.jsonl or a hub id."
        },
    )
    response_field: str = field(default=VERIFIED_RESPONSE, metadata={"help": "Field holding the model's answer."})
    reference_field: str = field(default=REFERENCE_ANSWER, metadata={"help": "Field holding the ground-truth answer."})
    verdict_field: str = field(
        default=VERDICT,
        metadata={
            "help": "Field holding the verdict (true/false, 'True'/'False', 1/0); optional for score_verifier.py."
        },
    )
    records_field: str = field(
        default=VERIFICATIONS, metadata={"help": "List field of a search record whose entries are examples."}
    )


def parse_verdict(value: object, where: str) -> bool | None:
    """True/False from a bool, 'True'/'False' (any case), or 0/1; None when the verdict is missing."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise InputError(f"{where}: verdict {value!r} is not true/false")


def read_examples(args: VerdictData, need_verdict: bool = True) -> tuple[list[dict], int]:
    """Flat examples {response, reference, label, group}; group = the record they came from.

    Returns (examples, number skipped because their verdict is missing).
    """
    rows = load_records(args.data_path)
    as_records = any(isinstance(row.get(args.records_field), list) for row in rows)
    examples, skipped = [], 0
    for index, row in enumerate(rows):
        entries = [(f"{args.data_path}: row {index}", row)]
        if as_records:
            entries = [
                (f"{args.data_path}: row {index}, {args.records_field}[{j}]", v)
                for j, v in enumerate(row.get(args.records_field) or [])
            ]
        for where, entry in entries:
            if not isinstance(entry, dict):
                raise InputError(f"{where} is a {type(entry).__name__}, expected an object")
            for name in (args.response_field, args.reference_field) + ((args.verdict_field,) if need_verdict else ()):
                if name not in entry:
                    raise InputError(
                        f"{where} lacks the field '{name}' (set --response_field / --reference_field / "
                        "--verdict_field)"
                    )
            verdict = parse_verdict(entry.get(args.verdict_field), where)
            if need_verdict and verdict is None:
                skipped += 1
                continue
            examples.append(
                {
                    "response": str(entry[args.response_field] or ""),
                    "reference": str(entry[args.reference_field] or ""),
                    "label": None if verdict is None else int(verdict),
                    "group": index,
                }
            )
    return examples, skipped


EXAM_PHRASINGS_PATH = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "templates", "exam_answer_phrasings.txt"
)
SEARCH, EXAM = "search", "exam"  # where an example came from: --data_path's verdicts, --exam_items' options


def load_phrasings(path: str | None = None) -> list[str]:
    """How an answer naming an option is worded: one phrasing per non-empty line, each with one {option}."""
    path = path or EXAM_PHRASINGS_PATH
    lines = [line for line in read_text(path, "phrasings file").splitlines() if line.strip()]
    for number, line in enumerate(lines, 1):
        if line.count("{") != 1 or line.count("}") != 1 or "{option}" not in line:
            raise InputError(f"{path}: phrasing {number} ({line!r}) must hold {{option}} once and no other braces")
    if not lines:
        raise InputError(f"{path}: no phrasing (one per line, each with {{option}})")
    return lines


def read_exam_items(path: str) -> list[dict]:
    """Multiple-choice items (question, options {letter: text}, answer_idx), each checked: one line names the row."""
    items = load_records(path)
    for index, item in enumerate(items):
        where = f"--exam_items {path}: row {index}"
        options = item.get(OPTIONS)
        if not isinstance(options, dict) or len(options) < 2:
            raise InputError(f"{where}: '{OPTIONS}' must map at least 2 letters to option texts")
        if not all(isinstance(text, str) and text.strip() for text in options.values()):
            raise InputError(f"{where}: every option must be a non-empty text")
        if item.get(ANSWER_IDX) not in options:
            raise InputError(
                f"{where}: '{ANSWER_IDX}' {item.get(ANSWER_IDX)!r} is not one of its options {sorted(options)}"
            )
    return items


def exam_pairs(items: list[dict], phrasings: list[str]) -> list[dict]:
    """Labelled examples from exam items: per item, an answer naming its right option (label 1) and one naming each
    wrong option (label 0), worded by the item's phrasing (the phrasings taken in turn), against the item's reference
    answer (its Ground-True Answer when it has one, else the right option's text). A wrong option worded as the right
    one is left out (it would be labelled both ways)."""
    examples = []
    for index, item in enumerate(items):
        right = item[OPTIONS][item[ANSWER_IDX]]
        reference = item.get(GROUND_TRUTH) or right
        phrasing = phrasings[index % len(phrasings)]
        for letter, text in item[OPTIONS].items():
            correct = letter == item[ANSWER_IDX]
            if not correct and lowercase_words(text) == lowercase_words(right):
                continue
            examples.append({"response": phrasing.format(option=text.strip()), "reference": reference,
                             "label": int(correct), "group": index, "source": EXAM})  # fmt: skip
    return examples


def with_exam_pairs(verdicts: list[dict], pairs: list[dict]) -> list[dict]:
    """The search verdicts and the exam pairs together, grouped by reference answer: the held-out split then never
    has a reference that training saw, whichever file it came from."""
    return [
        {**e, "source": e.get("source", SEARCH), "group": lowercase_words(e["reference"])} for e in verdicts + pairs
    ]


def split_by_record(examples: list[dict], eval_fraction: float, max_eval_samples: int, seed: int) -> tuple[list, list]:
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


def lowercase_words(text: str) -> str:
    """The text's words in lower case, one space apart: every run of other characters (punctuation) is a space."""
    return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())


def string_match(response: str, reference: str) -> bool:
    """The baseline: the normalised reference appears as whole words in the normalised response."""
    reference = lowercase_words(reference)
    return bool(reference) and f" {reference} " in f" {lowercase_words(response)} "


def encode(examples: list[dict], tokenizer: "PreTrainedTokenizerBase", template: str, max_length: int) -> list[dict]:
    for index, e in enumerate(examples):
        text = verifier_input(e["response"], e["reference"], tokenizer.eos_token, template)
        e["input_ids"] = tokenizer(text, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
        e["index"] = index
    return examples


def collate(pad_token_id: int) -> Callable[[list[dict]], dict]:
    """Right-padded micro-batches with their labels and their examples' indices."""

    def collate_batch(batch):
        ids = [e["input_ids"] for e in batch]
        return {
            "input_ids": pad(ids, pad_token_id),
            "attention_mask": pad([[1] * len(i) for i in ids], 0),
            "labels": torch.tensor([e["label"] for e in batch]),
            "index": torch.tensor([e["index"] for e in batch]),
        }

    return collate_batch


def load_backbone(
    model_path: str, gradient_checkpointing: bool = False, half_precision: bool = False
) -> tuple[torch.nn.Module, "PreTrainedTokenizerBase"]:
    """The classifier (float32 weights) and its tokenizer, with a pad token distinct from eos.

    half_precision: whether mixed precision will run it in bf16 / fp16 (it picks the attention kernel).

    The classifier reads its score at the last token that is not padding. Our input ends with the
    tokenizer's eos, so a tokenizer that pads with eos would make it read the token before: give
    it another pad token (an unused special one if there is, else a new one and a bigger embedding).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = from_pretrained_or_explain(AutoTokenizer, model_path)
    grew = distinct_pad_token(tokenizer)
    model = from_pretrained_or_explain(
        AutoModelForSequenceClassification,
        model_path,
        num_labels=2,
        dtype=torch.float32,
        attn_implementation=attn_implementation(half_precision),
        id2label={0: "False", 1: "True"},
        label2id={"False": 0, "True": 1},
    )
    if grew:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, tokenizer


def parameter_groups(
    model: torch.nn.Module, weight_decay: float, learning_rate: float, head_learning_rate: float | None = None
) -> list[dict]:
    """AdamW groups of the trained parameters (all, or LoRA's adapters and the head): no decay for biases and norms;
    the new classification head at --head_learning_rate."""
    groups = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        head = name.removeprefix(PEFT_PREFIX).split(".")[0] in HEAD_NAMES
        matrix = (
            len(getattr(parameter, "ds_shape", parameter.shape)) >= 2
        )  # ZeRO-3 flattens shards: ds_shape is the real shape
        groups.setdefault((head, matrix), []).append(parameter)
    return [
        {
            "params": params,
            "weight_decay": weight_decay if matrix else 0.0,
            "lr": (head_learning_rate or learning_rate) if head else learning_rate,
        }
        for (head, matrix), params in sorted(groups.items())
    ]


@torch.no_grad()
def predict(
    accelerator: "Accelerator", model: torch.nn.Module, loader: torch.utils.data.DataLoader, n: int
) -> torch.Tensor:
    """p(label 1) for each of the n examples behind `loader`, in order, on every process."""
    model.eval()
    p = torch.zeros(n)
    for batch in tqdm(loader, desc="held-out", disable=not accelerator.is_local_main_process, leave=False):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        probs, index = accelerator.gather_for_metrics((torch.softmax(logits.float(), -1)[:, 1], batch["index"]))
        p[index.cpu()] = probs.cpu()
    model.train()
    return p


def scores(predicted: Sequence, labels: Sequence) -> dict:
    """Accuracy, and precision / recall of 'correct' (label 1); None where undefined."""
    predicted, labels = [bool(x) for x in predicted], [bool(x) for x in labels]
    tp = sum(p and y for p, y in zip(predicted, labels))
    n_pred, n_true = sum(predicted), sum(labels)
    return {
        "accuracy": round(sum(p == y for p, y in zip(predicted, labels)) / max(1, len(labels)), 4),
        "precision": round(tp / n_pred, 4) if n_pred else None,
        "recall": round(tp / n_true, 4) if n_true else None,
    }


def held_out_report(p: torch.Tensor, examples: list[dict], threshold: float) -> tuple[dict, dict, float]:
    labels = [e["label"] for e in examples]
    verifier = [x > threshold for x in p.tolist()]
    baseline = [string_match(e["response"], e["reference"]) for e in examples]
    agreement = round(sum(v == b for v, b in zip(verifier, baseline)) / max(1, len(labels)), 4)
    return scores(verifier, labels), scores(baseline, labels), agreement


# ---- the flags and the trainer --------------------------------------------------------------------


@dataclass
class VerifierArguments:
    """train_verifier.py's flags (with VerdictData's)."""

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
    exam_items: str = field(
        default=None,
        metadata={
            "help": (
                "Multiple-choice items (question, options, answer_idx; JSON/JSONL or a hub id): each gives an answer "
                "naming its right option (correct) and one per wrong option (incorrect), mixed with --data_path's "
                "verdicts when both are given."
            )
        },
    )
    exam_answer_phrasings: str = field(
        default=None,
        metadata={
            "help": "How --exam_items' answers are worded, one phrasing per line with {option}, taken in turn "
            "(default huatuo_o1/templates/exam_answer_phrasings.txt)."
        },
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
    resume: bool = training.resume_flag(
        "Continue after the last finished epoch saved in output_dir, or do nothing when the verifier there is "
        "trained (a run made with other data or settings is refused); False trains afresh."
    )
    report_to: str = training.report_to_flag(
        "none, wandb or tensorboard (loss and learning rate; logs under output_dir/logs)."
    )
    verify_checkpoints: str = training.verify_flag()

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


class VerifierTrainer:
    """train_verifier.py's training: a 2-label classifier fine-tuned on verdicts, resumable, checked on held-out ones.

    It owns the accelerator (and through it DeepSpeed, when the launch's config asks for it); the classifier with its
    AdamW optimizer (`parameter_groups`: no decay for biases and norms, the head at --head_learning_rate) and cosine
    schedule; the class-weighted loss; the shuffled train loader and the held-out one; the per-epoch checkpoints
    <output_dir>/checkpoint-<step>/ (at most one); the trained verifier in output_dir, heldout_predictions.json and
    train_log.json beside it.

    `train(examples, skipped, template)`:
      1. the examples are split by record (`split_by_record`); `resume_or_refuse`: an earlier run in output_dir is
         resumed when its inputs (the data, the backbone, the template, the process count, TRAINING_SETTINGS) were
         these, refused when they were not; a verifier trained on them is left as it is;
      2. `load`: the backbone (`load_backbone`), the examples as its input text (`encode`), the class weights, the
         loaders, prepared with the optimizer, and the schedule;
      3. `start`: the earlier run's checkpoint removed (--resume False), or its state restored; the held-out split
         scored before training (--eval_before_training);
      4. `loop`: per micro-batch the weighted cross-entropy and backward; per optimizer step clipping, the optimizer
         and the schedule (stepped once per optimizer step), the mean loss logged every --logging_steps; a checkpoint
         after each epoch but the last (--save_epoch_state); --max_steps (or n_epochs passes) in all;
      5. `evaluate_and_save`: the held-out split scored against the verdicts and beside the string-match baseline,
         the verifier saved, and the summary.

    Saved state: trainer_state.json (epoch, step, the log, the held-out scores before training, the inputs) and
    accelerate's state (model, optimizer, schedule, random generators): a rerun continues after the saved epoch.
    """

    def __init__(self, args: VerifierArguments, data: VerdictData, lora: LoRAArguments | None = None):
        """The accelerator (with --report_to's trackers, checked first), the seed, the checkpoints; nothing loads.
        data: where the examples came from, for the summary. lora: the LoRA flags (None: off): adapters on the
        backbone, the classification head trained in full (peft's modules_to_save)."""
        self.args, self.data = args, data
        self.lora = lora or LoRAArguments()
        self.summary_path = os.path.join(args.output_dir, SUMMARY)
        self.trackers = training.trackers([args.report_to], "train_verifier.py")
        self.accelerator = training.make_accelerator(
            micro_batch_size=args.train_bsz_per_gpu,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            max_grad_norm=args.max_grad_norm,
            log_with=self.trackers,
            project_dir=os.path.join(args.output_dir, "logs"),
        )
        set_seed(args.seed)
        self.checkpoints = training.Checkpoints(
            args.output_dir,
            keep=1,
            verify=manifests.verify_mode(args.verify_checkpoints),
            merge_lora=self.lora.merge_lora,
        )
        self.say = self.accelerator.print

    def train(self, examples: list[dict], skipped: int, template: str) -> dict | None:
        """Train on the examples (read_examples; `skipped` of them lacked a verdict), shown to the classifier through
        the template, or continue the run in output_dir; the summary, or None when the verifier there is trained on
        these inputs already."""
        args = self.args
        self.examples, self.skipped = examples, skipped
        self.train_set, self.held_out = split_by_record(examples, args.eval_fraction, args.max_eval_samples, args.seed)
        run_inputs = {
            "data": digest([[e["response"], e["reference"], e["label"], e["group"]] for e in examples]),
            "model_path": args.model_path,
            "template": digest(template),
            "processes": self.accelerator.num_processes,
            **{name: getattr(args, name) for name in TRAINING_SETTINGS},
        }
        if self.lora.enabled:
            run_inputs["lora"] = self.lora.settings()
        resumption = training.resume_or_refuse(
            self.checkpoints,
            run_inputs,
            args.resume,
            summary_path=self.summary_path,
            other_inputs=lambda changes: (
                f"{args.output_dir} holds a verifier run made with other inputs ({changes}): pass --resume False to "
                "train afresh (it is replaced) or another --output_dir"
            ),
        )
        finished = (
            f"{args.output_dir} holds a verifier trained on these inputs: nothing to do (--resume False trains again)"
        )
        if resumption.nothing_to_do(self.say, finished):
            return None
        self.load(template)
        progress = self.start(resumption, run_inputs)
        self.loop(progress)
        return self.evaluate_and_save(progress)

    # ---- set-up ---------------------------------------------------------------------------------
    def load(self, template: str) -> None:
        """The backbone, the examples encoded, the class weights; the loaders, AdamW and the schedule, prepared."""
        args, accelerator = self.args, self.accelerator
        train_set, held_out = self.train_set, self.held_out
        half_precision = accelerator.mixed_precision in ("bf16", "fp16")
        model, self.tokenizer = load_backbone(args.model_path, args.gradient_checkpointing, half_precision)
        if self.lora.enabled:
            head = [name for name in HEAD_NAMES if hasattr(model, name)]
            model = add_adapters(model, self.lora, "SEQ_CLS", modules_to_save=head, say=self.say)
        encode(train_set, self.tokenizer, template, args.max_length)
        encode(held_out, self.tokenizer, template, args.max_length)
        n_correct = sum(e["label"] for e in train_set)
        if args.class_balance == "weighted" and 0 < n_correct < len(train_set):
            class_weights = torch.tensor(
                [len(train_set) / (2 * (len(train_set) - n_correct)), len(train_set) / (2 * n_correct)]
            )
        else:
            class_weights = torch.ones(2)
        self.train_share_correct = round(n_correct / len(train_set), 4)
        self.say(
            f"verifier data: {len(self.examples)} examples ({self.skipped} without a verdict skipped) -> "
            f"{len(train_set)} train ({n_correct} correct) / {len(held_out)} held out; class weights "
            f"{[round(w, 3) for w in class_weights.tolist()]}"
        )
        if args.exam_items:
            counts = self.source_counts()
            self.say(
                f"sources: {counts[SEARCH]} search verdicts, {counts[EXAM]} exam pairs "
                f"({counts[EXAM] / len(self.examples):.0%} exam); grouped by reference answer for the split"
            )

        generator = torch.Generator().manual_seed(args.seed)
        collate_batch = collate(self.tokenizer.pad_token_id)
        train_loader = torch.utils.data.DataLoader(
            train_set, batch_size=args.train_bsz_per_gpu, shuffle=True, generator=generator, collate_fn=collate_batch
        )
        eval_loader = torch.utils.data.DataLoader(held_out, batch_size=args.eval_bsz_per_gpu, collate_fn=collate_batch)
        steps_per_epoch = math.ceil(
            len(train_set) / (args.train_bsz_per_gpu * accelerator.num_processes * args.gradient_accumulation_steps)
        )
        self.total_steps = args.max_steps or steps_per_epoch * args.n_epochs
        self.n_epochs = math.ceil(self.total_steps / steps_per_epoch)
        optimizer = torch.optim.AdamW(
            parameter_groups(model, args.weight_decay, args.learning_rate, args.head_learning_rate),
            lr=args.learning_rate,
        )
        self.model, self.optimizer, self.train_loader, self.eval_loader = accelerator.prepare(
            model, optimizer, train_loader, eval_loader
        )
        # stepped once per optimizer step
        self.scheduler = training.make_schedule(
            accelerator, "cosine", self.optimizer, int(args.warmup_rates * self.total_steps), self.total_steps
        )
        if self.trackers:
            accelerator.init_trackers(
                "train_verifier",
                config={k: v for k, v in asdict(args).items() if isinstance(v, (int, float, str, bool))},
            )
        self.class_weights = class_weights.to(accelerator.device)

    def start(self, resumption: training.Resumption, run_inputs: dict) -> dict:
        """The run's state (trainer_state.json): fresh, the earlier run's checkpoint removed first (--resume False),
        or restored from the checkpoint to resume; with the held-out scores before training."""
        args, accelerator = self.args, self.accelerator
        if resumption.replaced:
            self.say(f"--resume False: removing the checkpoint of the earlier run in {args.output_dir}")
            self.checkpoints.remove_all(accelerator)
        progress = {"epoch": 0, "step": 0, "log": [], "inputs": run_inputs}
        if resumption.action == "resume":
            progress = training.Checkpoints.load(accelerator, resumption.checkpoint)
            progress["inputs"] = run_inputs
            self.say(f"resumed after epoch {progress['epoch']} (step {progress['step']})")
        if progress.get("heldout_before") is None and args.eval_before_training:
            p_correct = predict(accelerator, self.model, self.eval_loader, len(self.held_out))
            progress["heldout_before"] = held_out_report(p_correct, self.held_out, args.threshold)[0]
            self.say(f"held-out before training: {json.dumps(progress['heldout_before'])}")
        return progress

    # ---- the loop -------------------------------------------------------------------------------
    def loop(self, progress: dict) -> None:
        """The epochs from the saved one on, until total_steps optimizer steps; the progress moves with them."""
        args, accelerator, model = self.args, self.accelerator, self.model
        bar = tqdm(
            total=self.total_steps,
            initial=progress["step"],
            desc="verifier",
            disable=not accelerator.is_local_main_process,
        )
        running = []
        self.timer = training.LoopTimer()
        self.tokens_seen = torch.zeros(2, device=accelerator.device)  # real, processed (padding included) tokens
        for epoch in range(progress["epoch"], self.n_epochs):
            self.train_loader.set_epoch(epoch)
            for batch in self.train_loader:
                with accelerator.accumulate(model):
                    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                    loss = F.cross_entropy(logits.float(), batch["labels"], weight=self.class_weights)
                    accelerator.backward(loss)
                    training.optimizer_step(accelerator, model, self.optimizer, args.max_grad_norm)
                running.append(loss.item())
                n_real, n_processed = int(batch["attention_mask"].sum()), batch["input_ids"].numel()
                self.tokens_seen += torch.tensor(
                    [n_real, n_processed], dtype=torch.float, device=self.tokens_seen.device
                )
                if not accelerator.sync_gradients:
                    continue
                self.scheduler.step()
                progress["step"] += 1
                self.timer.step(self.tokens_seen)
                bar.update(1)
                if progress["step"] % args.logging_steps == 0 or progress["step"] == self.total_steps:
                    entry = {
                        "step": progress["step"],
                        "epoch": epoch,
                        "loss": round(sum(running) / len(running), 4),
                        "lr": self.scheduler.get_last_lr()[0],
                    }
                    progress["log"].append(entry)
                    accelerator.log({"train/loss": entry["loss"], "train/lr": entry["lr"]}, step=entry["step"])
                    bar.set_postfix(loss=entry["loss"])
                    running = []
                if progress["step"] >= self.total_steps:
                    break
            progress["epoch"] = epoch + 1
            if progress["step"] >= self.total_steps:
                break
            if args.save_epoch_state:
                with self.timer.paused():
                    self.checkpoints.save(accelerator, model, self.tokenizer, progress["step"], progress)
        bar.close()

    # ---- the check and the outputs ----------------------------------------------------------------
    def evaluate_and_save(self, progress: dict) -> dict:
        """The held-out split scored, the verifier saved in output_dir with heldout_predictions.json and
        train_log.json; returns what verifier_summary.json holds (every process must call this)."""
        args, accelerator, held_out = self.args, self.accelerator, self.held_out
        throughput = self.timer.summary(accelerator, self.tokens_seen, ("real", "processed"))
        p_correct = predict(accelerator, self.model, self.eval_loader, len(held_out))
        after, baseline, agreement = held_out_report(p_correct, held_out, args.threshold)
        training.save_model_folder(
            accelerator, self.model, self.tokenizer, args.output_dir, merge_lora=self.lora.merge_lora
        )
        summary = {
            "output_dir": os.path.abspath(args.output_dir),
            "backbone": args.model_path,
            "data_path": self.data.data_path,
            "n_examples": len(self.examples),
            "n_skipped_without_verdict": self.skipped,
            "n_train": len(self.train_set),
            "n_held_out": len(held_out),
            "train_share_correct": self.train_share_correct,
            "held_out_share_correct": round(sum(e["label"] for e in held_out) / len(held_out), 4),
            "threshold": args.threshold,
            "steps": progress["step"],
            "first_loss": progress["log"][0]["loss"] if progress["log"] else None,
            "last_loss": progress["log"][-1]["loss"] if progress["log"] else None,
            # the training loop's time this run (checkpoint saving left out), and the rate from the second step on
            "throughput": throughput,
            "heldout_before": progress.get("heldout_before"),
            "heldout": after,
            "baseline": baseline,
            "verifier_vs_baseline_agreement": agreement,
            **self.by_source(p_correct),
            "arguments": {**asdict(args), **asdict(self.data), **(asdict(self.lora) if self.lora.enabled else {})},
            "inputs": progress["inputs"],
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
                    for e, x in zip(held_out, p_correct.tolist())
                ],
            )
            write_json_atomic(os.path.join(args.output_dir, "train_log.json"), progress["log"])
        return summary

    def source_counts(self) -> dict[str, int]:
        """How many examples came from each source (--data_path's verdicts, --exam_items' pairs)."""
        return {source: sum(e["source"] == source for e in self.examples) for source in (SEARCH, EXAM)}

    def by_source(self, p_correct: torch.Tensor) -> dict:
        """With --exam_items: each source's examples and share, and the held-out figures of each (else nothing)."""
        if not self.args.exam_items:
            return {}
        sources, held_out = {}, {}
        for source, count in self.source_counts().items():
            sources[source] = {"examples": count, "share": round(count / len(self.examples), 4)}
            rows = [i for i, e in enumerate(self.held_out) if e["source"] == source]
            if rows:
                after, baseline, agreement = held_out_report(
                    p_correct[rows], [self.held_out[i] for i in rows], self.args.threshold
                )
                held_out[source] = {"n": len(rows), "verifier": after, "baseline": baseline, "agreement": agreement}
        return {"sources": sources, "heldout_by_source": held_out}

    def remove_checkpoints(self) -> None:
        """Once the verifier is trained and its summary written: nothing is left to resume."""
        self.checkpoints.remove_all(self.accelerator)

    def end_training(self) -> None:
        """accelerate's trackers and process groups: nothing collective after this."""
        self.accelerator.end_training()
