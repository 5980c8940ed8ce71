"""Stage 1 of HuatuoGPT-o1: supervised fine-tuning on complex reasoning traces.

Each row (`Question`, `Complex_CoT`, `Response`) becomes a two-turn chat: the user asks `Question`,
the assistant answers `## Thinking\\n\\n{Complex_CoT}\\n\\n## Final Response\\n\\n{Response}`
(huatuo_o1/answer_format.py), the stored texts used exactly as they are. Tokens and labels are
built as the original built them: the loss covers everything after the prompt (the assistant turn,
its end-of-turn token, so the model learns to stop, and anything the template writes after it). A
tokenizer without a chat template gets the Llama-3 instruct layout
(huatuo_o1/templates/llama3_chat_template.jinja).

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
rerunning the same command resumes from the newest one (a finished run is left as it is; a run made
with other data or settings is refused: --resume False starts afresh). training_summary.json beside them names
the final checkpoint and the first and last loss.
"""

import json
import math
import os
from dataclasses import asdict, dataclass, field

import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM

from huatuo_o1 import cli, training
from huatuo_o1.models import attn_implementation, check_model_source, from_pretrained_or_explain, load_chat_tokenizer
from huatuo_o1.outputs import check_outputs
from huatuo_o1.records import InputError, digest, load_records, write_json_atomic
from huatuo_o1.sft import build_examples, make_loader, next_token_loss, stop_token_ids, weight_decay_groups

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
    log_dir: str = field(default="./train_logs", metadata={"help": "wandb / tensorboard logs and train_log.jsonl."})
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
    resume: bool = field(
        default=True,
        metadata={
            "help": "Continue from the newest checkpoint of this experiment if there is one (a run made with other "
            "data or settings is refused, a finished one left as it is); False starts afresh and first removes the "
            "experiment's checkpoints."
        },
    )
    report_to: str = field(
        default="none",
        metadata={
            "help": "none, wandb or tensorboard (the original forced wandb).",
            "choices": ["none", "wandb", "tensorboard"],
        },
    )

    def __post_init__(self):
        cli.check_ranges(
            self,
            at_least_1=("train_bsz_per_gpu", "gradient_accumulation_steps", "n_epochs", "max_seq_len", "max_ckpts"),
            at_least_0=("save_steps", "max_steps", "max_grad_norm", "weight_decay"),
            above_0=("learning_rate",),
            shares=("warmup_rates",),
        )


