"""huatuo_o1/evaluation/scoring.py: the paper view rule by rule (P1-P5, the original scorer's quirks included),
the honest view (H1-H5) on hand-labelled real-style replies, the figures, and evaluation/report.py
re-scoring a results file."""

import json
import os

import pytest

from huatuo_o1.evaluation import scoring
from tests.scripts import run_ok

DATA = os.path.join(os.path.dirname(__file__), "data")
FOUR = {"A": "Mumps", "B": "Measles", "C": "Rubella", "D": "Chickenpox"}
TEN = {
    k: v
    for k, v in zip(
        "ABCDEFGHIJ",
        [
            "Liver",
            "Spleen",
            "Gallbladder",
            "Kidney",
            "Pancreas",
            "Stomach",
            "Adrenal gland",
            "Thyroid",
            "Pituitary gland",
            "Small intestine",
        ],
    )
}
YES_NO_MAYBE = {"A": "yes", "B": "no", "C": "maybe"}
LP = {"A": "CT angiography", "B": "Lumbar puncture", "C": "MRI of the spine", "D": "Discharge"}
CELLS = {"A": "B cells", "B": "T cells", "C": "NK cells", "D": "Macrophages"}
VITAMINS = {"A": "Vitamin A", "B": "Vitamin B12", "C": "Vitamin A toxicity", "D": "Vitamin D"}
HEPATITIS = {"A": "Hepatitis A", "B": "Hepatitis B", "C": "Hepatitis C", "D": "Hepatitis E"}
BOXES = {"A": "TATA box", "B": "CAAT box", "C": "Box E", "D": "GC box"}


def first_last(extraction):
    return extraction.first, extraction.last


def load(name):
    with open(os.path.join(DATA, name), encoding="utf-8") as f:
        return json.load(f)


# (reply, options, first, last, rule): worked out from the rules, quirks included.
PAPER_CASES = [
    # P1: only the text after the LAST "## Final Response\n\n" (with its blank line) is read.
    ("## Thinking\n\nThe answer is A.\n\n## Final Response\n\nThe answer is C.", FOUR, "C", "C", "answer_is"),
    ("## Final Response\n\nThe answer is A.\n\n## Final Response\n\nThe answer is D.", FOUR, "D", "D", "answer_is"),
    ("## Thinking\n\nThe answer is A.\n## Final Response\nThe answer is C.", FOUR, "A", "C", "answer_is"),
    # P2: "answer is", lazy whitespace, any capital A-N, nothing required after it; case-sensitive.
    ("The answer is Lumbar puncture.", LP, "L", "L", "answer_is"),
    ("The answer is K.", FOUR, "K", "K", "answer_is"),
    ("The answer is A, no wait, the answer is C.", FOUR, "A", "C", "answer_is"),
    ("So the answer is\n\nB", FOUR, "B", "B", "answer_is"),
    ("the answer isD", FOUR, "D", "D", "answer_is"),
    ("The answer is Box E.", BOXES, "B", "B", "answer_is"),
    ("The answer is A lumbar puncture.", LP, "A", "A", "answer_is"),
    # ... and what P2 does not take falls to P3.
    ("Answer is B.", FOUR, "B", "B", "letter"),
    ("The answer is: B", FOUR, "B", "B", "letter"),
    ("The answer is (B)", FOUR, "B", "B", "letter"),
    ("The answer is **B**", FOUR, "B", "B", "letter"),
    # P3: contexts are consumed, "A " is the article, CJK counts as a context, only the first k letters.
    ("B/C", FOUR, "B", "B", "letter"),
    ("B C", FOUR, "B", "B", "letter"),
    ("B, C", FOUR, "B", "C", "letter"),
    ("A\nB", FOUR, "A", "A", "letter"),
    ("A patient like this has D.", FOUR, "D", "D", "letter"),
    ("A D", FOUR, "D", "D", "letter"),
    ("我选B。", FOUR, "B", "B", "letter"),
    ("答案是C", FOUR, "C", "C", "letter"),
    ("B项正确", FOUR, "B", "B", "letter"),
    ("F and C", FOUR, "C", "C", "letter"),
    ("I think the pancreas makes insulin.", TEN, "I", "I", "letter"),
    ("Hepatitis B is likely, not hepatitis C.", HEPATITIS, "B", "C", "letter"),
    ("Antibodies come from B cells.", CELLS, "B", "B", "letter"),
    ("B-cell lymphoma", CELLS, "B", "B", "letter"),
    ("#D", FOUR, "D", "D", "letter"),
    # P4: option texts as substrings; first = the option whose FIRST mention is latest; ties: listed first.
    ("Measles, then rubella, then measles again.", FOUR, "C", "B", "option_text"),
    ("Probably not measles but mumps", FOUR, "A", "A", "option_text"),
    ("vitamin a toxicity explains it", VITAMINS, "A", "A", "option_text"),
    ("We cannot know this.", YES_NO_MAYBE, "B", "B", "option_text"),
    ("Hepatitis E fits best.", HEPATITIS, "D", "D", "option_text"),
    # P5: the most similar option text (option first, reply second); equal scores go to the later option.
    ("zzz", {"A": "abc", "B": "abd", "C": "xyz"}, "C", "C", "similarity"),
    ("measels", FOUR, "B", "B", "similarity"),
    (" \n ", FOUR, "D", "D", "similarity"),  # a whitespace reply is scored: every ratio is 0, the last option wins
    # An empty reply is dropped.
    ("", FOUR, None, None, "dropped"),
]


