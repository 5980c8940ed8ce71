"""trl's SFTTrainer on our SFT rows, timed as SFT_stage1.py times its own loop: the peer a user would pick instead.

The rows go through trl's prompt-completion path (the same chat and loss labels as ours: bench/sft_trainer_tokens.py
checks that), padding-free, with SFT_stage1.py's batch, schedule, clipping, weight decay and activation
checkpointing; one process (one GPU, or the CPU). Tokens per second are counted over the training loop and from
the second optimizer step on (huatuo_o1.training.LoopTimer, as SFT_stage1.py's training_summary.json reports).

    python bench/sft_trl_speed.py --model_path MODEL --data_path rows.json --train_bsz_per_gpu 26 --max_steps 30 \\
        --bf16 --output_file trl_summary.json

Writes --output_file: optimizer steps, first and last loss, trained tokens, throughput.
"""

import argparse
import json
import os
import warnings

import torch

from huatuo_o1 import cli


def main():
    parser = cli.argument_parser(__doc__)
    parser.add_argument("--model_path", required=True)
    parser.add_argument("--data_path", required=True, help="SFT rows (Question, Complex_CoT, Response)")
    parser.add_argument("--output_file", required=True)
    parser.add_argument("--train_bsz_per_gpu", type=int, default=2)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--max_steps", type=int, default=30)
    parser.add_argument("--learning_rate", type=float, default=1e-5)
    parser.add_argument("--weight_decay", type=float, default=0.1)
    parser.add_argument("--warmup_rates", type=float, default=0.05)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--gradient_checkpointing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=torch.cuda.is_available(),
        help="bf16 mixed precision over float32 weights, as `accelerate launch --mixed_precision bf16` gives",
    )
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from huatuo_o1.models import attn_implementation, load_chat_tokenizer
    from huatuo_o1.records import load_records
    from huatuo_o1.sft import prompt_completion_rows
    from huatuo_o1.training import LoopTimer

    class Timing(TrainerCallback):
        """The LoopTimer of SFT_stage1.py, stepped at the end of each optimizer step once the device is done."""

        def __init__(self):
            self.timer = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.timer = LoopTimer()

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            seen = float(state.num_input_tokens_seen)  # padding-free: every token is a real one
            self.timer.step(torch.tensor([seen, seen]))

    rows = load_records(args.data_path)
    tokenizer = load_chat_tokenizer(args.model_path)
    # float32 weights, as SFT_stage1.py loads them without DeepSpeed; bf16 comes from mixed precision
    model = AutoModelForCausalLM.from_pretrained(
        args.model_path, dtype=torch.float32, attn_implementation=attn_implementation(half_precision=args.bf16)
    )
    config = SFTConfig(
        output_dir=os.path.join(os.path.dirname(os.path.abspath(args.output_file)), "trl_output"),
        per_device_train_batch_size=args.train_bsz_per_gpu,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=args.warmup_rates,  # below 1: a share of the steps
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        gradient_checkpointing=args.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        bf16=args.bf16,
        use_cpu=not torch.cuda.is_available(),
        padding_free=True,
        max_length=None,  # trl enforces no length when padding-free without packing; the rows are short
        completion_only_loss=True,
        include_num_input_tokens_seen="all",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
    )
    timing = Timing()
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(prompt_completion_rows(rows)),
        processing_class=tokenizer,
        callbacks=[timing],
    )
    trainer.train()
    seen = float(trainer.state.num_input_tokens_seen)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    summary = {
        "trainer": "trl.SFTTrainer (padding-free, completion-only loss)",
        "optimizer_steps": trainer.state.global_step,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "real_tokens_this_run": int(seen),
        "attention": model.config._attn_implementation,
        "bf16": args.bf16,
        "throughput": timing.timer.summary(trainer.accelerator, torch.tensor([seen, seen]), ("real", "processed")),
    }
    with open(args.output_file, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
