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

The Chinese track (--zh_output, its own file: the paper evaluated it apart, for HuatuoGPT-o1-7B-zh; Table 4):
    MedQA_MCMLE_test        MedQA's Chinese (mainland) test set (question, options, answer_idx)
    CMB_Exam_test           CMB-Exam test; its answers are published apart: --cmb_answers joins them by id
    CMExam_test             CMExam test (Question, Options "A text" lines, Answer)
    CMMLU_Medical           CMMLU test, the paper's medical subjects (--cmmlu_subjects)
Questions with more than one right answer (CMB's and CMExam's multiple-answer ones) are left out, and
counted: the scorers read one letter. Local files: the releases' own JSON/JSONL, CMExam's CSV, and for
CMMLU a folder of its per-subject CSV files.

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
    python evaluation/prepare_eval_data.py --output skip --zh_output evaluation/data/eval_data_zh.json \
        --cmb_answers CMB/data/CMB-test-choice-answer.json
    python evaluation/prepare_eval_data.py --output evaluation/data/eval_data.json \
        --exam_output data/exam_questions.json --general_output data/mmlu_pro_general.json
"""

import csv
import os
import random
import re
from collections import Counter
from dataclasses import dataclass, field

from huatuo_o1 import cli
from huatuo_o1.outputs import check_outputs, count_rows, keep_larger_result
from huatuo_o1.records import SOURCE, InputError, load_records, looks_like_hub_id, read_json, write_json_atomic

LETTERS = "ABCDEFGHIJKLMNOP"
SOURCE_FLAGS = ("medqa", "medmcqa", "pubmedqa", "mmlu_pro", "gpqa")
CHINESE_FLAGS = ("medqa_mcmle", "cmb", "cmexam", "cmmlu")
# The CMMLU subjects the paper evaluated as "CMMLU (Med)" (appendix G), by CMMLU's own names.
CMMLU_MEDICAL_SUBJECTS = (
    "clinical_knowledge,agronomy,college_medicine,genetics,nutrition,traditional_chinese_medicine,virology"
)


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
    zh_output: str = field(
        default="",
        metadata={
            "help": "Also write the Chinese track here (MedQA-MCMLE, CMB-Exam, CMExam, CMMLU's medical subjects)."
        },
    )
    medqa_mcmle: str = field(
        default="bigbio/med_qa:med_qa_zh_source",
        metadata={"help": "MedQA's Chinese rows: hub id, local file (the release's Mainland test.jsonl), or 'skip'."},
    )
    medqa_mcmle_split: str = field(default="test")
    cmb: str = field(
        default="FreedomIntelligence/CMB:exam",
        metadata={"help": "CMB-Exam rows: hub id, local file (CMB-test-choice-question-merge.json), or 'skip'."},
    )
    cmb_split: str = field(default="test")
    cmb_answers: str = field(
        default="", metadata={"help": "CMB-test-choice-answer.json (the test answers, published apart), joined by id."}
    )
    cmexam: str = field(
        default="fzkuji/CMExam",
        metadata={"help": "CMExam rows: hub id, local file (test_with_annotations.csv), or 'skip'."},
    )
    cmexam_split: str = field(default="test")
    cmmlu: str = field(
        default="haonan-li/cmmlu",
        metadata={
            "help": "CMMLU: hub id (one configuration per subject), a folder of <subject>.csv, a file, or 'skip'."
        },
    )
    cmmlu_split: str = field(default="test")
    cmmlu_subjects: str = field(
        default=CMMLU_MEDICAL_SUBJECTS,
        metadata={"help": "CMMLU subjects of the CMMLU_Medical track, comma-separated."},
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
                test_ids = read_json(args.pubmedqa_test_ids)
            except InputError as e:
                raise InputError(f"--pubmedqa_test_ids {e}") from None
            if not isinstance(test_ids, (list, dict)):
                raise InputError(
                    f"--pubmedqa_test_ids {args.pubmedqa_test_ids}: a JSON {type(test_ids).__name__}, expected a list "
                    "or dict of PMIDs"
                )
            test_ids = {str(pmid) for pmid in test_ids}
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


# The Chinese track: the benchmarks of the paper's Table 4.


def read_rows(path, split):
    """Rows of a hub id, a local JSON/JSONL file, or a local CSV file (CMExam's and CMMLU's releases)."""
    if not (path.endswith(".csv") and os.path.isfile(path)):
        return load_records(path, split=split)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path}: not a readable CSV file with a header line ({type(e).__name__})") from None


OPTION_LINE = re.compile(r"\s*([A-Z])\s*[.．、:：)）]?\s*(.*?)\s*")  # "A 麻疹", "B. 风疹", "C、水痘"


def chinese_options(value):
    """{letter: text} from a dict, a list of {"key", "value"} or lines "A text"; options without text left out."""
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list):
        pairs = [(option["key"], option["value"]) for option in value]
    elif isinstance(value, str):
        pairs = []
        for line in filter(str.strip, value.splitlines()):
            match = OPTION_LINE.fullmatch(line)
            if match is None:
                raise ValueError(f"option line {line[:40]!r} does not start with its letter")
            pairs.append(match.groups())
    else:
        raise TypeError(f"options given as {type(value).__name__}")
    return {str(letter).strip(): str(text).strip() for letter, text in sorted(pairs) if text and str(text).strip()}


def chinese_item(question, options, answer, **extra):
    """The item, or None when it has more than one right answer (or none): the scorers read one letter."""
    answer = str(answer or "").strip()
    if len(answer) != 1:
        return None
    if answer not in options:
        raise ValueError(f"answer {answer!r} is not one of the options {list(options)}")
    return {"question": str(question).strip(), "options": options, "answer_idx": answer, "answer": options[answer],
            **extra}  # fmt: skip


def convert_medqa_mcmle(row):
    # MedQA's release: options a dict; the hub's bigbio copy: a list of {"key", "value"}.
    return chinese_item(row["question"], chinese_options(row["options"]), row["answer_idx"])


def convert_cmb(row):
    options = chinese_options(row["option"])
    return chinese_item(row["question"], options, row["answer"], id=row.get("id"), exam_class=row.get("exam_class"))


def convert_cmexam(row):
    # The release's CSV columns; Options holds one "A text" line per option, Answer the letter(s).
    return chinese_item(row["Question"], chinese_options(row["Options"]), row["Answer"])


def convert_cmmlu(row_and_subject):
    row, subject = row_and_subject
    return chinese_item(row["Question"], chinese_options({x: row[x] for x in "ABCD"}), row["Answer"], subject=subject)


def cmb_rows(args):
    """CMB-Exam's rows with their answers: the test answers are published apart, joined by id."""
    rows = load_records(args.cmb, split=args.cmb_split)
    if args.cmb_answers:
        answers = {str(r["id"]): r["answer"] for r in load_records(args.cmb_answers, required_fields=("id", "answer"))}
        missing = [str(row.get("id")) for row in rows if str(row.get("id")) not in answers]
        if missing:
            raise InputError(
                f"--cmb_answers {args.cmb_answers}: no answer for CMB id {missing[0]} ({len(missing)} ids)"
            )
        rows = [{**row, "answer": answers[str(row["id"])]} for row in rows]
    elif not any(str(row.get("answer") or "").strip() for row in rows):
        raise InputError(
            f"--cmb {args.cmb}: the rows carry no answers (CMB-Exam's test answers are published apart): pass "
            "--cmb_answers CMB-test-choice-answer.json, from the data/ folder of the CMB repository"
        )
    return rows