@pytest.mark.parametrize("reply, options, first, last, rule", PAPER_CASES)
def test_paper_view_rules(reply, options, first, last, rule):
    assert scoring.paper_extract(reply, options) == scoring.Extraction(first, last, rule)


def test_paper_view_on_synthetic_replies_of_many_kinds():
    # Letters recorded from the original scorer on 41 kinds of reply (see "kind" in the file).
    cases = load("eval_paper_view_cases.json")
    assert len({c["kind"] for c in cases}) >= 34
    got = [first_last(scoring.paper_extract(c["reply"], c["options"])) for c in cases]
    wrong = [
        (c["kind"], c["reply"], (c["first"], c["last"]), found)
        for c, found in zip(cases, got)
        if found != (c["first"], c["last"])
    ]
    assert wrong == []


@pytest.mark.parametrize("name", ["eval_smollm2_demo_replies.json", "eval_heldout_replies.json"])
def test_paper_view_on_real_and_real_style_replies(name):
    """Letters recorded from the original scorer: 63 replies of the real SmolLM2-135M-Instruct to
    evaluation/data/demo_eval_data.json (three runs), and the 104 HuatuoGPT-o1-style held-out replies."""
    replies = load(name)
    got = [first_last(scoring.paper_extract(scoring.clean_reply(r["output"]), r["options"])) for r in replies]
    assert got == [(r["paper_first"], r["paper_last"]) for r in replies]


def test_reply_cleaning_as_the_original():
    assert scoring.clean_reply(" The answer is B.</s>") == "The answer is B."
    assert scoring.clean_reply("  B</s></s>") == " B"  # one leading space only
    assert scoring.clean_reply(" </s>") == ""
    assert scoring.clean_reply("</s> B") == "B"  # "</s>" goes first, then the space
    assert scoring.clean_reply(None) == ""


