"""Build evaluation/data/eval_data.json ({source: [items]}) from the public benchmark datasets.

Needs network access to the Hugging Face hub (run it once where you have it; offline it stops
with a message naming the dataset). Each --<benchmark> flag also takes a local .json/.jsonl file
of that dataset's rows, and "skip" leaves that benchmark out.

Tracks (source names are the keys of the output; the report maps them to the paper's Table 1):
    MedQA_USLME_test        MedQA-USMLE, 4 options, test split
    MedMCQA_validation      MedMCQA, validation split (opa..opd, cop)
    PubMedQA                PubMedQA labelled set (yes / no / maybe); --pubmedqa_test_ids limits it to
                            the official 500-item test set (a JSON list or dict whose keys are PMIDs)
    MMLU-Pro_Health         MMLU-Pro test, category "health" (up to 10 options)
    MMLU-Pro_Biology        MMLU-Pro test, category "biology"
    GPQA_Genetics           GPQA main (gated: accept its terms on the hub first), subdomain Genetics
    GPQA_Molecular_Biology  GPQA main, subdomain Molecular Biology; GPQA has no option order, so the
                            four answers are shuffled with --seed (the paper averaged 5 orders)

The training side, for prepare_training_data.py (both in the construct stage's input format:
question, options dict, answer_idx, answer, plus source):
    --exam_output       the training sets of MedQA-USMLE and MedMCQA (the paper's 192K exam questions),
                        read from --medqa / --medmcqa at --exam_split (hub ids; local files are read whole)
    --general_output    MMLU-Pro outside the medical tracks: every category except the ones evaluated
                        above (health, biology) and --general_exclude, from the splits in --general_splits
                        (MMLU-Pro has no training split: "validation" holds 70 few-shot examples, "test"
                        12,032 questions; the paper took its 5K general questions from these tracks)
    --output skip       writes only the training side

Usage:
    python evaluation/prepare_eval_data.py --output evaluation/data/eval_data.json
    python evaluation/prepare_eval_data.py --output evaluation/data/eval_data.json \
        --exam_output data/exam_questions.json --general_output data/mmlu_pro_general.json
"""

import json
import os
import random
from collections import Counter
from dataclasses import dataclass, field

from huatuo_o1 import cli
from huatuo_o1.outputs import check_outputs, count_rows, keep_larger_result
from huatuo_o1.records import SOURCE, InputError, load_records, looks_like_hub_id, write_json_atomic

LETTERS = "ABCDEFGHIJKLMNOP"
SOURCE_FLAGS = ("medqa", "medmcqa", "pubmedqa", "mmlu_pro", "gpqa")


@dataclass
class PrepareArguments:
    output: str = field(
        default="evaluation/data/eval_data.json", metadata={"help": "The evaluation file; 'skip' writes none."}
    )
    medqa: str = field(default="GBaker/MedQA-USMLE-4-options", metadata={"help": "Hub id, local file, or 'skip'."})
    medqa_split: str = field(default="test")
    medmcqa: str = field(default="openlifescienceai/medmcqa")
    medmcqa_split: str = field(default="validation")
    pubmedqa: str = field(
        default="qiaojin/PubMedQA:pqa_labeled", metadata={"help": "'id:config' selects a configuration."}
    )
    pubmedqa_split: str = field(
        default="train", metadata={"help": "The labelled set is published as one 1,000-row split."}
    )
    pubmedqa_test_ids: str = field(
        default="", metadata={"help": "JSON with the official test PMIDs (list, or dict keyed by PMID)."}
    )
    mmlu_pro: str = field(default="TIGER-Lab/MMLU-Pro")
    mmlu_pro_split: str = field(default="test")
    gpqa: str = field(default="Idavidrein/gpqa:gpqa_main")
    gpqa_split: str = field(default="train")
    seed: int = field(default=42, metadata={"help": "Order of GPQA's shuffled options."})
    exam_output: str = field(
        default="", metadata={"help": "Also write MedQA-USMLE's and MedMCQA's training sets here (construct input)."}
    )
    exam_split: str = field(default="train", metadata={"help": "Split of --medqa / --medmcqa read for --exam_output."})
    general_output: str = field(
        default="",
        metadata={
            "help": "Also write MMLU-Pro's questions outside the evaluated medical tracks here (construct input)."
        },
    )
    general_splits: str = field(
        default="test,validation", metadata={"help": "MMLU-Pro splits (hub id) read for --general_output."}
    )
    general_exclude: str = field(
        default="", metadata={"help": "Further MMLU-Pro categories to leave out of --general_output, comma-separated."}
    )


