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
--exam_items adds (or alone gives) labelled answers made from multiple-choice items: per item one naming its right
option (correct) and one per wrong option (incorrect), worded as huatuo_o1/templates/exam_answer_phrasings.txt says;
with both, examples are grouped by reference answer for the split, and the summary gives each source's share and
held-out figures.

At the end it prints, on the held-out split: accuracy, precision and recall of "correct", and the
same for a plain string-match baseline (reference contained in the response), and writes
verifier_summary.json and heldout_predictions.json into --output_dir beside the model.

Usage (8 GPUs, ZeRO-3 as in SFT):
    accelerate launch --config_file ./configs/deepspeed_zero3.yaml --num_processes 8 train_verifier.py \\
        --model_path meta-llama/Llama-3.2-3B-Instruct --data_path data/medical_CoT_search_records.json \\
        --output_dir ckpts/medical_verifier --train_bsz_per_gpu 8 --learning_rate 1e-5 --n_epochs 2

Usage (one CPU process):
    python train_verifier.py --model_path .cache/models/SmolLM2-135M-Instruct --data_path records.json \\
        --output_dir out/verifier --max_length 512 --learning_rate 5e-5 --n_epochs 3

A rerun of the same command continues after the last finished epoch (state in <output_dir>/checkpoint-<step>),
or does nothing when the verifier is already trained (once the folder matches its manifest.json: every file's
size and SHA-256); one with other data or settings is refused (--resume False trains afresh).
"""

import os

from huatuo_o1 import cli, manifests, training
from huatuo_o1.lora import LoRAArguments
from huatuo_o1.models import check_model_source
from huatuo_o1.outputs import check_outputs
from huatuo_o1.records import InputError, write_json_atomic
from huatuo_o1.verifier import load_template
from huatuo_o1.verifier_training import (
    SUMMARY,
    VerdictData,
    VerifierArguments,
    VerifierTrainer,
    exam_pairs,
    load_phrasings,
    read_exam_items,
    read_examples,
    with_exam_pairs,
)


def main(argv=None):
    args, data, lora = cli.parse((VerifierArguments, VerdictData, LoRAArguments), argv)
    # Before anything loads: the backbone exists, and the verifier can be written without touching an input.
    check_model_source(args.model_path, "--model_path", args.verify_checkpoints)
    check_outputs(
        [("--output_dir", args.output_dir, True)],
        {"--model_path": args.model_path, "--data_path": data.data_path, "--exam_items": args.exam_items},
        replaced_inside=training.CHECKPOINT_PREFIX,
    )
    trainer = VerifierTrainer(args, data, lora)  # the accelerator and the seed; --report_to's packages checked

    # Load the verdicts, the exam items' labelled answers, and the verifier's input template (the trainer loads the
    # backbone once it knows there is something to train).
    if not (data.data_path or args.exam_items):
        raise InputError("give --data_path (verdicts), --exam_items (multiple-choice items) or both")
    examples, skipped = read_examples(data) if data.data_path else ([], 0)
    if args.exam_items:
        pairs = exam_pairs(read_exam_items(args.exam_items), load_phrasings(args.exam_answer_phrasings))
        examples = with_exam_pairs(examples, pairs)
    if len(examples) < 2:
        raise InputError(
            f"{data.data_path or args.exam_items}: {len(examples)} example(s) with a verdict; need at least 2 "
            "(train and held out)"
        )
    template = load_template(args.verifier_template)

    # Train: afresh, continuing the run in output_dir, or nothing when the verifier there is trained on these
    # inputs; refused when it had other inputs. Then the held-out check, and the verifier saved.
    summary = trainer.train(examples, skipped, template)

    # Save the summary; the resume checkpoints go (the verifier is trained: nothing is left to resume).
    if summary is not None:
        if trainer.accelerator.is_main_process:
            write_json_atomic(os.path.join(args.output_dir, SUMMARY), summary)
            manifests.add(args.output_dir, [SUMMARY])  # a rerun's "nothing to do" reads it: it joins the manifest
            after, baseline = summary["heldout"], summary["baseline"]
            print(
                f"held-out ({summary['n_held_out']} examples, threshold {args.threshold}): verifier accuracy "
                f"{after['accuracy']}, precision {after['precision']}, recall {after['recall']} | string match "
                f"accuracy {baseline['accuracy']}, precision {baseline['precision']}, recall {baseline['recall']} | "
                f"verifier agrees with string match on {summary['verifier_vs_baseline_agreement']}"
            )
            for source, figures in summary.get("heldout_by_source", {}).items():
                print(
                    f"held-out {source} ({figures['n']} examples, {summary['sources'][source]['share']:.0%} of the "
                    f"data): verifier accuracy {figures['verifier']['accuracy']}, string match "
                    f"{figures['baseline']['accuracy']}, agreement {figures['agreement']}"
                )
            print(f"verifier saved to {summary['output_dir']} (use it as RL_stage2.py --reward_model_path)")
        trainer.remove_checkpoints()
    trainer.end_training()
    return 0 if summary is None else summary


if __name__ == "__main__":
    cli.run(main)
