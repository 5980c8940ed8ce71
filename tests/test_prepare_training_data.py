"""prepare_training_data.py: the 64-character contamination test, the seeded disjoint split, closed-set and
general-domain items, the accounting, --check_only, and rows that the search and RL stages read."""

import json
import random
import string

import numpy as np
import pytest
import torch

from huatuo_o1 import decontamination, recipe
from huatuo_o1.decontamination import EvalIndex, EvalText, nfkc_lower_single_spaced
from huatuo_o1.records import GROUND_TRUTH as ANSWER
from huatuo_o1.records import OPEN_QUESTION as QUESTION
from tests.scripts import run_ok, run_script

PREPARE = "prepare_training_data.py"  # run whole, in this process
STOCK = "Which of the following is the most appropriate next step in management?"  # 71 characters


def words(rng, n):
    return " ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))) for _ in range(n))


def mc_row(rng, source=None, n_options=4, answer="B"):
    options = {letter: words(rng, 3) for letter in "ABCDE"[:n_options]}
    row = {
        "question": words(rng, 25),
        "options": options,
        "answer_idx": answer,
        "answer": options[answer],
        QUESTION: words(rng, 30),
        ANSWER: words(rng, 3),
    }
    if source:
        row["source"] = source
    return row


def write(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


def load(path):
    with open(path) as f:
        return json.load(f)


# ---- the contamination test ----------------------------------------------------------------------


def test_normalise():
    assert nfkc_lower_single_spaced("  Which\tOF the\n\nfollowing  ") == "which of the following"
    assert nfkc_lower_single_spaced("ﬁbrosis\u00a0IS") == "fibrosis is"  # NFKC: the ligature and the no-break space


@pytest.fixture
def planted(tmp_path):
    """An evaluation file and training rows planted with overlaps of exactly 64 and 63 characters."""
    rng = random.Random(1)
    eval_question = words(rng, 40)  # letters and spaces only
    long_option = words(rng, 20)
    evaluation = {
        "MedQA_USLME_test": [
            {"question": words(rng, 30), "options": {"A": "x", "B": "y"}, "answer_idx": "A"},
            {"question": eval_question, "options": {"A": "yes", "B": "no"}, "answer_idx": "B"},
        ],
        "MMLU-Pro_Health": [
            {"question": words(rng, 30), "options": {"A": "p", "B": "q", "C": long_option}, "answer_idx": "C"}
        ],
    }
    piece64, piece63 = eval_question[10:74], eval_question[10:73]
    option64 = long_option[5:69]
    rows = [mc_row(rng) for _ in range(8)]
    # '#' occurs in no evaluation text, so each shared stretch is exactly as long as planted.
    rows[1][QUESTION] = "Case: #" + piece64 + "# what now?"
    rows[2][QUESTION] = "Case: #" + piece63 + "# what now?"
    rows[3]["question"] = "#" + option64 + "#"
    rows[4][QUESTION] = "#" + piece64.upper().replace(" ", " \n\t ") + "#"  # same text after normalisation
    rows[5]["options"]["C"] = "#" + option64 + "#"
    rows[6][ANSWER] = "#" + long_option[:63] + "#"
    return {
        "eval": write(tmp_path / "eval.json", evaluation),
        "train": write(tmp_path / "train.json", rows),
        "piece64": piece64,
        "option64": option64,
        "tmp": tmp_path,
    }


def test_64_shared_characters_drop_an_item_63_do_not(planted):
    out_dir = planted["tmp"] / "out"
    out = run_ok(
        PREPARE,
        [
            "--data_path",
            planted["train"],
            "--eval_file",
            planted["eval"],
            "--closed_set_size",
            "0",
            "--output_dir",
            str(out_dir),
        ],
    ).stdout
    dropped = {d["origin"]: d for d in load(out_dir / "dropped.json")}
    assert sorted(dropped) == ["train#1", "train#3", "train#4", "train#5"]
    assert {d["reason"] for d in dropped.values()} == {"contaminated"}
    assert dropped["train#1"]["benchmarks"] == ["MedQA_USLME_test"]
    assert dropped["train#1"]["overlaps"] == [
        {"field": QUESTION, "eval_item": "MedQA_USLME_test/1", "eval_field": "question", "text": planted["piece64"]}
    ]
    assert (
        dropped["train#4"]["overlaps"][0]["text"] == planted["piece64"]
    )  # found after case and whitespace normalisation
    assert dropped["train#3"]["overlaps"] == [
        {"field": "question", "eval_item": "MMLU-Pro_Health/0", "eval_field": "option C", "text": planted["option64"]}
    ]
    assert dropped["train#5"]["overlaps"][0]["field"] == "options.C"
    report = load(out_dir / "contamination_report.json")
    assert report["contaminated_items"] == 4
    assert {s: v["items"] for s, v in report["per_benchmark"].items()} == {"MMLU-Pro_Health": 2, "MedQA_USLME_test": 2}
    assert [e["origin"] for e in report["per_benchmark"]["MedQA_USLME_test"]["examples"]] == ["train#1", "train#4"]
    assert report["contaminated_by_field"] == {QUESTION: 2, "options": 1, "question": 1}
    kept = {row["origin"] for part in ("search", "rl") for row in load(out_dir / f"{part}_part.json")}
    assert kept == {"train#0", "train#2", "train#6", "train#7"}  # 63 shared characters (question, answer) are kept
    assert "MedQA_USLME_test: 2 items" in out


# Chinese: the same rule against the Chinese track's questions (questions written for these tests). A
# 78-character vignette says in Chinese what takes 333 characters in English, so 64 shared characters are
# most of a question; questions under 64 characters (most of CMExam's) can never match.
VIGNETTE_ZH = (
    "男，8岁。发热3天，伴咳嗽、流涕、畏光流泪。查体：体温39.5℃，口腔颊黏膜近第一磨牙处可见灰白色小点，"
    "周围有红晕，耳后发际处可见红色斑丘疹。最可能的诊断是"
)
SHORT_ZH = "女，45岁。多饮、多尿、体重下降2个月。空腹血糖9.8mmol/L，糖化血红蛋白8.2%。首选的治疗药物是"


def test_normalise_chinese():
    # NFKC turns full-width punctuation half-width; a line break or space beside a CJK character is layout.
    assert nfkc_lower_single_spaced("患者\n男性，45 岁。（37～38℃）") == "患者男性,45岁。(37~38°c)"
    assert len(nfkc_lower_single_spaced(VIGNETTE_ZH)) == 79 and len(nfkc_lower_single_spaced(SHORT_ZH)) == 53


def test_chinese_copies_share_64_characters_short_questions_only_a_smaller_window(tmp_path):
    evaluation = {
        "CMB_Exam_test": [{"question": VIGNETTE_ZH, "options": {"A": "风疹", "B": "麻疹"}, "answer_idx": "B"}],
        "CMExam_test": [{"question": SHORT_ZH, "options": {"A": "二甲双胍", "B": "胰岛素"}, "answer_idx": "A"}],
    }
    retyped = VIGNETTE_ZH.replace("，", ", ").replace("查体：", "查体:\n")  # half-width, spaced, wrapped
    rows = [
        {QUESTION: "请根据病例作答：" + retyped, ANSWER: "麻疹"},
        {QUESTION: SHORT_ZH + "？", ANSWER: "二甲双胍"},
        {QUESTION: "女，30岁。反复关节痛1年，晨僵。最可能的诊断是", ANSWER: "类风湿关节炎"},
    ]
    paths = [write(tmp_path / "eval_zh.json", evaluation), write(tmp_path / "train_zh.json", rows)]
    found = {}
    for window in ("64", "16"):
        report = tmp_path / f"report_{window}.json"
        argv = ["--check_only", "--data_path", paths[1], "--eval_file", paths[0], "--report_path", str(report)]
        result = run_script(PREPARE, [*argv, "--window", window])
        assert result.returncode == 3, result.stderr
        found[window] = {
            source: [example["origin"] for example in entry["examples"]]
            for source, entry in load(report)["per_benchmark"].items()
            if entry["items"]
        }
    assert found["64"] == {"CMB_Exam_test": ["train_zh#0"]}  # the short question cannot hold 64 characters
    assert found["16"] == {"CMB_Exam_test": ["train_zh#0"], "CMExam_test": ["train_zh#1"]}  # stock phrasing is not


def test_index_agrees_with_brute_force_across_batches(monkeypatch):
    monkeypatch.setattr(decontamination, "_BATCH_CHARS", 300)  # many numpy batches, windows near every text boundary
    rng = random.Random(3)
    texts = lambda n: ["".join(rng.choice("ab") for _ in range(rng.randint(5, 120))) for _ in range(n)]  # noqa: E731
    evals = [EvalText(f"S{i % 3}", i, "question", t) for i, t in enumerate(texts(60))]
    training = [(i, "q", t) for i, t in enumerate(texts(200))]
    found = EvalIndex(evals, window=12).check(training)
    expected = {}
    for i, _, t in training:
        for e in evals:
            if any(t[a : a + 12] in e.text for a in range(len(t) - 11)):
                expected.setdefault(i, set()).add(e.source)
    assert 0 < len(expected) < len(training)
    assert {i: set(c.sources) for i, c in found.items()} == expected
    for i, contamination in found.items():
        for overlap in contamination.overlaps:  # each reported stretch really is in both texts, at least a window long
            assert len(overlap.text) >= 12 and overlap.text in training[i][2]
            assert overlap.text in next(
                e.text for e in evals if e.source == overlap.eval_source and e.item == overlap.eval_item
            )


def test_stock_phrase_threshold():
    rng = random.Random(4)
    vignettes = [nfkc_lower_single_spaced(words(rng, 20) + " " + STOCK) for _ in range(3)]
    evals = [EvalText("MedQA_USLME_test", i, "question", t) for i, t in enumerate(vignettes)]
    stock_only = (0, "q", nfkc_lower_single_spaced(words(rng, 15) + " " + STOCK))
    copied = (1, "q", vignettes[2][-140:])  # the stock sentence with 69 characters of a real question before it
    assert set(EvalIndex(evals).check([stock_only, copied])) == {0, 1}  # the paper's rule: every window counts
    index = EvalIndex(evals, stock_phrase_threshold=3)
    assert index.stock_windows == 9  # the 71-character sentence and the space before it: 9 windows, in all 3 questions
    found = index.check([stock_only, copied])
    assert set(found) == {1}  # 68 characters of the copy touch no stock window
    assert found[1].overlaps[0].text == vignettes[2][-140:]  # the report shows the whole shared stretch
    assert set(EvalIndex(evals, stock_phrase_threshold=4).check([stock_only, copied])) == {
        0,
        1,
    }  # no window is in 4 questions


# ---- the split ------------------------------------------------------------------------------------


@pytest.fixture
def three_sources(tmp_path):
    rng = random.Random(5)
    rows = [mc_row(rng, source) for source, n in (("MedQA", 60), ("MedMCQA", 30), ("Other", 10)) for _ in range(n)]
    evaluation = {
        "MedQA_USLME_test": [{"question": words(rng, 20), "options": {"A": "x", "B": "y"}, "answer_idx": "A"}]
    }
    return {
        "train": write(tmp_path / "verifiable.json", rows),
        "rows": rows,
        "eval": write(tmp_path / "eval_three.json", evaluation),
        "tmp": tmp_path,
    }


def split_run(data, name, *extra, train=None):
    out_dir = data["tmp"] / name
    run_ok(
        PREPARE,
        ["--data_path", train or data["train"], "--eval_file", data["eval"], "--output_dir", str(out_dir), *extra],
    )
    parts = {part: load(out_dir / f"{part}_part.json") for part in ("search", "rl")}
    return parts, load(out_dir / "dropped.json"), load(out_dir / "summary.json")


def test_split_is_disjoint_complete_stratified_and_seeded(three_sources):
    parts, dropped, summary = split_run(
        three_sources, "a", "--search_size", "0.5", "--rl_size", "0.3", "--closed_set_size", "0"
    )
    search = {row["origin"] for row in parts["search"]}
    rl = {row["origin"] for row in parts["rl"]}
    left_out = {d["origin"] for d in dropped}
    assert (len(search), len(rl), len(left_out)) == (50, 30, 20)
    assert not search & rl and not (search | rl) & left_out
    assert search | rl | left_out == {f"verifiable#{i}" for i in range(100)}
    assert {d["reason"] for d in dropped} == {"not_selected"}
    for part, share in (("search", 0.5), ("rl", 0.3)):
        by_source = {s: sum(row["source"] == s for row in parts[part]) for s in ("MedQA", "MedMCQA", "Other")}
        assert by_source == {"MedQA": round(60 * share), "MedMCQA": round(30 * share), "Other": round(10 * share)}
    assert {row["data_type"] for part in parts.values() for row in part} == {"medical"}
    original = {f"verifiable#{i}": row for i, row in enumerate(three_sources["rows"])}
    row = parts["rl"][0]
    assert {k: v for k, v in row.items() if k not in ("data_type", "origin")} == original[
        row["origin"]
    ]  # fields unchanged

    again, _, _ = split_run(three_sources, "b", "--search_size", "0.5", "--rl_size", "0.3", "--closed_set_size", "0")
    assert again == parts  # same seed: the same parts, rows in the same order
    other, _, _ = split_run(
        three_sources, "c", "--search_size", "0.5", "--rl_size", "0.3", "--closed_set_size", "0", "--seed", "7"
    )
    assert {row["origin"] for row in other["search"]} != search
    shuffled = list(enumerate(three_sources["rows"]))
    random.Random(0).shuffle(shuffled)
    reordered, _, _ = split_run(
        three_sources,
        "d",
        "--search_size",
        "0.5",
        "--rl_size",
        "0.3",
        "--closed_set_size",
        "0",
        train=write(three_sources["tmp"] / "reordered.json", [row for _, row in shuffled]),
    )
    position = {f"reordered#{new}": f"verifiable#{old}" for new, (old, _) in enumerate(shuffled)}
    assert {
        position[row["origin"]] for row in reordered["search"]
    } == search  # the split follows the items, not their order


def test_stratified_counts_within_rounding():
    counts = recipe.stratified_counts({"a": 7, "b": 5, "c": 1}, 6)
    assert counts == {"a": 3, "b": 2, "c": 1} or counts == {"a": 4, "b": 2, "c": 0}
    assert sum(counts.values()) == 6
    for s, n in {"a": 7, "b": 5, "c": 1}.items():
        assert abs(counts[s] - 6 * n / 13) < 1
    rest = recipe.stratified_counts(
        {"a": 7, "b": 5, "c": 1}, 7, {s: n - counts[s] for s, n in {"a": 7, "b": 5, "c": 1}.items()}
    )
    assert sum(rest.values()) == 7 and all(rest[s] + counts[s] <= n for s, n in {"a": 7, "b": 5, "c": 1}.items())


def test_closed_set_rows_keep_their_options(three_sources):
    parts, _, summary = split_run(
        three_sources,
        "closed",
        "--search_size",
        "0.5",
        "--rl_size",
        "0.5",
        "--closed_set_size",
        "10",
        "--closed_set_part",
        "rl",
    )
    closed = [row for row in parts["rl"] if row["data_type"] == "medical_closed_set"]
    assert len(closed) == 10 and summary["sizes"]["closed_set"]["got"] == 10
    assert {row["source"] for row in closed} == {"MedQA", "MedMCQA", "Other"}  # 6 / 3 / 1: stratified too
    open_ended_rl = {row["origin"] for row in parts["rl"] if row["data_type"] == "medical"}
    assert {row["origin"] for row in closed} <= open_ended_rl  # copies of the part's own items: nothing crosses parts
    original = {f"verifiable#{i}": row for i, row in enumerate(three_sources["rows"])}
    for row in closed:
        item = original[row["origin"]]
        options = item["options"]
        assert row[QUESTION] == (
            item["question"] + "\n" + f"A. {options['A']}\nB. {options['B']}\nC. {options['C']}\nD. {options['D']}"
        )
        assert row[ANSWER] == "B. " + options["B"]
        assert (row["question"], row["options"], row["answer_idx"]) == (item["question"], options, "B")
    assert not any(row["data_type"] == "medical_closed_set" for row in parts["search"])


def test_closed_set_from_unused_items(three_sources):
    parts, dropped, summary = split_run(
        three_sources,
        "unused",
        "--search_size",
        "40",
        "--rl_size",
        "40",
        "--closed_set_size",
        "0.1",
        "--closed_set_from",
        "unused",
    )
    closed = {row["origin"] for row in parts["search"] if row["data_type"] == "medical_closed_set"}
    open_ended = {row["origin"] for part in parts.values() for row in part if row["data_type"] == "medical"}
    assert len(closed) == 10 and not closed & open_ended and not closed & {d["origin"] for d in dropped}
    assert summary["accounting"] == {"input_items": 100, "in_search": 50, "in_rl": 40, "dropped": 10}


def test_general_items_and_summary_add_up(three_sources):
    rng = random.Random(6)
    general = [mc_row(rng, f"MMLU-Pro_{c}") for c in ("math", "law") for _ in range(10)]
    general[3][QUESTION] = three_sources["rows"][0][QUESTION].upper()  # a duplicate of a medical item
    general_path = write(three_sources["tmp"] / "general.json", general)
    medical_rows = three_sources["rows"] + [
        dict(three_sources["rows"][5], **{ANSWER: " "})
    ]  # an empty answer (and a duplicate)
    medical_rows.append(
        {**three_sources["rows"][7], QUESTION: "a different rewrite"}
    )  # same exam question and options
    train = write(three_sources["tmp"] / "medical.json", medical_rows)
    parts, dropped, summary = split_run(
        three_sources,
        "general",
        "--general_data_path",
        general_path,
        "--general_size",
        "12",
        "--general_part",
        "rl",
        "--closed_set_size",
        "0.1",
        train=train,
    )
    reasons = {d["origin"]: (d["reason"], d.get("duplicate_of")) for d in dropped}
    assert reasons["medical#100"] == ("empty", None)
    assert reasons["medical#101"] == ("duplicate", "medical#7")
    assert reasons["general#3"] == ("duplicate", "medical#0")
    assert sorted(r for r, _ in reasons.values()) == ["duplicate", "duplicate", "empty"] + ["not_selected"] * 7
    general_rows = [row for row in parts["rl"] if row["data_type"] == "general"]
    assert len(general_rows) == 12 and {row["source"] for row in general_rows} == {"MMLU-Pro_math", "MMLU-Pro_law"}
    assert not any(row["data_type"] == "general" for row in parts["search"])
    accounting = summary["accounting"]
    assert accounting["input_items"] == 102 + 20
    assert accounting["in_search"] + accounting["in_rl"] + accounting["dropped"] == accounting["input_items"]
    assert accounting == {"input_items": 122, "in_search": 50, "in_rl": 62, "dropped": 10}
    assert summary["parts"]["search"]["rows"] == len(parts["search"]) == 60  # 50 open-ended + 10 closed-set copies
    assert summary["parts"]["search"]["by_data_type"] == {"medical": 50, "medical_closed_set": 10}
    assert summary["parts"]["rl"]["by_data_type"] == {"medical": 50, "general": 12}
    assert sum(summary["dropped"]["by_reason"].values()) == summary["dropped"]["items"] == len(dropped)
    assert summary["sizes"]["general"] == {"asked": "12", "got": 12, "part": "rl"}
    assert summary["seed"] == 42


# ---- check only, bad input ----------------------------------------------------------------------


def test_check_only_exit_codes(planted, three_sources, tmp_path):
    report = tmp_path / "report.json"
    sft = write(
        tmp_path / "sft.json",
        [
            {"Question": "#" + planted["piece64"] + "#", "Complex_CoT": "..", "Response": ".."},
            {"Question": "clean", "Complex_CoT": "..", "Response": ".."},
        ],
    )
    result = run_script(
        PREPARE, ["--check_only", "--data_path", sft, "--eval_file", planted["eval"], "--report_path", str(report)]
    )
    assert result.returncode == 3  # contamination found
    assert load(report)["per_benchmark"]["MedQA_USLME_test"]["examples"][0]["origin"] == "sft#0"
    result = run_script(
        PREPARE,
        [
            "--check_only",
            "--data_path",
            three_sources["train"],
            "--eval_file",
            planted["eval"],
            "--report_path",
            str(report),
            "--output_dir",
            str(tmp_path / "never"),
        ],
    )
    assert result.returncode == 0 and load(report)["contaminated_items"] == 0
    assert not (tmp_path / "never").exists()  # nothing but the report
    result = run_script(
        PREPARE, ["--check_only", "--data_path", str(tmp_path / "missing.json"), "--eval_file", planted["eval"]]
    )
    # bad input
    assert result.returncode == 1 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_field", "bad.json: row 1 lacks the field(s) 'Ground-True Answer'"),
        ("unknown_file", "nowhere.json: no such file"),
        ("unknown_eval", "no_eval.json: no such file"),
        ("bad_size", "--search_size 'half': expected a count"),
        ("too_many", "ask for 120 items, but 100 medical items are left"),
        ("closed_set", "asks for 60 closed-set items, but only 50 items of the search part"),
        ("report_over_input", "(the same file): pass another --report_path"),
        ("unknown_flag", "unknown flag --serch_size (did you mean --search_size?)"),
    ],
)
def test_bad_input_gets_one_line(three_sources, case, message):
    tmp = three_sources["tmp"]
    argv = {
        "missing_field": ["--data_path", write(tmp / "bad.json", [mc_row(random.Random(0)), {QUESTION: "q"}])],
        "unknown_file": ["--data_path", str(tmp / "nowhere.json")],
        "unknown_eval": ["--eval_file", str(tmp / "no_eval.json")],
        "bad_size": ["--search_size", "half"],
        "too_many": ["--search_size", "60", "--rl_size", "60"],
        "closed_set": ["--closed_set_size", "60"],
        "report_over_input": ["--report_path", three_sources["train"]],
        "unknown_flag": ["--serch_size", "0.5"],
    }[case]
    base = [
        "--data_path",
        three_sources["train"],
        "--eval_file",
        three_sources["eval"],
        "--output_dir",
        str(tmp / "bad"),
    ]
    before = open(three_sources["train"]).read()
    result = run_script(PREPARE, base + argv)
    # 2: argparse's status for a flag, as in every script
    assert result.returncode == (2 if case == "unknown_flag" else 1)
    assert result.stderr.startswith("error: ") and message in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp / "bad" / "search_part.json").exists()
    assert open(three_sources["train"]).read() == before  # the input untouched


