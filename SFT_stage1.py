"""Stage 1 of HuatuoGPT-o1: supervised fine-tuning on complex reasoning traces.

Each row (`Question`, `Complex_CoT`, `Response`) becomes a two-turn chat: the user asks `Question`,
the assistant answers `## Thinking\\n\\n{Complex_CoT}\\n\\n## Final Response\\n\\n{Response}`
(templates/sft/assistant_turn.txt), the stored texts used exactly as they are. Tokens and labels are
built as the original built them: the loss covers everything after the prompt (the assistant turn,
its end-of-turn token, so the model learns to stop, and anything the template writes after it). A
tokenizer without a chat template gets the Llama-3 instruct layout
(templates/sft/llama3_chat_template.jinja).

Micro-batches are drawn at random, as in the original. With FlashAttention-2 each is flattened into
one row whose position ids restart at every example (each example attends only to itself, no
padding); otherwise it is padded to its longest example. `--batching length_grouped` trades the
random composition for less padding. See docs/sft.md.

Usage (8 GPUs, the paper's setting):
    accelerate launch --config_file ./configs/deepspeed_zero3.yaml --num_processes 8 --num_machines 1 \\
        --machine_rank 0 --deepspeed_multinode_launcher standard SFT_stage1.py \\
        --model_path meta-llama/Llama-3.1-8B-Instruct --data_path FreedomIntelligence/medical-o1-reasoning-SFT

Usage (one CPU process, a quick try):
    python SFT_stage1.py --model_path models/SmolLM2-135M-Instruct --data_path data/demo_sft.json \\
        --n_epochs 3 --train_bsz_per_gpu 4 --gradient_accumulation_steps 1 --learning_rate 5e-5

Checkpoints go to <output_dir>/<experiment_name>/checkpoint-<step>/ (a Hugging Face model folder);
rerunning the same command resumes from the newest one. training_summary.json beside them names
the final checkpoint and the first and last loss.
"""

import json
import math
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, set_seed
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    DataCollatorWithFlattening,
    HfArgumentParser,
    get_cosine_schedule_with_warmup,
)

from pipeline_io import (InputError, attn_implementation, from_pretrained_or_explain, load_chat_tokenizer, load_records,
                         write_json_atomic)

TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates", "sft")
SFT_FIELDS = ("Question", "Complex_CoT", "Response")
# Length grouping sorts this many global batches at a time: more means less padding, less randomness.
GROUP_BATCHES = 64