# (reply, options, first, last, rule) for the honest view.
HONEST_CASES = [
    # H1: the final response decides; a "## Thinking" reply without one has not answered.
    ("## Thinking\n\nThe answer is A.\n\n## Final Response\n\nThe answer is C.", FOUR, "C", "C", "answer_statement"),
    ("## Thinking\n\nOption B looks right, but", FOUR, None, None, "unfinished"),
    ("## Thinking\n\nhmm\n\n## Final Response\n\n", FOUR, None, None, "none"),
    # H2: answer statements, in English and Chinese; only the item's letters; the letter must stand alone.
    ("Answer: (B)", FOUR, "B", "B", "answer_statement"),
    ("The answer is **B**.", FOUR, "B", "B", "answer_statement"),
    ("**Answer:** B) Measles", FOUR, "B", "B", "answer_statement"),
    ("The correct option is C.", FOUR, "C", "C", "answer_statement"),
    ("B is correct.", FOUR, "B", "B", "answer_statement"),
    (
        "The answer is B because of the Koplik spots. Mumps (A) would swell the parotids.",
        FOUR,
        "B",
        "B",
        "answer_statement",
    ),
    ("The answer is A... no, the answer is C.", FOUR, "A", "C", "answer_statement"),
    ("A is incorrect, while B is the correct answer: measles.", FOUR, "B", "B", "answer_statement"),
    ("答案是B。", FOUR, "B", "B", "answer_statement"),
    ("根据皮疹特点，应选D项。", FOUR, "D", "D", "answer_statement"),
    ("I would say E. Pancreas.", TEN, "E", "E", "answer_statement"),
    ("The answer is K.", FOUR, None, None, "none"),
    # Letters that belong to words and names: the option's text decides.
    ("The answer is Lumbar puncture.", LP, "B", "B", "option_text"),
    ("The answer is Box E.", BOXES, "C", "C", "option_text"),
    ("The answer is A lumbar puncture.", LP, "B", "B", "option_text"),
    ("Antibodies come from B cells.", CELLS, "A", "A", "option_text"),
    ("The serology shows acute Hepatitis B.", HEPATITIS, "B", "B", "option_text"),
    ("This is Hepatitis E in pregnancy.", HEPATITIS, "D", "D", "option_text"),
    ("Night blindness means a lack of vitamin A.", VITAMINS, "A", "A", "option_text"),
    (
        "Thus vitamin A is the correct answer.",
        {"A": "Vitamin D", "B": "Vitamin K", "C": "Vitamin A"},
        "C",
        "C",
        "option_text",
    ),
    ("The patient can be discharged home.", LP, "D", "D", "option_text"),  # "discharged" names "Discharge"
    ("A B cell defect.", {"A": "T cells", "B": "B cells"}, "B", "B", "option_text"),  # "B cell" names "B cells"
    ("Vitamin A toxicity explains it.", VITAMINS, "C", "C", "option_text"),  # not Vitamin A inside it
    ("I think the pancreas makes insulin.", TEN, "E", "E", "option_text"),
    ("The answer is E. coli cover, so ceftriaxone.", {**FOUR, "E": "Ceftriaxone"}, "E", "E", "option_text"),
    # H3: letters named as options: label lines, bold, "option X", "(X)", "... is X."
    ("**C**", FOUR, "C", "C", "letter"),
    ("C.", FOUR, "C", "C", "letter"),
    ("- **C) Rubella**: the rash is milder.", FOUR, "C", "C", "letter"),
    ("Option A fits; option D does not.", FOUR, "A", "D", "letter"),
    ("The best next step is (B), before insulin.", FOUR, "B", "B", "letter"),
    ("The most likely diagnosis is B.", FOUR, "B", "B", "letter"),
    ("选项C正确", FOUR, "C", "C", "letter"),
    # H4: option texts as whole words; yes/no/maybe only where stated as the answer.
    ("Measles, then rubella, then measles again.", FOUR, "B", "B", "option_text"),
    ("No, there was no significant difference.", YES_NO_MAYBE, "B", "B", "option_text"),
    ("Based on the data, yes: it helps. I don't know of any bias.", YES_NO_MAYBE, "A", "A", "option_text"),
    ("There is not enough information to decide.", YES_NO_MAYBE, None, None, "none"),
    ("最可能的诊断是麻疹。", {"A": "腮腺炎", "B": "麻疹", "C": "风疹", "D": "水痘"}, "B", "B", "option_text"),
    # H5: a reply that repeats the option list chooses nothing.
    ("A. Mumps\nB. Measles\nC. Rubella\nD. Chickenpox", FOUR, None, None, "options_listed"),
    ("I don't know.", TEN, None, None, "none"),
    ("", FOUR, None, None, "blank"),
    (" \n ", FOUR, None, None, "blank"),
]