# ---- the next stages read the parts ---------------------------------------------------------------


def test_parts_feed_search_and_rl(three_sources):
    from huatuo_o1.rl.config import ScriptArguments
    from huatuo_o1.rl.loading import load_problems
    from huatuo_o1.search import has_problem

    parts, _, _ = split_run(three_sources, "chain", "--closed_set_size", "6", "--closed_set_part", "rl")
    assert all(has_problem(row) for row in parts["search"])  # the search stage's own test of a usable row
    train, held_out, skipped = load_problems(
        ScriptArguments(dataset_name=str(three_sources["tmp"] / "chain" / "rl_part.json")), 42
    )
    assert skipped == 0 and len(train) + len(held_out) == len(parts["rl"]) == 56
    by_question = {p.question: p.reference for p in train + held_out}
    closed = [row for row in parts["rl"] if row["data_type"] == "medical_closed_set"]
    assert len(closed) == 6
    for row in closed:  # RL sees the question with its options and the right option as the reference answer
        assert by_question[row[QUESTION]] == row[ANSWER] == f"B. {row['options']['B']}"
        assert row[QUESTION].endswith("\nD. " + row["options"]["D"])


def test_window_hashes_are_position_free():
    texts = ["x" * 10 + "abcdefghij" * 10, "abcdefghij" * 7]
    batches = list(decontamination.window_hashes(texts, 64))
    hashes = np.concatenate([b.hashes for b in batches])
    text_index, start = batches[0].locate(batches[0].starts)
    by_text = {}
    for h, t, s in zip(hashes.tolist(), text_index.tolist(), start.tolist()):
        by_text[(t, s)] = h
    assert len(by_text) == (110 - 63) + (70 - 63)
    assert by_text[(0, 10)] == by_text[(1, 0)] == by_text[(0, 20)]  # the same 64 characters, the same hash
    assert by_text[(0, 9)] != by_text[(0, 10)]