@dataclass
class SFTArguments:
    model_path: str = field(metadata={"help": "Hugging Face model id or local folder of the model to fine-tune."})
    data_path: str = field(
        metadata={"help": "Local .json/.jsonl list of {Question, Complex_CoT, Response} or a hub dataset id "
                  "(FreedomIntelligence/medical-o1-reasoning-SFT; append ':config' for another configuration)."}
    )
    experiment_name: str = field(default="sft_stage1", metadata={"help": "Names the checkpoint and log folders."})
    output_dir: str = field(default="./ckpts", metadata={"help": "Checkpoints go to <output_dir>/<experiment_name>/."})
    max_ckpts: int = field(default=2, metadata={"help": "Keep at most this many checkpoints (oldest deleted first)."})
    log_dir: str = field(default="./train_logs", metadata={"help": "wandb / tensorboard logs and train_log.jsonl."})
    max_seq_len: int = field(default=8192, metadata={"help": "Longest tokenized example (prompt + answer)."})
    gradient_accumulation_steps: int = field(default=8)
    train_bsz_per_gpu: int = field(default=2, metadata={"help": "Examples per micro-batch on each process."})
    weight_decay: float = field(default=0.1)
    learning_rate: float = field(default=5e-6)
    warmup_rates: float = field(default=0.05, metadata={"help": "Share of optimizer steps spent warming up."})
    n_epochs: int = field(default=3)
    seed: int = field(default=42)
    gradient_checkpointing: bool = field(default=True, metadata={"help": "Recompute activations (the original always did)."})
    overlong: str = field(
        default="drop",
        metadata={"help": "Examples longer than max_seq_len: 'drop' them (counted and reported), 'truncate' the "
                  "answer's end (the question is always kept whole), or 'keep_last' max_seq_len tokens (the "
                  "original's cut, which loses the start of the question).",
                  "choices": ["drop", "truncate", "keep_last"]},
    )
    batching: str = field(
        default="auto",
        metadata={"help": "'padding_free' (random micro-batches, each flattened; per-example attention via position "
                  "ids), 'padded' (the original: random micro-batches padded to their longest), 'length_grouped' "
                  "(similar lengths share a micro-batch: less padding, but it reweights examples in the loss), "
                  "'auto' (padding_free with FlashAttention-2, else padded).",
                  "choices": ["auto", "padding_free", "length_grouped", "padded"]},
    )
    save_steps: int = field(default=0, metadata={"help": "Also save every N optimizer steps (0: only each epoch)."})
    max_steps: int = field(default=0, metadata={"help": "Stop (and save) after this many optimizer steps in total (0: no limit)."})
    save_training_state: bool = field(
        default=True,
        metadata={"help": "Keep optimizer, scheduler and random state in the newest checkpoint so a rerun resumes "
                  "(about 3x the model's fp32 size); False saves only the model and tokenizer."},
    )
    resume: bool = field(default=True, metadata={"help": "Continue from the newest checkpoint of this experiment if there is one."})
    report_to: str = field(default="none", metadata={"help": "none, wandb or tensorboard (the original forced wandb).",
                                                     "choices": ["none", "wandb", "tensorboard"]})


# ----------------------------------------------------------------------------------------------
# Data: chat text -> token ids and labels (-100 on everything the model should not learn to write)


def tokenize_example(tokenizer, question, answer):
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


def build_examples(rows, tokenizer, max_seq_len, overlong, source, show_progress=True):
    """Tokenized examples and the number of over-long rows (dropped, cut at the end, or cut at the start)."""
    with open(os.path.join(TEMPLATE_DIR, "assistant_turn.txt"), encoding="utf-8") as f:
        answer_template = f.read()
    examples, n_overlong = [], 0
    for index, row in enumerate(tqdm(rows, desc="tokenizing", disable=not show_progress)):
        for name in SFT_FIELDS:
            if name not in row:
                raise InputError(f"{source}: row {index} lacks the field '{name}' (SFT rows need {', '.join(SFT_FIELDS)})")
            if not isinstance(row[name], str) or not row[name].strip():
                raise InputError(f"{source}: row {index} has an empty or non-text '{name}'")
        # The stored texts exactly, whitespace included: the original did not strip them either.
        answer = answer_template.format(Complex_CoT=row["Complex_CoT"], Response=row["Response"])
        example = tokenize_example(tokenizer, row["Question"], answer)
        if len(example["input_ids"]) > max_seq_len:
            n_overlong += 1
            if overlong == "drop" or (overlong == "truncate" and example["n_prompt"] >= max_seq_len):
                continue
            # truncate: keep the start (the whole question, the answer cut); keep_last: the original's cut
            kept = slice(None, max_seq_len) if overlong == "truncate" else slice(-max_seq_len, None)
            example["input_ids"], example["labels"] = example["input_ids"][kept], example["labels"][kept]
        examples.append({"input_ids": example["input_ids"], "labels": example["labels"]})
    return examples, n_overlong


def stop_token_ids(tokenizer, example, eos_token_id):
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

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        if self.group_size:
            groups = [order[i:i + self.group_size] for i in range(0, len(order), self.group_size)]
            order = [i for group in groups for i in sorted(group, key=lambda i: -self.lengths[i])]
            batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
            # The longest batch first, so an out-of-memory error shows up at once; the rest shuffled.
            longest = max(range(len(batches)), key=lambda b: self.lengths[batches[b][0]])
            rest = [batches[b] for b in torch.randperm(len(batches), generator=generator).tolist() if b != longest]
            order = [i for batch in [batches[longest]] + rest for i in batch]
        return iter(order)