def main(argv=None):
    (args,) = cli.parse((SFTArguments,), argv)
    run_dir = os.path.join(args.output_dir, args.experiment_name)
    # Before anything loads: the model exists, and the checkpoints and logs can be written without touching it.
    check_model_source(args.model_path, "--model_path")
    check_outputs(
        [("--output_dir", run_dir, True), ("--log_dir", args.log_dir, True)],
        {"--model_path": args.model_path, "--data_path": args.data_path},
        replaced_inside=training.CHECKPOINT_PREFIX,
    )
    trackers = training.trackers([args.report_to], "SFT_stage1.py")
    accelerator = training.make_accelerator(
        micro_batch_size=args.train_bsz_per_gpu,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        max_grad_norm=args.max_grad_norm,
        log_with=trackers,
        project_dir=args.log_dir,
    )
    set_seed(args.seed)
    checkpoints = training.Checkpoints(run_dir, keep=args.max_ckpts)
    say = accelerator.print

    # Load.
    rows = load_records(args.data_path, required_fields=())

    # An earlier run in this folder: resumed when its inputs were these, refused when they were not.
    run_inputs = {
        "data": digest(rows),
        "model_path": args.model_path,
        "processes": accelerator.num_processes,
        **{name: getattr(args, name) for name in TRAINING_SETTINGS},
    }
    earlier = checkpoints.list()
    if earlier and args.resume:
        saved = training.Checkpoints.read_state(earlier[-1])
        changed = training.changed_inputs(saved.get("inputs"), run_inputs)
        if changed:
            raise InputError(
                f"{run_dir} holds a run made with other inputs ({'; '.join(changed)}): pass --resume False to start "
                "afresh (its checkpoints are removed) or another --output_dir / --experiment_name"
            )
        if saved["epoch"] >= args.n_epochs:
            say(
                f"{run_dir} holds a finished run of these inputs ({earlier[-1]}): nothing to do "
                "(--resume False trains again from the start)"
            )
            accelerator.end_training()
            return 0
        if checkpoints.latest_resumable() != earlier[-1]:
            raise InputError(
                f"{earlier[-1]} cannot be resumed (saved without training state, --save_training_state False): pass "
                "--resume False to start afresh (the checkpoints are removed) or another --output_dir / "
                "--experiment_name"
            )

    tokenizer = load_chat_tokenizer(args.model_path)
    examples, n_overlong = build_examples(
        rows,
        tokenizer,
        args.max_seq_len,
        args.overlong,
        args.data_path,
        show_progress=accelerator.is_local_main_process,
    )
    if not examples:
        raise InputError(f"every example of {args.data_path} is longer than --max_seq_len {args.max_seq_len}")
    verb = {
        "drop": "dropped",
        "truncate": "truncated (end of the answer cut)",
        "keep_last": "cut to their last tokens (the original's way)",
    }[args.overlong]
    say(f"{len(rows)} rows, {len(examples)} examples; {n_overlong} longer than {args.max_seq_len} tokens {verb}")

    use_deepspeed = accelerator.state.deepspeed_plugin is not None
    dtype = torch.bfloat16 if use_deepspeed and accelerator.mixed_precision == "bf16" else torch.float32
    attention = attn_implementation(half_precision=accelerator.mixed_precision in ("bf16", "fp16"))
    batching = args.batching
    if batching == "auto":
        batching = "padding_free" if attention == "flash_attention_2" else "padded"
    model = from_pretrained_or_explain(
        AutoModelForCausalLM, args.model_path, dtype=dtype, attn_implementation=attention
    )
    model.generation_config.eos_token_id = stop_token_ids(tokenizer, examples[0], model.generation_config.eos_token_id)
    if args.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # the name from transformers 5.x on
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # Only padded batches use a pad id, and padding is masked everywhere; the saved tokenizer keeps its own.
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    loader = make_loader(
        examples,
        args.train_bsz_per_gpu,
        args.seed,
        batching,
        pad_token_id,
        accelerator.num_processes,
        attention == "flash_attention_2",
    )
    optimizer = torch.optim.AdamW(weight_decay_groups(model, args.weight_decay), lr=args.learning_rate)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    steps_per_epoch = math.ceil(len(loader) / args.gradient_accumulation_steps)
    total_steps = steps_per_epoch * args.n_epochs
    # stepped once per optimizer step
    scheduler = training.make_schedule(
        accelerator, "cosine", optimizer, int(args.warmup_rates * total_steps), total_steps
    )

    if earlier and not args.resume:
        say(f"--resume False: removing the {len(earlier)} checkpoint(s) of the earlier run in {run_dir}")
        checkpoints.remove_all(accelerator)
    state = {"global_step": 0, "epoch": 0, "batches_done_in_epoch": 0, "history": [], "inputs": run_inputs}
    resumable = checkpoints.latest_resumable()
    if args.resume and resumable:
        state = training.Checkpoints.load(accelerator, resumable)
        state["inputs"] = run_inputs
        say(f"resuming from {resumable} at optimizer step {state['global_step']} (epoch {state['epoch']})")
    accelerator.init_trackers(args.experiment_name, config=asdict(args))
    say(
        f"batching: {batching}, attention: {attention}, {accelerator.num_processes} process(es), "
        f"{steps_per_epoch} optimizer steps per epoch, {total_steps} in all"
    )

    # Train.
    model.train()
    progress = tqdm(
        total=total_steps, initial=state["global_step"], desc="sft", disable=not accelerator.is_local_main_process
    )
    sums = torch.zeros(4, device=accelerator.device)  # loss x micro-batches, correct, label tokens, micro-batches
    tokens_seen = torch.zeros(2, device=accelerator.device)  # real tokens, processed tokens (padding included)
    final_path = None
    stop = False
    timer = training.LoopTimer()
    for epoch in range(state["epoch"], args.n_epochs):
        loader.set_epoch(epoch)
        skip = state["batches_done_in_epoch"] if epoch == state["epoch"] else 0
        epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
        for batch_index, batch in enumerate(epoch_loader, start=skip):
            with accelerator.accumulate(model):
                loss, n_correct, n_learned = next_token_loss(model, batch)
                accelerator.backward(loss)
                training.optimizer_step(accelerator, model, optimizer, args.max_grad_norm)
            with torch.no_grad():
                sums += torch.stack(
                    [loss.detach(), n_correct.float(), n_learned.float(), torch.ones((), device=sums.device)]
                )
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
            timer.step(tokens_seen)
            accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])
            progress.update(1)
            progress.set_postfix(
                loss=f"{record['loss']:.4f}", acc=f"{record['token_accuracy']:.3f}", lr=f"{record['lr']:.2e}"
            )
            if accelerator.is_main_process:
                os.makedirs(args.log_dir, exist_ok=True)
                with open(os.path.join(args.log_dir, f"{args.experiment_name}.jsonl"), "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
            stop = bool(args.max_steps) and state["global_step"] >= args.max_steps
            end_of_epoch = batch_index + 1 == len(loader)
            if end_of_epoch:
                state["epoch"], state["batches_done_in_epoch"] = epoch + 1, 0
            if end_of_epoch or stop or (args.save_steps and state["global_step"] % args.save_steps == 0):
                with timer.paused():
                    final_path = checkpoints.save(
                        accelerator,
                        model,
                        tokenizer,
                        state["global_step"],
                        state,
                        with_training_state=args.save_training_state,
                    )
                say(f"saved {final_path}")
            if stop:
                break
        if stop:
            break
    progress.close()

    # Save the summary.
    throughput = timer.summary(accelerator, tokens_seen, ("real", "processed"))
    tokens = accelerator.reduce(tokens_seen, reduction="sum")
    if final_path is None:
        existing = checkpoints.list()
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
        # the training loop's time this run (checkpoint saving left out), and the rate from the second step on
        "throughput": throughput,
        "history": history,
    }
    if accelerator.is_main_process:
        summary_path = os.path.join(checkpoints.run_dir, "training_summary.json")
        write_json_atomic(summary_path, summary)
        print(f"final checkpoint: {summary['final_checkpoint']}")
        print(
            f"loss {summary['first_loss']} -> {summary['last_loss']} over {summary['optimizer_steps']} optimizer "
            "steps; "
            f"summary in {summary_path}"
        )
    accelerator.end_training()  # also closes the process group: nothing collective after this
    return summary


if __name__ == "__main__":
    cli.run(main)
