"""train_verifier.py --exam_items: labelled answers made from multiple-choice items, alone or mixed with verdicts."""

import json
import os

import pytest

from huatuo_o1 import verifier_training as vt
from huatuo_o1.records import InputError
from huatuo_o1.verifier import load_template, verifier_input
from tests.scripts import reset_accelerate, run_ok, run_script
from tests.verifier_helpers import as_search_records, synthetic_verdicts, write_json

pytestmark = pytest.mark.usefixtures("one_thread_fresh_accelerate")

ITEM = {
    "question": "Which drug lowers the risk of another heart attack?",
    "options": {"A": "Aspirin", "B": "Insulin", "C": "Warfarin", "D": "Codeine"},
    "answer_idx": "A",
    "answer": "Aspirin",
}


def exam_item(index, right="A"):
    options = {letter: f"drug {index}{letter.lower()}" for letter in "ABCD"}
    return {"question": f"Question {index}?", "options": options, "answer_idx": right, "answer": options[right]}


def test_a_four_option_item_gives_one_correct_and_three_incorrect_answers_in_the_verifier_template():
    pairs = vt.exam_pairs([ITEM], ["The answer is {option}."])
    assert [(p["response"], p["label"]) for p in pairs] == [
        ("The answer is Aspirin.", 1),
        ("The answer is Insulin.", 0),
        ("The answer is Warfarin.", 0),
        ("The answer is Codeine.", 0),
    ]
    assert {p["reference"] for p in pairs} == {"Aspirin"} and {p["source"] for p in pairs} == {"exam"}
    # the classifier reads them through the verifier's own template, as RL shows it the policy's answers
    template = load_template()
    wrong = verifier_input(pairs[1]["response"], pairs[1]["reference"], "<eos>", template)
    assert wrong == template.format(response="The answer is Insulin.", reference="Aspirin", eos_token="<eos>")
    assert "<Model Response>\nThe answer is Insulin.\n</Model Response>" in wrong
    assert "<Reference Answer>\nAspirin\n</Reference Answer>" in wrong


def test_the_reference_is_the_ground_truth_when_given_phrasings_rotate_and_a_duplicate_wrong_option_is_dropped():
    with_truth = {**ITEM, "Ground-True Answer": "Low-dose aspirin"}
    duplicated = {**exam_item(1), "options": {"A": "Gout", "B": "gout.", "C": "Lupus"}}
    phrasings = vt.load_phrasings()  # the shipped file: three phrasings
    assert len(phrasings) == 3 and all(p.count("{option}") == 1 for p in phrasings)
    pairs = vt.exam_pairs([with_truth, duplicated, exam_item(2)], phrasings)
    assert {p["reference"] for p in pairs if p["group"] == 0} == {"Low-dose aspirin"}
    # item 1: "gout." is "Gout" in other words, so labelling it wrong would contradict the right answer: left out
    assert [(p["response"], p["label"]) for p in pairs if p["group"] == 1] == [
        (phrasings[1].format(option="Gout"), 1),
        (phrasings[1].format(option="Lupus"), 0),
    ]
    assert {p["response"] for p in pairs if p["group"] == 2} == {
        phrasings[2].format(option=f"drug 2{c}") for c in "abcd"
    }


def test_mixed_with_verdicts_each_reference_stays_on_one_side_of_the_split():
    verdicts = [
        {"response": "It is drug 3a", "reference": "drug 3a", "label": 1, "group": 0},
        {"response": "It is drug 3b", "reference": "Drug 3A.", "label": 0, "group": 1},  # the same reference
        {"response": "It is gout", "reference": "gout", "label": 1, "group": 2},
    ]
    pairs = vt.exam_pairs([exam_item(i) for i in range(10)], ["{option}"])
    examples = vt.with_exam_pairs(verdicts, pairs)
    assert [e["source"] for e in examples] == ["search"] * 3 + ["exam"] * 40
    assert len({e["group"] for e in examples}) == 11  # 10 items' references + "gout"; 3a's verdicts join item 3
    for seed in range(5):
        train, held_out = vt.split_by_record(examples, 0.3, 1000, seed)
        assert not {e["group"] for e in train} & {e["group"] for e in held_out}
        assert len(train) + len(held_out) == 43 and held_out