def pad_collate(pad_token_id):
    """Right-pad a micro-batch to its longest example; padding is masked in attention and labels."""

    def collate(features):
        width = max(len(f["input_ids"]) for f in features)
        batch = {"input_ids": [], "labels": [], "attention_mask": []}
        for f in features:
            gap = width - len(f["input_ids"])
            batch["input_ids"].append(f["input_ids"] + [pad_token_id] * gap)
            batch["labels"].append(f["labels"] + [-100] * gap)
            batch["attention_mask"].append([1] * len(f["input_ids"]) + [0] * gap)
        return {k: torch.tensor(v) for k, v in batch.items()}

    return collate


def make_loader(examples, args, batching, pad_token_id, num_processes, use_flash_attention):
    """DataLoader for one process; `batching` as in SFTArguments (not 'auto')."""
    lengths = [len(e["input_ids"]) for e in examples]
    # Groups span many micro-batches of every process, so the processes' batches stay alike too.
    group_size = args.train_bsz_per_gpu * num_processes * GROUP_BATCHES if batching == "length_grouped" else 0
    sampler = EpochSampler(lengths, args.seed, args.train_bsz_per_gpu * num_processes, group_size)
    if batching == "padding_free":
        collate = DataCollatorWithFlattening(return_flash_attn_kwargs=use_flash_attention)
    else:
        collate = pad_collate(pad_token_id)
    return torch.utils.data.DataLoader(examples, batch_size=args.train_bsz_per_gpu, sampler=sampler, collate_fn=collate)


def next_token_loss(model, batch):
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


# ----------------------------------------------------------------------------------------------
# Checkpoints: <output_dir>/<experiment_name>/checkpoint-<step>/{model files, trainer_state.json, training_state/}


def list_checkpoints(run_dir):
    """Complete checkpoints (those with trainer_state.json), oldest first."""
    if not os.path.isdir(run_dir):
        return []
    found = []
    for name in os.listdir(run_dir):
        path = os.path.join(run_dir, name)
        if name.startswith("checkpoint-") and name[len("checkpoint-"):].isdigit() and os.path.isfile(os.path.join(path, "trainer_state.json")):
            found.append((int(name[len("checkpoint-"):]), path))
    return [path for _, path in sorted(found)]


def save_checkpoint(accelerator, model, tokenizer, run_dir, trainer_state, max_ckpts, with_training_state=True):
    """Gathered 16-bit Hugging Face weights + tokenizer + the state needed to resume; rotate old ones."""
    final_path = os.path.join(run_dir, f"checkpoint-{trainer_state['global_step']}")
    tmp_path = final_path + ".tmp"
    if accelerator.is_main_process and os.path.isdir(tmp_path):
        shutil.rmtree(tmp_path)
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)  # every process takes part in the ZeRO-3 gather
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        first = next(iter(state_dict.values()))
        unwrapped.config.dtype = first.dtype
        unwrapped.save_pretrained(tmp_path, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(tmp_path)
    accelerator.wait_for_everyone()
    if with_training_state:
        accelerator.save_state(os.path.join(tmp_path, "training_state"))
        accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(os.path.join(tmp_path, "trainer_state.json"), trainer_state)
        if os.path.isdir(final_path):
            shutil.rmtree(final_path)
        os.replace(tmp_path, final_path)  # the checkpoint appears complete or not at all
        checkpoints = list_checkpoints(run_dir)
        for old in checkpoints[:-1]:  # only the newest one is needed to resume; its optimizer state is large
            shutil.rmtree(os.path.join(old, "training_state"), ignore_errors=True)
        for old in checkpoints[:-max(max_ckpts, 1)]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final_path


# ----------------------------------------------------------------------------------------------


def check_tracker(report_to):
    """Fail before loading anything when the logging package is missing."""
    import importlib.util

    package = {"wandb": "wandb", "tensorboard": "tensorboard"}.get(report_to)
    if package and importlib.util.find_spec(package) is None and not (package == "tensorboard" and importlib.util.find_spec("tensorboardX")):
        sys.exit(f"error: --report_to {report_to} needs the '{package}' package (pip install {package}), or pass --report_to none")


def make_accelerator(args):
    # Without CUDA, accelerate leaves the process-group backend unset and DeepSpeed then counts a
    # different world size; naming gloo makes the CPU run take the same path as a GPU run.
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    handlers = [InitProcessGroupKwargs(backend="gloo")] if launched and not torch.cuda.is_available() else []
    log_with = None if args.report_to == "none" else args.report_to
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=log_with,
        project_dir=args.log_dir,
        kwargs_handlers=handlers,
    )
    # Our flags decide the batch shape, not the config file (whose value accelerate passes by environment).
    accelerator.gradient_accumulation_steps = args.gradient_accumulation_steps
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = args.train_bsz_per_gpu
        plugin.deepspeed_config["gradient_accumulation_steps"] = args.gradient_accumulation_steps
    return accelerator


