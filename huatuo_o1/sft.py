"""SFT's own logic: rows -> tokens and loss labels as the original built them, random micro-batches, the loss
(and the same rows as trl's prompt-completion records, for the benches that compare trl's SFTTrainer).

SFT_stage1.py wires these to the training toolkit (huatuo_o1.training).
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import DataCollatorWithFlattening, PreTrainedTokenizerBase

from huatuo_o1.answer_format import assistant_turn
from huatuo_o1.records import SFT_COT, SFT_FIELDS, SFT_QUESTION, SFT_RESPONSE, InputError
from huatuo_o1.training import pad

# Length grouping sorts this many global batches at a time: more means less padding, less randomness.
GROUP_BATCHES = 64
# The original's weight-decay rule, matched case-sensitively: biases are not decayed; Llama and Qwen2 name their
# norms "...layernorm.weight" / "norm.weight", so their norm weights are decayed, as they were there.
NO_DECAY = ("bias", "LayerNorm.weight")


# ----------------------------------------------------------------------------------------------
# Data: chat text -> token ids and labels (-100 on everything the model should not learn to write)


def tokenize_example(tokenizer: PreTrainedTokenizerBase, question: str, answer: str) -> dict:
    """input_ids and labels for one chat, built as the original built them.

    The whole chat (user turn, assistant turn) is rendered by the model's chat template and tokenized
    in one piece; the prompt alone (user turn plus the generation prompt) is tokenized too, and its
    length is how many leading tokens get label -100. Every token after that is learned: the
    assistant text, its end-of-turn token and whatever the template writes after it (ChatML's "\\n").
    The texts go to the template exactly as given: a template that trims message content (Llama-3.x
    does) trims them there, as it did for the original.
    """
    user = {"role": "user", "content": question}
    prompt = tokenizer.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
    chat = tokenizer.apply_chat_template([user, {"role": "assistant", "content": answer}], tokenize=False)
    if not chat.startswith(prompt):
        raise ValueError("the chat template renders the prompt differently inside a full conversation; cannot mask it")
    input_ids = tokenizer(chat, add_special_tokens=False)["input_ids"]
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    labels = [-100] * n_prompt + input_ids[n_prompt:]
    return {"input_ids": input_ids, "labels": labels, "n_prompt": n_prompt}


def build_examples(
    rows: list[dict],
    tokenizer: PreTrainedTokenizerBase,
    max_seq_len: int,
    overlong: str,
    source: str,
    show_progress: bool = True,
) -> tuple[list[dict], int]:
    """Tokenized examples and the number of over-long rows (dropped, cut at the end, or cut at the start)."""
    examples, n_overlong = [], 0
    for index, row in enumerate(tqdm(rows, desc="tokenizing", disable=not show_progress)):
        for name in SFT_FIELDS:
            if name not in row:
                raise InputError(
                    f"{source}: row {index} lacks the field '{name}' (SFT rows need {', '.join(SFT_FIELDS)})"
                )
            if not isinstance(row[name], str) or not row[name].strip():
                raise InputError(f"{source}: row {index} has an empty or non-text '{name}'")
        # The stored texts exactly, whitespace included: the original did not strip them either.
        example = tokenize_example(tokenizer, row[SFT_QUESTION], assistant_turn(row[SFT_COT], row[SFT_RESPONSE]))
        if len(example["input_ids"]) > max_seq_len:
            n_overlong += 1
            if overlong == "drop" or (overlong == "truncate" and example["n_prompt"] >= max_seq_len):
                continue
            # truncate: keep the start (the whole question, the answer cut); keep_last: the original's cut
            kept = slice(None, max_seq_len) if overlong == "truncate" else slice(-max_seq_len, None)
            example["input_ids"], example["labels"] = example["input_ids"][kept], example["labels"][kept]
        examples.append({"input_ids": example["input_ids"], "labels": example["labels"]})
    return examples, n_overlong


def prompt_completion_rows(rows: list[dict]) -> list[dict]:
    """SFT rows as trl's conversational prompt-completion records: the user's question, the assistant's turn.

    The same chat tokenize_example renders, for trl's SFTTrainer (the benches compare it with ours).
    """
    return [
        {
            "prompt": [{"role": "user", "content": row[SFT_QUESTION]}],
            "completion": [{"role": "assistant", "content": assistant_turn(row[SFT_COT], row[SFT_RESPONSE])}],
        }
        for row in rows
    ]


def stop_token_ids(
    tokenizer: PreTrainedTokenizerBase, example: dict, eos_token_id: int | list[int] | None
) -> list[int]:
    """Generation stop ids: the model's eos plus the special token that ends the learned turn.

    They differ for a base model given the Llama-3 layout (eos <|end_of_text|>, turns end with
    <|eot_id|>); without this the fine-tuned model would not stop after its answer. The turn's end is
    the last learned special token (ChatML writes a plain "\\n" after it).
    """
    stop = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    added = tokenizer.get_added_vocab()
    learned = [t for t, label in zip(example["input_ids"], example["labels"]) if label != -100]
    end_of_turn = next((t for t in reversed(learned) if tokenizer.convert_ids_to_tokens(t) in added), None)
    if end_of_turn is not None and end_of_turn not in stop:
        stop.append(end_of_turn)
    return stop


class EpochSampler(torch.utils.data.Sampler):
    """A fresh seeded order each epoch; with group_size, similar lengths end up next to each other.

    Grouping shuffles, cuts the order into groups of `group_size` examples, sorts each group by
    length and shuffles the resulting batches, so batches stay random but carry little padding.
    """

    def __init__(self, lengths, seed, batch_size=1, group_size=0):
        self.lengths, self.seed, self.batch_size, self.group_size = lengths, seed, batch_size, group_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        if self.group_size:
            groups = [order[i : i + self.group_size] for i in range(0, len(order), self.group_size)]
            order = [i for group in groups for i in sorted(group, key=lambda i: -self.lengths[i])]
            batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
            # The longest batch first, so an out-of-memory error shows up at once; the rest shuffled.
            longest = max(range(len(batches)), key=lambda b: self.lengths[batches[b][0]])
            rest = [batches[b] for b in torch.randperm(len(batches), generator=generator).tolist() if b != longest]
            order = [i for batch in [batches[longest]] + rest for i in batch]
        return iter(order)


def pad_collate(pad_token_id: int) -> Callable[[list[dict]], dict]:
    """Right-pad a micro-batch to its longest example; padding is masked in attention and labels."""

    def collate(features):
        ids = [f["input_ids"] for f in features]
        return {
            "input_ids": pad(ids, pad_token_id),
            "labels": pad([f["labels"] for f in features], -100),
            "attention_mask": pad([[1] * len(i) for i in ids], 0),
        }

    return collate


def make_loader(
    examples: list[dict],
    batch_size: int,
    seed: int,
    batching: str,
    pad_token_id: int,
    num_processes: int,
    use_flash_attention: bool,
) -> torch.utils.data.DataLoader:
    """DataLoader for one process: batch_size examples per micro-batch; `batching` as SFT_stage1.py's flag."""
    lengths = [len(e["input_ids"]) for e in examples]
    # Groups span many micro-batches of every process, so the processes' batches stay alike too.
    group_size = batch_size * num_processes * GROUP_BATCHES if batching == "length_grouped" else 0
    sampler = EpochSampler(lengths, seed, batch_size * num_processes, group_size)
    if batching == "padding_free":
        collate = DataCollatorWithFlattening(return_flash_attn_kwargs=use_flash_attention)
    else:
        collate = pad_collate(pad_token_id)
    return torch.utils.data.DataLoader(examples, batch_size=batch_size, sampler=sampler, collate_fn=collate)


def next_token_loss(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over the learned tokens of a micro-batch (padded or flattened), the number
    of them predicted right (argmax), and their count."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    # use_cache=False also lets transformers see packed examples in the position ids
    logits = model(**inputs, use_cache=False).logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
    learned = targets != -100
    with torch.no_grad():
        n_correct = ((logits.argmax(-1) == targets) & learned).sum()
    return loss, n_correct, learned.sum()


def weight_decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups with the original's no-decay rule (NO_DECAY)."""
    decayed = [p for n, p in model.named_parameters() if not any(k in n for k in NO_DECAY)]
    kept = [p for n, p in model.named_parameters() if any(k in n for k in NO_DECAY)]
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": kept, "weight_decay": 0.0}]
