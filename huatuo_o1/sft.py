"""SFT: rows -> tokens and loss labels as the original built them, random micro-batches, the loss (and the same
rows as trl's prompt-completion records, for the benches that compare trl's SFTTrainer); SFT_stage1.py's flags and
its trainer (SupervisedTrainer, on the training toolkit huatuo_o1.training).
"""

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, DataCollatorWithFlattening, PreTrainedTokenizerBase

from huatuo_o1 import cli, manifests, training
from huatuo_o1.answer_format import assistant_turn
from huatuo_o1.lora import LoRAArguments, add_adapters
from huatuo_o1.models import attn_implementation, from_pretrained_or_explain, load_chat_tokenizer
from huatuo_o1.records import SFT_COT, SFT_FIELDS, SFT_QUESTION, SFT_RESPONSE, InputError, digest
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
    """AdamW parameter groups of the trained parameters (all of them, or LoRA's adapters) with the original's
    no-decay rule (NO_DECAY)."""
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decayed = [p for n, p in trained if not any(k in n for k in NO_DECAY)]
    kept = [p for n, p in trained if any(k in n for k in NO_DECAY)]
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": kept, "weight_decay": 0.0}]


# ----------------------------------------------------------------------------------------------
# The flags and the trainer

# The settings a resumed run must share with the run it continues (with the data, the model and the process count).
TRAINING_SETTINGS = (
    "max_seq_len",
    "overlong",
    "n_epochs",
    "train_bsz_per_gpu",
    "gradient_accumulation_steps",
    "learning_rate",
    "warmup_rates",
    "weight_decay",
    "seed",
    "batching",
)


@dataclass
class SFTArguments:
    """SFT_stage1.py's flags."""

    model_path: str = field(metadata={"help": "Hugging Face model id or local folder of the model to fine-tune."})
    data_path: str = field(
        metadata={
            "help": "Local .json/.jsonl list of {Question, Complex_CoT, Response} or a hub dataset id "
            "(FreedomIntelligence/medical-o1-reasoning-SFT; append ':config' for another configuration)."
        }
    )
    experiment_name: str = field(default="sft_stage1", metadata={"help": "Names the checkpoint and log folders."})
    output_dir: str = field(default="./ckpts", metadata={"help": "Checkpoints go to <output_dir>/<experiment_name>/."})
    max_ckpts: int = field(default=2, metadata={"help": "Keep at most this many checkpoints (oldest deleted first)."})
    log_dir: str = field(
        default="./train_logs",
        metadata={"help": "wandb / tensorboard logs and <experiment_name>.jsonl (one line per optimizer step)."},
    )
    max_seq_len: int = field(default=8192, metadata={"help": "Longest tokenized example (prompt + answer)."})
    gradient_accumulation_steps: int = field(default=8)
    train_bsz_per_gpu: int = field(default=2, metadata={"help": "Examples per micro-batch on each process."})
    weight_decay: float = field(default=0.1)
    learning_rate: float = field(default=5e-6)
    warmup_rates: float = field(default=0.05, metadata={"help": "Share of optimizer steps spent warming up."})
    n_epochs: int = field(default=3)
    seed: int = field(default=42)
    gradient_checkpointing: bool = field(
        default=True, metadata={"help": "Recompute activations (the original always did)."}
    )
    overlong: str = field(
        default="drop",
        metadata={
            "help": "Examples longer than max_seq_len: 'drop' them (counted and reported), 'truncate' the "
            "answer's end (the question is always kept whole), or 'keep_last' max_seq_len tokens (the "
            "original's cut, which loses the start of the question).",
            "choices": ["drop", "truncate", "keep_last"],
        },
    )
    batching: str = field(
        default="auto",
        metadata={
            "help": "'padding_free' (random micro-batches, each flattened; per-example attention via position "
            "ids), 'padded' (the original: random micro-batches padded to their longest), 'length_grouped' "
            "(similar lengths share a micro-batch: less padding, but it reweights examples in the loss), "
            "'auto' (padding_free with FlashAttention-2, else padded).",
            "choices": ["auto", "padding_free", "length_grouped", "padded"],
        },
    )
    save_steps: int = field(default=0, metadata={"help": "Also save every N optimizer steps (0: only each epoch)."})
    max_steps: int = field(
        default=0, metadata={"help": "Stop (and save) after this many optimizer steps in total (0: no limit)."}
    )
    save_training_state: bool = field(
        default=True,
        metadata={
            "help": "Keep optimizer, scheduler and random state in the newest checkpoint so a rerun resumes "
            "(about 3x the model's fp32 size); False saves only the model and tokenizer."
        },
    )
    max_grad_norm: float = field(
        default=1.0,
        metadata={
            "help": "Clip the gradient norm at each optimizer step (DeepSpeed's gradient_clipping is set from it, "
            "whatever the accelerate config file says); 0 turns clipping off. The original clipped at 1.0."
        },
    )
    resume: bool = training.resume_flag(
        "Continue from the newest checkpoint of this experiment if there is one (a run made with other data or "
        "settings is refused, a finished one left as it is); False starts afresh and first removes the experiment's "
        "checkpoints."
    )
    report_to: str = training.report_to_flag("none, wandb or tensorboard (the original forced wandb).")
    verify_checkpoints: str = training.verify_flag()

    def __post_init__(self):
        cli.check_ranges(
            self,
            at_least_1=("train_bsz_per_gpu", "gradient_accumulation_steps", "n_epochs", "max_seq_len", "max_ckpts"),
            at_least_0=("save_steps", "max_steps", "max_grad_norm", "weight_decay"),
            above_0=("learning_rate",),
            shares=("warmup_rates",),
        )


