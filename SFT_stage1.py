"""SFT, the paper's stage 1 of HuatuoGPT-o1: supervised fine-tuning on complex reasoning traces.

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
    python SFT_stage1.py --model_path .cache/models/SmolLM2-135M-Instruct --data_path data/demo_sft.json \\
        --n_epochs 3 --train_bsz_per_gpu 4 --gradient_accumulation_steps 1 --learning_rate 5e-5

Checkpoints go to <output_dir>/<experiment_name>/checkpoint-<step>/ (a Hugging Face model folder);
rerunning the same command resumes from the newest one (a finished run is left as it is; a run made
with other data or settings is refused: --resume False starts afresh). Each checkpoint's manifest.json (every
file's size and SHA-256, written last) is checked before a rerun trusts it: a damaged newest checkpoint is passed
over for the newest that matches (--verify_checkpoints sizes checks sizes only). training_summary.json beside
them names the final checkpoint and the first and last loss.
"""

import os

from huatuo_o1 import cli, training
from huatuo_o1.lora import LoRAArguments
from huatuo_o1.models import check_model_source
from huatuo_o1.outputs import check_outputs
from huatuo_o1.records import load_records, write_json_atomic
from huatuo_o1.sft import SUMMARY, SFTArguments, SupervisedTrainer


def main(argv=None):
    args, lora = cli.parse((SFTArguments, LoRAArguments), argv)
    run_dir = os.path.join(args.output_dir, args.experiment_name)
    # Before anything loads: the model exists, and the checkpoints and logs can be written without touching it.
    check_model_source(args.model_path, "--model_path", args.verify_checkpoints)
    check_outputs(
        [("--output_dir", run_dir, True), ("--log_dir", args.log_dir, True)],
        {"--model_path": args.model_path, "--data_path": args.data_path},
        replaced_inside=training.CHECKPOINT_PREFIX,
    )
    trainer = SupervisedTrainer(args, lora)  # the accelerator and the seed; --report_to's packages checked

    # Load the rows (the trainer loads the model once it knows there is something to train).
    rows = load_records(args.data_path, required_fields=())

    # Train: afresh, continuing the run in run_dir, or nothing when that run is finished; refused when it had
    # other inputs.
    summary = trainer.train(rows)

    # Save the summary.
    if summary is not None and trainer.accelerator.is_main_process:
        summary_path = os.path.join(run_dir, SUMMARY)
        write_json_atomic(summary_path, summary)
        print(f"final checkpoint: {summary['final_checkpoint']}")
        print(
            f"loss {summary['first_loss']} -> {summary['last_loss']} over {summary['optimizer_steps']} optimizer "
            f"steps; summary in {summary_path}"
        )
    trainer.end_training()  # also closes the process group: nothing collective after this
    return 0 if summary is None else summary


if __name__ == "__main__":
    cli.run(main)