def _item(question, option_texts, answer_index, **extra):
    options = {LETTERS[i]: str(text) for i, text in enumerate(option_texts)}
    return {
        "question": question,
        "options": options,
        "answer_idx": LETTERS[answer_index],
        "answer": options[LETTERS[answer_index]],
        **extra,
    }


def convert_medqa(row):
    # GBaker/MedQA-USMLE-4-options rows already have question / options dict / answer_idx.
    options = {letter: str(text) for letter, text in sorted(row["options"].items())}
    return {
        "question": row["question"],
        "options": options,
        "answer_idx": row["answer_idx"],
        "answer": options[row["answer_idx"]],
    }


def convert_medmcqa(row):
    # cop is the index (0-3) of the correct one of opa..opd.
    return _item(row["question"], [row["opa"], row["opb"], row["opc"], row["opd"]], int(row["cop"]), id=row.get("id"))


def convert_pubmedqa(row):
    contexts = row["context"]["contexts"] if isinstance(row["context"], dict) else row["context"]
    question = "Context: " + " ".join(contexts) + "\nQuestion: " + row["question"]
    labels = ["yes", "no", "maybe"]
    return _item(question, labels, labels.index(row["final_decision"].strip().lower()), pubid=row["pubid"])


# MMLU-Pro categories evaluated as medical tracks (source name -> category): never training data.
MMLU_PRO_MEDICAL_TRACKS = {"MMLU-Pro_Health": "health", "MMLU-Pro_Biology": "biology"}


def convert_mmlu_pro(row):
    return _item(row["question"], row["options"], int(row["answer_index"]), question_id=row.get("question_id"))


def convert_mmlu_pro_general(row):
    category = str(row["category"])
    source = "MMLU-Pro_" + category.replace(" ", "_")
    return {**convert_mmlu_pro(row), SOURCE: source, "category": category, "src": row.get("src")}


def convert_gpqa(row, rng):
    answers = [row["Correct Answer"], row["Incorrect Answer 1"], row["Incorrect Answer 2"], row["Incorrect Answer 3"]]
    order = list(range(4))
    rng.shuffle(order)
    return _item(row["Question"].strip(), [answers[i].strip() for i in order], order.index(0))


def _convert_all(name, rows, convert):
    items = []
    for index, row in enumerate(rows):
        try:
            items.append(convert(row))
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise InputError(
                f"{name}: row {index} does not look like this dataset's rows ({type(e).__name__}: {e})"
            ) from None
    return items


def build_eval_data(args):
    data = {}
    if args.medqa != "skip":
        data["MedQA_USLME_test"] = _convert_all(
            args.medqa, load_records(args.medqa, split=args.medqa_split), convert_medqa
        )
    if args.medmcqa != "skip":
        data["MedMCQA_validation"] = _convert_all(
            args.medmcqa, load_records(args.medmcqa, split=args.medmcqa_split), convert_medmcqa
        )
    if args.pubmedqa != "skip":
        rows = load_records(args.pubmedqa, split=args.pubmedqa_split)
        if args.pubmedqa_test_ids:
            try:
                with open(args.pubmedqa_test_ids, encoding="utf-8") as f:
                    test_ids = {str(pmid) for pmid in json.load(f)}
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as e:
                raise InputError(
                    f"--pubmedqa_test_ids {args.pubmedqa_test_ids}: not a readable JSON list or dict of PMIDs "
                    f"({type(e).__name__})"
                ) from None
            rows = [row for row in rows if str(row["pubid"]) in test_ids]
        data["PubMedQA"] = _convert_all(args.pubmedqa, rows, convert_pubmedqa)
    if args.mmlu_pro != "skip":
        rows = load_records(args.mmlu_pro, split=args.mmlu_pro_split)
        for source, category in MMLU_PRO_MEDICAL_TRACKS.items():
            data[source] = _convert_all(
                args.mmlu_pro, [r for r in rows if r.get("category") == category], convert_mmlu_pro
            )
    if args.gpqa != "skip":
        rows = load_records(args.gpqa, split=args.gpqa_split)
        rng = random.Random(args.seed)
        for source, subdomain in (("GPQA_Genetics", "Genetics"), ("GPQA_Molecular_Biology", "Molecular Biology")):
            picked = [r for r in rows if str(r.get("Subdomain", "")).strip() == subdomain]
            data[source] = _convert_all(args.gpqa, picked, lambda row: convert_gpqa(row, rng))
    return data