def test_eval_file_none_skips_decontamination(three_sources):
    out_dir = three_sources["tmp"] / "none"
    run_ok(PREPARE, ["--data_path", three_sources["train"], "--eval_file", "none", "--output_dir", str(out_dir)])
    summary = load(out_dir / "summary.json")
    assert (
        summary["decontamination"] == "skipped (--eval_file none)" and "contamination_report" not in summary["outputs"]
    )
    assert not (out_dir / "contamination_report.json").exists()
    assert summary["accounting"] == {"input_items": 100, "in_search": 50, "in_rl": 50, "dropped": 0}


# ---- RL on closed-set rows: the question with its options, the right option as the reference ------------

HEPARIN = {
    "question": "Which drug reverses heparin?",
    "options": {"A": "Vitamin K", "B": "Protamine sulfate", "C": "Idarucizumab", "D": "Andexanet alfa"},
    "answer_idx": "B",
    "answer": "Protamine sulfate",
    QUESTION: "What drug reverses the anticoagulant effect of unfractionated heparin?",
    ANSWER: "Protamine sulfate",
}
SCURVY = {
    "question": "Deficiency of which vitamin causes scurvy?",
    "options": {"A": "Vitamin A", "B": "Vitamin B12", "C": "Vitamin C"},
    "answer_idx": "C",
    "answer": "Vitamin C",
    QUESTION: "A sailor has bleeding gums and poor wound healing. Which vitamin is he lacking?",
    ANSWER: "Vitamin C",
}


