"""Between construct and search/RL: the paper's data recipe (section 4.1, Algorithm 1).

From the verifiable problems (construct's output) this script
  1. drops every item that shares 64 consecutive characters with an evaluation question or option
     (the Med-PaLM 2 test, after normalisation: NFKC, lower case, whitespace runs -> one space,
     stripped; fields checked: see --check_fields), reporting per benchmark what it dropped;
  2. drops exact duplicates (the same normalised open-ended question, or the same normalised
     multiple-choice question with the same options, as an earlier item) and items whose question or
     answer is empty;
  3. splits the rest into two disjoint parts, seeded and stratified by source: one for the search
     stage (then SFT), one for RL (D_search, D_RL = Split(D));
  4. adds closed-set items: items of D kept as multiple-choice questions, the question followed by its
     options ("{question}\\nA. ...\\nB. ...") as the open-ended question and the right option
     ("B. <its text>") as the ground-truth answer;
  5. adds general-domain verifiable problems (MMLU-Pro outside the medical tracks, made by
     `evaluation/prepare_eval_data.py --general_output` and the construct stage).

The source of an item is its `source` field when it has one, else the name of its input file (or hub id).
Every input item ends in exactly one part or in dropped.json with its reason (contaminated, duplicate,
empty, not_selected); summary.json counts them. The logic is huatuo_o1/recipe.py and
huatuo_o1/decontamination.py.

Usage (the paper's sizes: 40K problems -> 20K + 20K, plus 4K closed-set and 5K general):
    python prepare_training_data.py --data_path exam_questions_final_40000.json \\
        --general_data_path mmlu_pro_general_final_9000.json --eval_file evaluation/data/eval_data.json \\
        --search_size 20000 --rl_size 20000 --closed_set_size 4000 --general_size 5000 --output_dir data/recipe
    python search_for_complex_reasoning_path.py --data_path data/recipe/search_part.json ...
    accelerate launch ... RL_stage2.py --dataset_name data/recipe/rl_part.json ...

Check any data set (verifiable problems, exam items, SFT rows) against the benchmarks; writes only
the report. Exit status 0: no contamination found, 3: contamination found, 1: bad input:
    python prepare_training_data.py --check_only --data_path data/sft.json --eval_file evaluation/data/eval_data.json
"""

import os
import random
from dataclasses import dataclass, field

from huatuo_o1 import cli, recipe
from huatuo_o1.decontamination import WINDOW, EvalIndex, eval_texts
from huatuo_o1.outputs import check_outputs
from huatuo_o1.records import GROUND_TRUTH, OPEN_QUESTION, InputError, write_json_atomic

CONTAMINATION_FOUND = 3  # --check_only's exit status when something is shared (1 is bad input, as in every script)


@dataclass
class RecipeArguments:
    data_path: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Verifiable problems (construct's output): local .json/.jsonl files or hub ids; several allowed."
        },
    )
    general_data_path: list[str] = field(
        default_factory=list,
        metadata={
            "help": "General-domain verifiable problems (MMLU-Pro outside the medical tracks, through construct)."
        },
    )
    eval_file: list[str] = field(
        default_factory=lambda: ["evaluation/data/eval_data.json"],
        metadata={
            "help": "Evaluation file(s) to protect (a list or {source: [items]}); 'none' skips decontamination."
        },
    )
    output_dir: str = field(
        default="prepared_data",
        metadata={
            "help": "Where search_part.json, rl_part.json, dropped.json, summary.json and "
            "contamination_report.json go."
        },
    )
    search_size: str = field(
        default="0.5",
        metadata={
            "help": "Items for the search (+SFT) part: a count (20000) or, with a decimal point, a share of "
            "the clean medical items (0.5)."
        },
    )
    rl_size: str = field(default="0.5", metadata={"help": "Items for the RL part, as --search_size."})
    closed_set_size: str = field(
        default="0.1",
        metadata={
            "help": "Closed-set items (kept with their options): a count, or a share of the clean medical "
            "items (the paper: 4K of 40K). 0: none."
        },
    )
    closed_set_part: str = field(
        default="search", metadata={"help": "The part that gets the closed-set items.", "choices": list(recipe.PARTS)}
    )
    closed_set_from: str = field(
        default="part",
        metadata={
            "help": "part: copies of items of that part (each also stays there open-ended; the paper's D "
            "was used whole); unused: items left out of both parts (each exam question then "
            "appears once).",
            "choices": ["part", "unused"],
        },
    )
    general_size: str = field(
        default="1.0",
        metadata={"help": "General-domain items: a count (the paper: 5000) or a share of the clean general items."},
    )
    general_part: str = field(
        default="search",
        metadata={"help": "The part that gets the general-domain items.", "choices": list(recipe.PARTS)},
    )
    seed: int = field(
        default=42, metadata={"help": "The split, the closed-set and the general-domain picks, and the row order."}
    )
    window: int = field(
        default=WINDOW, metadata={"help": "Consecutive characters that make an overlap (Med-PaLM 2: 64)."}
    )
    stock_phrase_threshold: int = field(
        default=0,
        metadata={
            "help": "A window found in at least this many evaluation texts is stock exam phrasing: no window "
            "touching it counts. 0: every window counts (the paper's rule)."
        },
    )
    check_fields: list[str] = field(
        default_factory=lambda: list(recipe.CHECK_FIELDS),
        metadata={
            "help": "Fields of a training row compared with the evaluation texts (those a row lacks are "
            "skipped; 'options' means each option text)."
        },
    )
    check_only: bool = field(
        default=False,
        metadata={
            "help": "Only check --data_path/--general_data_path against --eval_file and write the report. "
            f"Exit 0: clean, {CONTAMINATION_FOUND}: contamination found, 1: bad input."
        },
    )
    report_path: str = field(
        default="", metadata={"help": "The contamination report (default <output_dir>/contamination_report.json)."}
    )