@pytest.mark.parametrize("reply, options, first, last, rule", HONEST_CASES)
def test_honest_view_rules(reply, options, first, last, rule):
    assert scoring.honest_extract(reply, options) == scoring.Extraction(first, last, rule)


def test_honest_view_reads_held_out_replies_without_misreading():
    """Hand-labelled HuatuoGPT-o1-style replies (English and Chinese): 'names' is the option the reply
    gives as its answer (None: it names none); 'several': it also names other options afterwards.
    Batches 2 and 3 were written after the rules, then read as they stood (3 of 49 missed; fixed)."""
    replies = load("eval_heldout_replies.json")
    assert len(replies) >= 120 and sum(r["names"] is None for r in replies) >= 8
    misread = []
    for r in replies:
        found = scoring.honest_extract(scoring.clean_reply(r["output"]), r["options"])
        expected_last = found.last if r["several"] else r["names"]
        if (found.first, found.last) != (r["names"], expected_last):
            misread.append((r["note"], r["names"], found))
    assert misread == []
    # The original's rules misread a good share of the same replies.
    paper_misread = [r for r in replies if r["names"] is not None and r["paper_first"] != r["names"]]
    assert len(paper_misread) >= 10


def test_verdicts_and_figures_by_hand():
    cases = [  # (reply, options, gold)
        ("## Thinking\n\nx\n\n## Final Response\n\nThe answer is C.", FOUR, "C"),  # both views right
        ("Option B looks tempting, but on reflection it is D.", FOUR, "D"),  # paper B/D; honest B/D
        ("I think the pancreas makes insulin.", TEN, "E"),  # paper I (wrong); honest E
        ("The answer is Lumbar puncture.", LP, "B"),  # paper L (wrong); honest B
        ("Hard to say without more data.", FOUR, "A"),  # paper: similarity; honest: no answer
        ("", FOUR, "A"),  # paper: dropped; honest: blank, wrong
        (" ", FOUR, "D"),  # paper: scored, similarity gives D (right); honest: blank, wrong
        ("**B** is correct.", FOUR, "B"),  # both right
    ]
    verdicts = [scoring.score_item({"options": o, "answer_idx": g}, reply) for reply, o, g in cases]
    assert [(v["paper"]["first"], v["paper"]["last"]) for v in verdicts] == [
        ("C", "C"),
        ("B", "D"),
        ("I", "I"),
        ("L", "L"),
        ("C", "C"),
        (None, None),
        ("D", "D"),
        ("B", "B"),
    ]
    assert [(v["honest"]["first"], v["honest"]["last"]) for v in verdicts] == [
        ("C", "C"),
        ("B", "D"),
        ("E", "E"),
        ("B", "B"),
        (None, None),
        (None, None),
        (None, None),
        ("B", "B"),
    ]
    summary = scoring.summarize(verdicts)
    assert (summary["n"], summary["paper_scored"]) == (8, 7)
    # Paper, over 7 scored: first right = cases 0, 6, 7 -> 3/7; last right adds case 1 -> 4/7.
    assert summary["paper_first_match_accuracy"] == round(300 / 7, 2)
    assert summary["paper_last_match_accuracy"] == round(400 / 7, 2)
    assert summary["paper_accuracy"] == round(400 / 7, 2)
    assert summary["paper_similarity_fallback_rate"] == round(200 / 7, 2)  # cases 4 and 6
    # Honest, over all 8: first right = 0, 2, 3, 7 -> 50%; last adds case 1 -> 62.5%.
    assert (summary["honest_first_match_accuracy"], summary["honest_last_match_accuracy"]) == (50.0, 62.5)
    assert (summary["honest_no_answer_rate"], summary["blank_reply_rate"], summary["format_rate"]) == (
        12.5,
        25.0,
        12.5,
    )