def cmmlu_rows(args):
    """(row, subject) for every row of the --cmmlu_subjects: per-subject hub configurations or CSV files."""
    subjects = [subject.strip() for subject in args.cmmlu_subjects.split(",") if subject.strip()]
    if os.path.isdir(args.cmmlu):
        paths = {subject: os.path.join(args.cmmlu, f"{subject}.csv") for subject in subjects}
        absent = [path for path in paths.values() if not os.path.isfile(path)]
        if absent:
            raise InputError(f"--cmmlu {args.cmmlu}: no {absent[0]} (CMMLU's test/ folder has one CSV per subject)")
        per_subject = {subject: read_rows(path, args.cmmlu_split) for subject, path in paths.items()}
    elif looks_like_hub_id(args.cmmlu):
        per_subject = {s: load_records(f"{args.cmmlu}:{s}", split=args.cmmlu_split) for s in subjects}
    else:  # one file whose rows name their subject
        rows = read_rows(args.cmmlu, args.cmmlu_split)
        per_subject = {subject: [row for row in rows if row.get("subject") == subject] for subject in subjects}
    return [(row, subject) for subject, rows in per_subject.items() for row in rows]


def build_chinese_eval_data(args):
    tracks = [  # (source, flag value, rows, converter)
        ("MedQA_MCMLE_test", args.medqa_mcmle, lambda: read_rows(args.medqa_mcmle, args.medqa_mcmle_split),
         convert_medqa_mcmle),
        ("CMB_Exam_test", args.cmb, lambda: cmb_rows(args), convert_cmb),
        ("CMExam_test", args.cmexam, lambda: read_rows(args.cmexam, args.cmexam_split), convert_cmexam),
        ("CMMLU_Medical", args.cmmlu, lambda: cmmlu_rows(args), convert_cmmlu),
    ]  # fmt: skip
    data = {}
    for source, name, rows, convert in tracks:
        if name == "skip":
            continue
        items = _convert_all(name, rows(), convert)
        data[source] = [item for item in items if item is not None]
        if len(data[source]) < len(items):
            left_out = len(items) - len(data[source])
            print(f"{source}: {left_out} questions left out (more than one right answer, or none given)")
    return data