class VerifierByText(torch.nn.Module):
    """A 2-label verifier whose p(label 1) is looked up by the decoded input text; it records every input."""

    def __init__(self, tokenizer, p_by_text):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.tokenizer, self.p_by_text, self.seen = tokenizer, p_by_text, []

    def forward(self, input_ids, attention_mask):
        texts = [self.tokenizer.decode(ids[mask.bool()]) for ids, mask in zip(input_ids, attention_mask)]
        self.seen += texts
        p = torch.tensor([self.p_by_text[text] for text in texts])
        return type("Out", (), {"logits": torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], dim=1)})()


def test_rl_loads_closed_set_rows_and_rewards_them_by_the_option(tmp_path, tiny_models):
    from transformers import AutoTokenizer

    from huatuo_o1.rl.config import ScriptArguments
    from huatuo_o1.rl.loading import load_problems, prompt_ids
    from huatuo_o1.verifier import NO_ANSWER, VerifierReward

    data = write(tmp_path / "verifiable.json", [HEPARIN, SCURVY])
    run_ok(PREPARE, ["--data_path", data, "--eval_file", "none", "--output_dir", str(tmp_path / "out"),
                     "--search_size", "0", "--rl_size", "1.0", "--closed_set_size", "1.0",
                     "--closed_set_part", "rl"])  # fmt: skip
    rl_rows = load(tmp_path / "out" / "rl_part.json")
    assert sorted(row["data_type"] for row in rl_rows) == ["medical"] * 2 + ["medical_closed_set"] * 2
    train, held_out, skipped = load_problems(ScriptArguments(dataset_name=str(tmp_path / "out" / "rl_part.json")), 1)
    assert skipped == 0 and len(train) + len(held_out) == 4
    reference_of = {problem.question: problem.reference for problem in train + held_out}
    heparin_closed = (
        "Which drug reverses heparin?\nA. Vitamin K\nB. Protamine sulfate\nC. Idarucizumab\nD. Andexanet alfa"
    )
    assert reference_of[heparin_closed] == "B. Protamine sulfate"
    assert reference_of["Deficiency of which vitamin causes scurvy?\nA. Vitamin A\nB. Vitamin B12\nC. Vitamin C"] == (
        "C. Vitamin C"
    )
    assert reference_of[HEPARIN[QUESTION]] == "Protamine sulfate"  # the open-ended form stays as it was

    policy_tokenizer = AutoTokenizer.from_pretrained(tiny_models["tiny-qwen2"])
    prompt = policy_tokenizer.decode(prompt_ids(policy_tokenizer, heparin_closed))
    assert prompt == f"<|im_start|>user\n{heparin_closed}<|im_end|>\n<|im_start|>assistant\n"

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["tiny-verifier"])
    eos = tokenizer.eos_token
    task = (
        "Your task is to evaluate the model response by comparing it to the reference answer. If the model "
        'response is correct and aligns with the reference answer, output "True" . If it is incorrect or fails '
        'to select the correct option (if options are provided), output "False" . '
    )
    right = (
        "<Model Response>\nB. Protamine sulfate\n</Model Response>\n\n"
        f"<Reference Answer>\nB. Protamine sulfate\n</Reference Answer>\n\n{task}{eos}"
    )
    wrong = (
        "<Model Response>\nA. Vitamin K\n</Model Response>\n\n"
        f"<Reference Answer>\nB. Protamine sulfate\n</Reference Answer>\n\n{task}{eos}"
    )
    no_answer = (
        f"<Model Response>\n{NO_ANSWER}\n</Model Response>\n\n"
        f"<Reference Answer>\nB. Protamine sulfate\n</Reference Answer>\n\n{task}{eos}"
    )
    verifier = VerifierByText(tokenizer, {right: 0.9, wrong: 0.2, no_answer: 0.9})
    responses = [
        "## Thinking\n\nProtamine binds heparin.\n\n## Final Response\n\nB. Protamine sulfate",
        "## Thinking\n\nVitamin K reverses warfarin.\n\n## Final Response\n\nA. Vitamin K",
        "B. Protamine sulfate",  # no Thinking / Final Response layout
    ]
    out = VerifierReward(verifier, tokenizer)(responses, [reference_of[heparin_closed]] * 3)
    assert verifier.seen == [right, wrong, no_answer]
    assert out.rewards.tolist() == torch.tensor([1.0, 0.1, 0.0]).tolist()
    assert out.well_formed.tolist() == [True, True, False]