def test_a_source_of_empty_replies_has_no_paper_figure():
    verdicts = [scoring.score_item({"options": FOUR, "answer_idx": "A"}, "")] * 2
    summary = scoring.summarize(verdicts)
    assert (summary["paper_scored"], summary["paper_accuracy"], summary["honest_first_match_accuracy"]) == (
        0,
        None,
        0.0,
    )


def test_report_rescores_a_results_file_to_the_paper_views_figures(tmp_path, repo_root):
    def record(source, options, gold, output, tokens=10, finish="stop"):
        return {
            "source": source,
            "options": options,
            "answer_idx": gold,
            "output": output,
            "completion_tokens": tokens,
            "finish_reason": finish,
        }

    results = [
        # MedQA_USLME_test: 5 replies, one empty (dropped) -> 4 scored.
        record(
            "MedQA_USLME_test", FOUR, "B", "## Thinking\n\nA?\n\n## Final Response\n\nThe answer is B."
        ),  # B/B right
        record("MedQA_USLME_test", LP, "B", "The answer is Lumbar puncture."),  # L/L wrong
        record("MedQA_USLME_test", FOUR, "D", "Either A, D"),  # A/D: last right
        record("MedQA_USLME_test", FOUR, "C", "Measles, then rubella, then measles again."),  # C/B: first right
        record("MedQA_USLME_test", FOUR, "A", "", tokens=0),  # dropped
        # PubMedQA: 3 replies, all scored.
        record("PubMedQA", YES_NO_MAYBE, "C", "We cannot know this."),  # B/B wrong
        record("PubMedQA", YES_NO_MAYBE, "A", "Yes. It works.", finish="length"),  # "yes" -> A/A right
        record("PubMedQA", YES_NO_MAYBE, "C", " "),  # similarity, all 0 -> C right
    ]
    path = tmp_path / "m_api_x.json"
    path.write_text(json.dumps(results))
    run_ok("evaluation/report.py", [path, "--paper_row", "LLaMA-3.1-8B-Instruct"], cwd=repo_root)
    report = json.loads((tmp_path / "m_api_x_report.json").read_text())
    medqa, pubmedqa = report["sources"]["MedQA_USLME_test"], report["sources"]["PubMedQA"]
    # MedQA: first right 2/4 (cases 0, 3), last right 2/4 (cases 0, 2) -> 50.0.
    assert (medqa["n"], medqa["paper_scored"]) == (5, 4)
    assert (medqa["paper_first_match_accuracy"], medqa["paper_last_match_accuracy"], medqa["paper_accuracy"]) == (
        50.0,
        50.0,
        50.0,
    )
    # PubMedQA: first and last right 2/3.
    assert (pubmedqa["paper_scored"], pubmedqa["paper_accuracy"]) == (3, round(200 / 3, 2))
    # Honest, over all 5: first right = case 0 (B) and case 1 (Lumbar puncture is B); case 3 names measles first.
    assert medqa["honest_first_match_accuracy"] == 40.0
    assert (medqa["blank_reply_rate"], pubmedqa["blank_reply_rate"]) == (20.0, round(100 / 3, 2))
    assert (medqa["paper_table1"], pubmedqa["paper_table1"]) == (58.7, 75.2)  # LLaMA-3.1-8B-Instruct's row
    assert (pubmedqa["mean_completion_tokens"], pubmedqa["cut_at_max_new_tokens_rate"]) == (10.0, round(100 / 3, 2))
    assert report["average_over_sources"]["paper_accuracy"] == round((50.0 + round(200 / 3, 2)) / 2, 2)
    table = (tmp_path / "m_api_x_report.md").read_text()
    assert "| MedQA_USLME_test | 5 | 50.0 | 50.0 | 50.0 | 4 | 40.0 |" in table
    assert "| PubMedQA | 3 | 66.7 | 66.7 | 66.7 | 3 |" in table
    assert (tmp_path / "m_api_x_report.png").read_bytes()[:4] == b"\x89PNG"