SUMMARY = "training_summary.json"
OVERLONG_VERBS = {
    "drop": "dropped",
    "truncate": "truncated (end of the answer cut)",
    "keep_last": "cut to their last tokens (the original's way)",
}


class SupervisedTrainer:
    """SFT_stage1.py's training: a causal LM fine-tuned on the rows' chats, resumable, on accelerate (+ DeepSpeed).

    Named apart from trl's SFTTrainer, which the benches import beside this module (why we keep our own loop:
    docs/design.md). It owns the accelerator (and through it DeepSpeed, when the launch's config asks for it); the
    model, its AdamW optimizer (the original's no-decay rule, `weight_decay_groups`) and cosine schedule; the random
    micro-batches (`make_loader`); the checkpoints <output_dir>/<experiment_name>/checkpoint-<step>/ and the log
    <log_dir>/<experiment_name>.jsonl (one line per optimizer step).

    `train(rows)`:
      1. `resume_or_refuse`: an earlier run in the folder is resumed when its inputs (the data, the model, the process
         count, TRAINING_SETTINGS) were these, refused when they were not, left as it is when finished;
      2. `load`: the rows tokenized (`build_examples`, over-long ones handled by --overlong), the model loaded with
         its attention kernel and batching, prepared with the loader, the optimizer and the schedule;
      3. `start`: an earlier run's checkpoints removed (--resume False), or its state restored;
      4. `loop`: per micro-batch `next_token_loss` and backward; per optimizer step clipping, the optimizer and the
         schedule (stepped once per optimizer step), the mean loss and token accuracy logged; a checkpoint at each
         epoch's end, every --save_steps, and at --max_steps, where the run stops;
      5. `summary`: the final checkpoint, the losses, the token counts and the loop's throughput.

    Saved state: trainer_state.json (global_step, epoch, batches_done_in_epoch, the history, the inputs) in every
    checkpoint; accelerate's (model, optimizer, schedule, random generators) in the newest one, all a rerun needs:
    the batches skipped in the interrupted epoch follow from the epoch's seeded order.

    With --lora_r (`lora`): the model gets LoRA adapters (huatuo_o1/lora.py), the only weights trained; each
    checkpoint holds the merged model (--merge_lora, the default) and the adapter in adapter/.
    """

    def __init__(self, args: SFTArguments, lora: LoRAArguments | None = None):
        """The accelerator (with --report_to's trackers, checked first), the seed, the checkpoints; nothing loads.
        lora: the LoRA flags (None: off)."""
        self.args = args
        self.lora = lora or LoRAArguments()
        self.run_dir = os.path.join(args.output_dir, args.experiment_name)
        self.log_path = os.path.join(args.log_dir, f"{args.experiment_name}.jsonl")
        trackers = training.trackers([args.report_to], "SFT_stage1.py")
        self.accelerator = training.make_accelerator(
            micro_batch_size=args.train_bsz_per_gpu,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            max_grad_norm=args.max_grad_norm,
            log_with=trackers,
            project_dir=args.log_dir,
        )
        set_seed(args.seed)
        self.checkpoints = training.Checkpoints(
            self.run_dir,
            keep=args.max_ckpts,
            verify=manifests.verify_mode(args.verify_checkpoints),
            merge_lora=self.lora.merge_lora,
        )
        self.say = self.accelerator.print

    def train(self, rows: list[dict]) -> dict | None:
        """Train on the rows, or continue the run in the folder; the summary, or None when it is finished already."""
        args = self.args
        run_inputs = {
            "data": digest(rows),
            "model_path": args.model_path,
            "processes": self.accelerator.num_processes,
            **{name: getattr(args, name) for name in TRAINING_SETTINGS},
        }
        if self.lora.enabled:
            run_inputs["lora"] = self.lora.settings()
        resumption = self.resume_or_refuse(run_inputs)
        finished = (
            f"{self.run_dir} holds a finished run of these inputs ({resumption.checkpoint}): nothing to do "
            "(--resume False trains again from the start)"
        )
        if resumption.nothing_to_do(self.say, finished):
            return None
        self.load(rows)
        state = self.start(resumption, run_inputs)
        self.loop(state)
        return self.summary(state)

    def resume_or_refuse(self, run_inputs: dict) -> training.Resumption:
        """training.resume_or_refuse with SFT's rule for a finished run and its wording."""
        advice = "or another --output_dir / --experiment_name"
        return training.resume_or_refuse(
            self.checkpoints,
            run_inputs,
            self.args.resume,
            is_finished=lambda state: state["epoch"] >= self.args.n_epochs,
            other_inputs=lambda changes: (
                f"{self.run_dir} holds a run made with other inputs ({changes}): pass --resume False to start afresh "
                f"(its checkpoints are removed) {advice}"
            ),
            unresumable=lambda checkpoint: (
                f"{checkpoint} cannot be resumed (saved without training state, --save_training_state False): pass "
                f"--resume False to start afresh (the checkpoints are removed) {advice}"
            ),
        )

    # ---- set-up ---------------------------------------------------------------------------------
    def load(self, rows: list[dict]) -> None:
        """The examples, the model, and what accelerate prepares with it: the loader, AdamW, the schedule."""
        args, accelerator = self.args, self.accelerator
        self.tokenizer = load_chat_tokenizer(args.model_path)
        self.examples, self.n_overlong = build_examples(
            rows,
            self.tokenizer,
            args.max_seq_len,
            args.overlong,
            args.data_path,
            show_progress=accelerator.is_local_main_process,
        )
        if not self.examples:
            raise InputError(f"every example of {args.data_path} is longer than --max_seq_len {args.max_seq_len}")
        self.say(
            f"{len(rows)} rows, {len(self.examples)} examples; {self.n_overlong} longer than {args.max_seq_len} "
            f"tokens {OVERLONG_VERBS[args.overlong]}"
        )
        model = self.load_model()
        # Only padded batches use a pad id, and padding is masked everywhere; the saved tokenizer keeps its own.
        tokenizer = self.tokenizer
        pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        loader = make_loader(
            self.examples,
            args.train_bsz_per_gpu,
            args.seed,
            self.batching,
            pad_token_id,
            accelerator.num_processes,
            self.attention == "flash_attention_2",
        )
        optimizer = torch.optim.AdamW(weight_decay_groups(model, args.weight_decay), lr=args.learning_rate)
        self.model, self.optimizer, self.loader = accelerator.prepare(model, optimizer, loader)
        self.steps_per_epoch = math.ceil(len(self.loader) / args.gradient_accumulation_steps)
        self.total_steps = self.steps_per_epoch * args.n_epochs
        # stepped once per optimizer step
        self.scheduler = training.make_schedule(
            accelerator, "cosine", self.optimizer, int(args.warmup_rates * self.total_steps), self.total_steps
        )

    def load_model(self) -> torch.nn.Module:
        """The model in the precision and with the attention kernel the launch allows (bf16 weights only under
        DeepSpeed's bf16), stopping at the learned turn's end too; and the batching that kernel suits."""
        args, accelerator = self.args, self.accelerator
        use_deepspeed = accelerator.state.deepspeed_plugin is not None
        dtype = torch.bfloat16 if use_deepspeed and accelerator.mixed_precision == "bf16" else torch.float32
        self.attention = attn_implementation(half_precision=accelerator.mixed_precision in ("bf16", "fp16"))
        self.batching = args.batching
        if self.batching == "auto":
            self.batching = "padding_free" if self.attention == "flash_attention_2" else "padded"
        model = from_pretrained_or_explain(
            AutoModelForCausalLM, args.model_path, dtype=dtype, attn_implementation=self.attention
        )
        model.generation_config.eos_token_id = stop_token_ids(
            self.tokenizer, self.examples[0], model.generation_config.eos_token_id
        )
        if args.gradient_checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # the name from transformers 5.x on
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.lora.enabled:
            model = add_adapters(model, self.lora, "CAUSAL_LM", adapters_in_model_dtype=use_deepspeed, say=self.say)
        return model

    def start(self, resumption: training.Resumption, run_inputs: dict) -> dict:
        """The run's state (trainer_state.json): fresh, the earlier run's checkpoints removed first (--resume False),
        or restored from the checkpoint to resume. The trackers start here."""
        args, accelerator = self.args, self.accelerator
        if resumption.replaced:
            self.say(
                f"--resume False: removing the {len(resumption.replaced)} checkpoint(s) of the earlier run in "
                f"{self.run_dir}"
            )
            self.checkpoints.remove_all(accelerator)
        state = {"global_step": 0, "epoch": 0, "batches_done_in_epoch": 0, "history": [], "inputs": run_inputs}
        if resumption.action == "resume":
            state = training.Checkpoints.load(accelerator, resumption.checkpoint)
            state["inputs"] = run_inputs
            self.say(
                f"resuming from {resumption.checkpoint} at optimizer step {state['global_step']} "
                f"(epoch {state['epoch']})"
            )
        accelerator.init_trackers(args.experiment_name, config=asdict(args))
        self.say(
            f"batching: {self.batching}, attention: {self.attention}, {accelerator.num_processes} process(es), "
            f"{self.steps_per_epoch} optimizer steps per epoch, {self.total_steps} in all"
        )
        return state

    # ---- the loop -------------------------------------------------------------------------------
    def loop(self, state: dict) -> None:
        """The epochs from the state's position on, until the last or --max_steps; the state moves with them."""
        args, accelerator, model, loader = self.args, self.accelerator, self.model, self.loader
        model.train()
        progress = tqdm(
            total=self.total_steps,
            initial=state["global_step"],
            desc="sft",
            disable=not accelerator.is_local_main_process,
        )
        sums = torch.zeros(4, device=accelerator.device)  # loss x micro-batches, correct, label tokens, micro-batches
        self.tokens_seen = torch.zeros(2, device=accelerator.device)  # real, processed (padding included) tokens
        self.final_path = None
        self.timer = training.LoopTimer()
        stop = False
        for epoch in range(state["epoch"], args.n_epochs):
            loader.set_epoch(epoch)
            skip = state["batches_done_in_epoch"] if epoch == state["epoch"] else 0
            epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
            for batch_index, batch in enumerate(epoch_loader, start=skip):
                with accelerator.accumulate(model):
                    loss, n_correct, n_learned = next_token_loss(model, batch)
                    accelerator.backward(loss)
                    training.optimizer_step(accelerator, model, self.optimizer, args.max_grad_norm)
                with torch.no_grad():
                    sums += torch.stack(
                        [loss.detach(), n_correct.float(), n_learned.float(), torch.ones((), device=sums.device)]
                    )
                    n_processed = batch["input_ids"].numel()
                    n_real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else n_processed
                    self.tokens_seen += torch.tensor(
                        [n_real, n_processed], dtype=torch.float, device=self.tokens_seen.device
                    )
                if not accelerator.sync_gradients:
                    continue
                # the rate this update used, as the (DeepSpeed) optimizer sees it
                lr = self.optimizer.param_groups[0]["lr"]
                self.scheduler.step()
                total = accelerator.reduce(sums, reduction="sum")
                sums.zero_()
                state["global_step"] += 1
                state["epoch"], state["batches_done_in_epoch"] = epoch, batch_index + 1
                record = {
                    "step": state["global_step"],
                    "epoch": epoch + (batch_index + 1) / len(loader),
                    "loss": round((total[0] / total[3]).item(), 6),
                    "token_accuracy": round((total[1] / total[2].clamp(min=1)).item(), 6),
                    "lr": lr,
                }
                state["history"].append(record)
                self.timer.step(self.tokens_seen)
                self.log(record, progress)
                stop = bool(args.max_steps) and state["global_step"] >= args.max_steps
                end_of_epoch = batch_index + 1 == len(loader)
                if end_of_epoch:
                    state["epoch"], state["batches_done_in_epoch"] = epoch + 1, 0
                if end_of_epoch or stop or (args.save_steps and state["global_step"] % args.save_steps == 0):
                    with self.timer.paused():
                        self.final_path = self.checkpoints.save(
                            accelerator,
                            model,
                            self.tokenizer,
                            state["global_step"],
                            state,
                            with_training_state=args.save_training_state,
                        )
                    self.say(f"saved {self.final_path}")
                if stop:
                    break
            if stop:
                break
        progress.close()

    def log(self, record: dict, progress: tqdm) -> None:
        """An optimizer step's figures to the trackers, the progress bar and the log file."""
        self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])
        progress.update(1)
        progress.set_postfix(
            loss=f"{record['loss']:.4f}", acc=f"{record['token_accuracy']:.3f}", lr=f"{record['lr']:.2e}"
        )
        if self.accelerator.is_main_process:
            os.makedirs(self.args.log_dir, exist_ok=True)
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def summary(self, state: dict) -> dict:
        """What training_summary.json holds (every process must call this: the counts are summed)."""
        accelerator = self.accelerator
        throughput = self.timer.summary(accelerator, self.tokens_seen, ("real", "processed"))
        tokens = accelerator.reduce(self.tokens_seen, reduction="sum")
        final_path = self.final_path
        if final_path is None:
            existing = self.checkpoints.list()
            final_path = existing[-1] if existing else None
        history = state["history"]
        return {
            "final_checkpoint": os.path.abspath(final_path) if final_path else None,
            "finished": state["epoch"] >= self.args.n_epochs,
            "optimizer_steps": state["global_step"],
            "first_loss": history[0]["loss"] if history else None,
            "last_loss": history[-1]["loss"] if history else None,
            "examples": len(self.examples),
            "overlong": self.n_overlong,
            "overlong_policy": self.args.overlong,
            "batching": self.batching,
            "real_tokens_this_run": int(tokens[0].item()),
            "processed_tokens_this_run": int(tokens[1].item()),
            # the training loop's time this run (checkpoint saving left out), and the rate from the second step on
            "throughput": throughput,
            **self.lora_summary(),
            "history": history,
        }

    def lora_summary(self) -> dict:
        """With --lora_r: {"lora": its settings, the parameters trained and in all, whether checkpoints hold the
        merged model}; else nothing."""
        if not self.lora.enabled:
            return {}
        trained, total = self.accelerator.unwrap_model(self.model).get_nb_trainable_parameters()
        return {
            "lora": {
                **self.lora.settings(),
                "trained_parameters": trained,
                "parameters": total,
                "merged": self.lora.merge_lora,
            }
        }

    def end_training(self) -> None:
        """accelerate's trackers and process groups: nothing collective after this."""
        self.accelerator.end_training()
