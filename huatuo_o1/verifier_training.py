"""What train_verifier.py and score_verifier.py share: verdict data, the split, the string-match
baseline, the metrics, the backbone with a distinct pad token, predictions on held-out examples.

The verifier's input text and the reward are huatuo_o1.verifier's (RL reads the same text).
"""

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from huatuo_o1.models import attn_implementation, distinct_pad_token, from_pretrained_or_explain
from huatuo_o1.records import REFERENCE_ANSWER, VERDICT, VERIFICATIONS, VERIFIED_RESPONSE, InputError, load_records
from huatuo_o1.training import pad
from huatuo_o1.verifier import verifier_input

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
        metadata={
            "help": "Search-stage records (items with 'verifications') or flat rows: local .json/.jsonl or a hub id."
        }
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
    """AdamW groups: no decay for biases and norms; the new classification head at --head_learning_rate."""
    groups = {}
    for name, parameter in model.named_parameters():
        head = name.split(".")[0] in HEAD_NAMES
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