def main(argv=None):
    parser = HfArgumentParser(SFTArguments)
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    check_tracker(args.report_to)
    accelerator = make_accelerator(args)
    set_seed(args.seed)
    run_dir = os.path.join(args.output_dir, args.experiment_name)
    say = accelerator.print

    # Load.
    tokenizer = load_chat_tokenizer(args.model_path)
    try:
        rows = load_records(args.data_path, required_fields=())
        examples, n_overlong = build_examples(rows, tokenizer, args.max_seq_len, args.overlong, args.data_path,
                                              show_progress=accelerator.is_local_main_process)
    except InputError as e:
        sys.exit(f"error: {e}")
    if not examples:
        sys.exit(f"error: every example of {args.data_path} is longer than --max_seq_len {args.max_seq_len}")
    verb = {"drop": "dropped", "truncate": "truncated (end of the answer cut)",
            "keep_last": "cut to their last tokens (the original's way)"}[args.overlong]
    say(f"{len(rows)} rows, {len(examples)} examples; {n_overlong} longer than {args.max_seq_len} tokens {verb}")

    attention = attn_implementation()
    batching = args.batching
    if batching == "auto":
        batching = "padding_free" if attention == "flash_attention_2" else "padded"
    use_deepspeed = accelerator.state.deepspeed_plugin is not None
    dtype = torch.bfloat16 if use_deepspeed and accelerator.mixed_precision == "bf16" else torch.float32
    model = from_pretrained_or_explain(AutoModelForCausalLM, args.model_path, dtype=dtype, attn_implementation=attention)
    model.generation_config.eos_token_id = stop_token_ids(tokenizer, examples[0], model.generation_config.eos_token_id)
    if args.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # the name from transformers 5.x on
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # Only padded batches use a pad id, and padding is masked everywhere; the saved tokenizer keeps its own.
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    loader = make_loader(examples, args, batching, pad_token_id, accelerator.num_processes, attention == "flash_attention_2")
    # The original's rule, matched case-sensitively: biases are not decayed; Llama and Qwen2 name their
    # norms "...layernorm.weight" / "norm.weight", so their norm weights are decayed, as they were there.
    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)], "weight_decay": args.weight_decay},
        {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    steps_per_epoch = math.ceil(len(loader) / args.gradient_accumulation_steps)
    total_steps = steps_per_epoch * args.n_epochs
    # Stepped by us once per optimizer step (accelerate would step a prepared scheduler once per process).
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(args.warmup_rates * total_steps), total_steps)
    accelerator.register_for_checkpointing(scheduler)

    state = {"global_step": 0, "epoch": 0, "batches_done_in_epoch": 0, "history": []}
    checkpoints = list_checkpoints(run_dir)
    resumable = [c for c in checkpoints if os.path.isdir(os.path.join(c, "training_state"))]
    if args.resume and resumable:
        with open(os.path.join(resumable[-1], "trainer_state.json"), encoding="utf-8") as f:
            state = json.load(f)
        accelerator.load_state(os.path.join(resumable[-1], "training_state"))
        say(f"resuming from {resumable[-1]} at optimizer step {state['global_step']} (epoch {state['epoch']})")
        if state["epoch"] >= args.n_epochs:
            say("that run had finished all epochs: nothing to do (pass --resume False to train again)")
    accelerator.init_trackers(args.experiment_name, config=asdict(args))
    say(f"batching: {batching}, attention: {attention}, {accelerator.num_processes} process(es), "
        f"{steps_per_epoch} optimizer steps per epoch, {total_steps} in all")

    # Train.
    model.train()
    progress = tqdm(total=total_steps, initial=state["global_step"], desc="sft", disable=not accelerator.is_local_main_process)
    sums = torch.zeros(4, device=accelerator.device)  # loss x micro-batches, correct, label tokens, micro-batches
    tokens_seen = torch.zeros(2, device=accelerator.device)  # real tokens, processed tokens (padding included)
    final_path = None
    stop = False
    for epoch in range(state["epoch"], args.n_epochs):
        loader.set_epoch(epoch)
        skip = state["batches_done_in_epoch"] if epoch == state["epoch"] else 0
        epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
        for batch_index, batch in enumerate(epoch_loader, start=skip):
            with accelerator.accumulate(model):
                loss, n_correct, n_learned = next_token_loss(model, batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad()
            with torch.no_grad():
                sums += torch.stack([loss.detach(), n_correct.float(), n_learned.float(), torch.ones((), device=sums.device)])
                n_processed = batch["input_ids"].numel()
                n_real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else n_processed
                tokens_seen += torch.tensor([n_real, n_processed], dtype=torch.float, device=tokens_seen.device)
            if not accelerator.sync_gradients:
                continue
            lr = optimizer.param_groups[0]["lr"]  # the rate this update used, as the (DeepSpeed) optimizer sees it
            scheduler.step()
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
            accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])
            progress.update(1)
            progress.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['token_accuracy']:.3f}", lr=f"{record['lr']:.2e}")
            if accelerator.is_main_process:
                os.makedirs(args.log_dir, exist_ok=True)
                with open(os.path.join(args.log_dir, f"{args.experiment_name}.jsonl"), "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
            stop = bool(args.max_steps) and state["global_step"] >= args.max_steps
            end_of_epoch = batch_index + 1 == len(loader)
            if end_of_epoch:
                state["epoch"], state["batches_done_in_epoch"] = epoch + 1, 0
            if end_of_epoch or stop or (args.save_steps and state["global_step"] % args.save_steps == 0):
                final_path = save_checkpoint(accelerator, model, tokenizer, run_dir, state, args.max_ckpts, args.save_training_state)
                say(f"saved {final_path}")
            if stop:
                break
        if stop:
            break
    progress.close()

    # Report.
    tokens = accelerator.reduce(tokens_seen, reduction="sum")
    if final_path is None:
        existing = list_checkpoints(run_dir)
        final_path = existing[-1] if existing else None
    history = state["history"]
    summary = {
        "final_checkpoint": os.path.abspath(final_path) if final_path else None,
        "finished": state["epoch"] >= args.n_epochs,
        "optimizer_steps": state["global_step"],
        "first_loss": history[0]["loss"] if history else None,
        "last_loss": history[-1]["loss"] if history else None,
        "examples": len(examples),
        "overlong": n_overlong,
        "overlong_policy": args.overlong,
        "batching": batching,
        "real_tokens_this_run": int(tokens[0].item()),
        "processed_tokens_this_run": int(tokens[1].item()),
        "history": history,
    }
    if accelerator.is_main_process:
        write_json_atomic(os.path.join(run_dir, "training_summary.json"), summary)
        print(f"final checkpoint: {summary['final_checkpoint']}")
        print(f"loss {summary['first_loss']} -> {summary['last_loss']} over {summary['optimizer_steps']} optimizer steps; "
              f"summary in {os.path.join(run_dir, 'training_summary.json')}")
    accelerator.end_training()  # also closes the process group: nothing collective after this
    return summary


if __name__ == "__main__":
    main()