def test_bad_phrasings_are_refused(tmp_path):
    for text, problem in (("The answer is {answer}.\n", r"phrasing 1 .* must hold \{option\} once"),
                          ("{option} {option}\n", "phrasing 1"), ("\n\n", "no phrasing")):  # fmt: skip
        path = tmp_path / "phrasings.txt"
        path.write_text(text)
        with pytest.raises(InputError, match=problem):
            vt.load_phrasings(str(path))


@pytest.mark.parametrize(
    "row, message",
    [
        ({"question": "Q?", "options": ["a", "b"], "answer_idx": "A"}, "'options' must map at least 2 letters"),
        ({"question": "Q?", "options": {"A": "x"}, "answer_idx": "A"}, "'options' must map at least 2 letters"),
        ({"question": "Q?", "options": {"A": "x", "B": " "}, "answer_idx": "A"}, "every option must be a non-empty"),
        ({"question": "Q?", "options": {"A": "x", "B": "y"}, "answer_idx": "E"}, "'answer_idx' 'E' is not one of"),
        ({"question": "Q?", "options": {"A": "x", "B": "y"}}, "'answer_idx' None is not one of"),
    ],
)
def test_a_bad_exam_item_stops_the_script_with_one_line_naming_the_row(tiny_models, tmp_path, row, message):
    items = write_json(tmp_path / "items.json", [exam_item(0), row])
    result = run_script(
        "train_verifier.py",
        ["--model_path", tiny_models["tiny-verifier"], "--exam_items", items, "--output_dir", tmp_path / "out"],
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"--exam_items {items}: row 1: " in lines[0] and message in lines[0]
    assert not os.path.exists(tmp_path / "out")


def test_neither_data_path_nor_exam_items_is_an_error(tiny_models, tmp_path):
    argv = ["--model_path", tiny_models["tiny-verifier"], "--output_dir", tmp_path / "out"]
    result = run_script("train_verifier.py", argv)
    assert result.returncode == 1 and "--data_path (verdicts), --exam_items" in result.stderr
    result = run_script("score_verifier.py", ["--verifier_path", "unused"])
    assert result.returncode == 1 and "--data_path is required" in result.stderr


def test_training_on_verdicts_and_exam_items_reports_each_source(tiny_models, tmp_path):
    records = write_json(tmp_path / "records.json", as_search_records(synthetic_verdicts(30, seed=3), per_record=3))
    items = write_json(tmp_path / "items.json", [exam_item(i, right="ABCD"[i % 4]) for i in range(15)])
    out = tmp_path / "verifier"
    argv = ["--model_path", tiny_models["tiny-verifier"], "--data_path", records, "--exam_items", items,
            "--output_dir", out, "--max_length", "256", "--max_steps", "3", "--train_bsz_per_gpu", "8",
            "--eval_fraction", "0.3", "--eval_before_training", "False", "--save_epoch_state", "False"]  # fmt: skip
    try:
        printed = run_ok("train_verifier.py", argv).stdout
    finally:
        reset_accelerate()
    summary = json.load(open(out / "verifier_summary.json"))
    # 30 verdicts + 15 items x 4 options
    assert summary["n_examples"] == 90
    assert summary["sources"] == {
        "search": {"examples": 30, "share": 0.3333},
        "exam": {"examples": 60, "share": 0.6667},
    }
    by_source = summary["heldout_by_source"]
    assert sum(figures["n"] for figures in by_source.values()) == summary["n_held_out"]
    predictions = json.load(open(out / "heldout_predictions.json"))
    for source, figures in by_source.items():
        mine = [p for p in predictions if (p["reference_answer"].startswith("drug ")) == (source == "exam")]
        assert figures["n"] == len(mine)
        right = sum(p["predicted"] == p["verdict"] for p in mine) / len(mine)
        assert figures["verifier"]["accuracy"] == pytest.approx(right, abs=1e-4)
        agree = sum(p["predicted"] == p["string_match"] for p in mine) / len(mine)
        assert figures["agreement"] == pytest.approx(agree, abs=1e-4)
    assert "sources: 30 search verdicts, 60 exam pairs (67% exam)" in printed
    assert f"held-out exam ({by_source['exam']['n']} examples, 67% of the data)" in printed
    assert summary["arguments"]["exam_items"] == items