@pytest.mark.parametrize("pool", [1, 2, 5, 7, 99, 101])
def test_shares_that_add_up_to_one_place_every_item(pool):
    for search, rl in ((0.5, 0.5), (0.3, 0.7), (0.1, 0.9), (0.7, 0.3)):
        counts = [recipe.part_counts(search, rl, pool, seed) for seed in range(8)]
        assert all(s + r == pool for s, r in counts), (search, rl, counts)
        # each part gets its share rounded down or up, never further off
        assert all(int(search * pool) <= s <= int(search * pool) + 1 for s, _ in counts)
    # a tie (0.5 + 0.5 of an odd number) goes either way with the seed, the same way for the same seed
    if pool % 2:
        assert {recipe.part_counts(0.5, 0.5, pool, seed) for seed in range(16)} == {
            (pool // 2 + 1, pool // 2),
            (pool // 2, pool // 2 + 1),
        }
        assert recipe.part_counts(0.5, 0.5, pool, 3) == recipe.part_counts(0.5, 0.5, pool, 3)


def test_shares_below_one_and_counts_are_taken_as_asked():
    assert recipe.part_counts(0.5, 0.3, 100, 42) == (50, 30)
    assert recipe.part_counts(0.5, 0.25, 10, 42) in ((5, 3), (5, 2), (6, 2))  # quotas 5, 2.5, 2.5
    assert sum(recipe.part_counts(0.5, 0.25, 10, 42)) <= 8  # what was asked for, not the leftover share
    assert recipe.part_counts(3, 4, 10, 42) == (3, 4)
    assert recipe.part_counts(0.5, 4, 9, 42) == (4, 4)  # a share next to a count: rounded on its own
    assert recipe.part_counts(0.1 + 0.2, 0.7, 10, 42) == (3, 7)  # 0.30000000000000004 is read as typed


@pytest.mark.parametrize("n_items", [98, 100])  # with the 5 of the second source: odd pools
def test_odd_pools_of_several_sources_leave_nothing_out(tmp_path, n_items):
    rng = random.Random(n_items)
    sources = ["MedQA", "MedMCQA", "PubMedQA"]
    rows = [mc_row(rng, source=sources[i % 3] if i % 7 else sources[0]) for i in range(n_items)]
    second = [mc_row(rng, source="Other") for _ in range(5)]
    eval_rows = [{"question": words(rng, 20), "options": {"A": "x", "B": "y"}, "answer_idx": "A", "source": "MedQA"}]
    out = tmp_path / "out"
    stdout = run_ok(
        PREPARE,
        [
            "--data_path",
            write(tmp_path / "first.json", rows),
            write(tmp_path / "second.json", second),
            "--eval_file",
            write(tmp_path / "eval.json", eval_rows),
            "--search_size",
            "0.5",
            "--rl_size",
            "0.5",
            "--closed_set_size",
            "0",
            "--output_dir",
            str(out),
        ],
    ).stdout
    summary = load(out / "summary.json")
    placed = summary["accounting"]["in_search"] + summary["accounting"]["in_rl"]
    assert placed == n_items + 5 and summary["dropped"]["items"] == 0
    assert abs(summary["accounting"]["in_search"] - summary["accounting"]["in_rl"]) == 1
    assert summary["sizes"]["medical_left_out"]["items"] == 0
    assert "neither part" not in stdout

    less = tmp_path / "less"
    stdout = run_ok(
        PREPARE,
        [
            "--data_path",
            write(tmp_path / "first.json", rows),
            "--eval_file",
            str(tmp_path / "eval.json"),
            "--search_size",
            "0.5",
            "--rl_size",
            "0.3",
            "--closed_set_size",
            "0",
            "--output_dir",
            str(less),
        ],
    ).stdout
    summary = load(less / "summary.json")
    left_out = n_items - summary["accounting"]["in_search"] - summary["accounting"]["in_rl"]
    assert left_out == summary["sizes"]["medical_left_out"]["items"] == summary["dropped"]["by_reason"]["not_selected"]
    assert left_out in (19, 20, 21)  # 20% of ~100, rounded with the parts
    assert f"{left_out} clean medical items in neither part" in stdout
    assert "--search_size 0.5 + --rl_size 0.3" in summary["sizes"]["medical_left_out"]["why"]