def build_exam_questions(args):
    """MedQA-USMLE's and MedMCQA's training sets as construct input, each row with its source."""
    items = []
    for path, source, convert in (
        (args.medqa, "MedQA_USMLE_train", convert_medqa),
        (args.medmcqa, "MedMCQA_train", convert_medmcqa),
    ):
        if path != "skip":
            rows = _convert_all(path, load_records(path, split=args.exam_split), convert)
            items += [{**item, SOURCE: source} for item in rows]
    return items


def build_general_questions(args):
    """MMLU-Pro questions of every category but the evaluated medical tracks (and --general_exclude)."""
    if args.mmlu_pro == "skip":
        raise InputError("--general_output needs --mmlu_pro (a hub id or a local file of MMLU-Pro rows)")
    excluded = set(MMLU_PRO_MEDICAL_TRACKS.values()) | {
        c.strip() for c in args.general_exclude.split(",") if c.strip()
    }
    if looks_like_hub_id(args.mmlu_pro):
        splits = [s.strip() for s in args.general_splits.split(",") if s.strip()]
        rows = [row for split in splits for row in load_records(args.mmlu_pro, split=split)]
    else:
        rows = load_records(args.mmlu_pro)  # a local file holds whichever rows were put in it
    picked = [row for row in rows if str(row.get("category", "")).strip() not in excluded]
    return _convert_all(args.mmlu_pro, picked, convert_mmlu_pro_general)


def main():
    (args,) = cli.parse((PrepareArguments,))
    sources = {f"--{name}": getattr(args, name) for name in SOURCE_FLAGS if getattr(args, name) != "skip"}
    builders = {"--output": build_eval_data, "--exam_output": build_exam_questions,
                "--general_output": build_general_questions}  # fmt: skip
    outputs = {flag: getattr(args, flag[2:]) for flag in builders if getattr(args, flag[2:]) not in ("", "skip")}
    if not sources:
        kept = f"; {args.output} is kept as it is" if os.path.exists(args.output) else ""
        raise InputError(f"every benchmark is 'skip': nothing to build, nothing written{kept}")
    if not outputs:
        raise InputError("--output skip and no --exam_output or --general_output: nothing to write")
    check_outputs(
        [(flag, path, False) for flag, path in outputs.items()],
        {**sources, "--pubmedqa_test_ids": args.pubmedqa_test_ids},
    )
    built = {flag: builders[flag](args) for flag in outputs}
    for flag, data in built.items():
        if not count_rows(data):
            kept = f"; {outputs[flag]} is kept as it is" if os.path.exists(outputs[flag]) else ""
            raise InputError(f"the benchmarks gave no items for {flag} ({', '.join(sources)}): nothing written{kept}")
        keep_larger_result(outputs[flag], count_rows(data), flag)
    for flag, data in built.items():
        write_json_atomic(outputs[flag], data)
        counts = (
            {s: len(items) for s, items in data.items()}
            if isinstance(data, dict)
            else Counter(item[SOURCE] for item in data)
        )
        for source, count in counts.items():
            print(f"{source}: {count} items")
        print(f"wrote {outputs[flag]}")


if __name__ == "__main__":
    cli.run(main)