def main():
    (args,) = cli.parse((RecipeArguments,))
    if not args.data_path:
        raise InputError("--data_path is required (construct's problems, or with --check_only any data set)")
    skip_eval = [path.lower() for path in args.eval_file] == ["none"]
    if skip_eval and args.check_only:
        raise InputError("--check_only needs --eval_file")
    sizes = {name: recipe.parse_size(getattr(args, f"{name}_size"), f"--{name}_size") for name in recipe.SIZES}
    report_path = args.report_path or os.path.join(args.output_dir, "contamination_report.json")
    inputs = {"data_path": args.data_path, "general_data_path": args.general_data_path, "eval_file": args.eval_file}
    input_paths = {
        f"--{name}" + (f" (file {i + 1})" if len(paths) > 1 else ""): path
        for name, paths in inputs.items()
        for i, path in enumerate(paths)
    }
    outputs = [("--report_path", report_path, False)]
    if not args.check_only:
        outputs.append(("--output_dir", args.output_dir, True))
    check_outputs(outputs, input_paths)  # before the work: no output replaces an input, all can be written

    # Load: the items (every row must carry the two keys, except for a check), the evaluation texts.
    required = () if args.check_only else (OPEN_QUESTION, GROUND_TRUTH)
    medical = recipe.load_items(args.data_path, "medical", required, args.check_fields)
    general = recipe.load_items(args.general_data_path, "general", required, args.check_fields)
    items = medical + general
    index = None
    if not skip_eval:
        index = EvalIndex(eval_texts(args.eval_file, args.window), args.window, args.stock_phrase_threshold)
    print(
        f"loaded {len(medical)} medical and {len(general)} general-domain items"
        + ("" if index is None else f"; {len(index.texts)} evaluation questions and options of {args.window}+ "
                                    f"characters ({index.windows_indexed} windows)")
    )  # fmt: skip

    # Do: decontaminate, then (unless only checking) de-duplicate and split.
    report = None
    if index is not None:
        report = {**recipe.decontaminate(items, index, args.check_fields), "inputs": inputs}
        print(
            f"decontamination: {report['contaminated_items']} of {len(items)} items share {args.window} characters "
            f"with the evaluation data ({report['seconds']} s)"
        )
        for source, entry in report["per_benchmark"].items():
            if entry["items"]:
                example = entry["examples"][0]
                print(
                    f"  {source}: {entry['items']} items, e.g. {example['origin']} ({example['field']}) ~ "
                    f'{example["eval_item"]} ({example["eval_field"]}): "{example["overlap"][:80]}"'
                )
    if args.check_only:
        write_json_atomic(report_path, report)
        print(f"wrote {report_path}")
        return CONTAMINATION_FOUND if report["contaminated_items"] else 0

    recipe.drop_empty_and_duplicates(items)
    parts, size_report = recipe.split(medical, general, sizes, args, random.Random(args.seed))

    # Save: the two parts, every item left out with its reason, the summary (and the contamination report).
    outputs = {part: os.path.join(args.output_dir, f"{part}_part.json") for part in recipe.PARTS}
    outputs["dropped"] = os.path.join(args.output_dir, "dropped.json")
    outputs["summary"] = os.path.join(args.output_dir, "summary.json")
    if report is not None:
        outputs["contamination_report"] = report_path
        write_json_atomic(report_path, report)
    for part in recipe.PARTS:
        write_json_atomic(outputs[part], parts[part])
    write_json_atomic(outputs["dropped"], recipe.dropped_rows(items))
    summary = recipe.summarise(inputs, args.seed, items, parts, size_report, report, outputs)
    write_json_atomic(outputs["summary"], summary)
    for part in recipe.PARTS:
        print(f"{part}: {len(parts[part])} rows {summary['parts'][part]['by_data_type']} -> {outputs[part]}")
    print(f"dropped: {summary['dropped']['by_reason']} -> {outputs['dropped']}; summary: {outputs['summary']}")
    left_out = size_report["medical_left_out"]
    if left_out["items"]:
        print(f"{left_out['items']} clean medical items in neither part (not_selected): {left_out['why']}")


if __name__ == "__main__":
    cli.run(main)