# Each output: what builds it and the benchmark flags it reads.
OUTPUTS = {
    "--output": (build_eval_data, SOURCE_FLAGS),
    "--exam_output": (build_exam_questions, ("medqa", "medmcqa")),
    "--general_output": (build_general_questions, ("mmlu_pro",)),
    "--zh_output": (build_chinese_eval_data, CHINESE_FLAGS),
}


def main():
    (args,) = cli.parse((PrepareArguments,))
    outputs = {flag: getattr(args, flag[2:]) for flag in OUTPUTS if getattr(args, flag[2:]) not in ("", "skip")}
    if not outputs:
        raise InputError("--output skip and no --exam_output, --general_output or --zh_output: nothing to write")
    for flag in ("--output", "--zh_output"):  # an evaluation file of no benchmark at all
        if flag in outputs and all(getattr(args, name) == "skip" for name in OUTPUTS[flag][1]):
            kept = f"; {outputs[flag]} is kept as it is" if os.path.exists(outputs[flag]) else ""
            raise InputError(f"every benchmark is 'skip' for {flag}: nothing to build, nothing written{kept}")
    inputs = {f"--{name}": getattr(args, name) for name in SOURCE_FLAGS + CHINESE_FLAGS + ("pubmedqa_test_ids",
              "cmb_answers") if getattr(args, name) != "skip"}  # fmt: skip
    check_outputs([(flag, path, False) for flag, path in outputs.items()], inputs)
    built = {flag: OUTPUTS[flag][0](args) for flag in outputs}
    for flag, data in built.items():
        if not count_rows(data):
            kept = f"; {outputs[flag]} is kept as it is" if os.path.exists(outputs[flag]) else ""
            read = ", ".join(f"--{name}" for name in OUTPUTS[flag][1] if getattr(args, name) != "skip")
            raise InputError(f"the benchmarks gave no items for {flag} ({read}): nothing written{kept}")
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
