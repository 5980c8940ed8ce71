"""The answer extraction rules of evaluation/scoring.py, both views, on hand-written replies."""

import pytest

from evaluation import scoring

FOUR = {"A": "Mumps", "B": "Measles", "C": "Rubella", "D": "Chickenpox"}
TEN = {letter: f"organ {letter.lower()}" for letter in "ABCDEFGHIJ"} | {"E": "Pancreas"}


def views(output, options, gold):
    verdict = scoring.score_item({"options": options, "answer_idx": gold}, output)
    return verdict["paper"], verdict["honest"], verdict["format_ok"]


def test_final_response_section_is_what_counts():
    output = "## Thinking\n\nMaybe A, maybe B. The answer is A?\n\n## Final Response\n\nThe answer is C."
    paper, honest, format_ok = views(output, FOUR, "C")
    assert (paper["first"], paper["last"], paper["rule"]) == ("C", "C", "answer_phrase")
    assert (honest["first"], honest["last"], honest["rule"]) == ("C", "C", "answer_phrase")
    assert format_ok
    assert not views("## Thinking\n\nx\n\n## Final Response\n\ny ## Final Response\n\nz", FOUR, "C")[2]


def test_answer_phrase_beats_other_letters():
    paper, honest, _ = views("B and C are tempting. The answer is (D), since ...", FOUR, "D")
    assert paper["first"] == honest["first"] == "D"
    assert paper["rule"] == honest["rule"] == "answer_phrase"


def test_bold_letter():
    paper, honest, _ = views("**B** is correct: the spots are typical.", FOUR, "B")
    assert (paper["first"], paper["rule"]) == ("B", "letter")
    assert (honest["first"], honest["rule"]) == ("B", "letter")
    paper, honest, _ = views("The answer is **B**.", FOUR, "B")
    assert paper["rule"] == honest["rule"] == "answer_phrase" and paper["first"] == honest["first"] == "B"


def test_option_text_only():
    paper, honest, _ = views("These spots point to measles virus infection.", FOUR, "B")
    assert (paper["first"], paper["rule"]) == ("B", "option_text")
    assert (honest["first"], honest["rule"]) == ("B", "option_text")


def test_first_and_last_match_differ():
    paper, honest, _ = views("Option B looks tempting, but on reflection it is D.", FOUR, "D")
    assert (paper["first"], paper["last"]) == ("B", "D")
    assert (honest["first"], honest["last"]) == ("B", "D")
    assert not honest["first_correct"] and honest["last_correct"]


def test_ten_options_i_think_is_not_option_i():
    output = "I think the pancreas makes insulin."
    paper, honest, _ = views(output, TEN, "E")
    assert (paper["first"], paper["rule"]) == ("I", "letter")  # the original's rule reads the pronoun
    assert (honest["first"], honest["rule"]) == ("E", "option_text")
    # A letter beyond the item's options is not an answer in the honest view.
    paper, honest, _ = views("Final choice: F", FOUR, "A")
    assert paper["first"] == "F" and honest["rule"] != "letter"


def test_chinese_output():
    output = "## Thinking\n\n患者发热。\n\n## Final Response\n\n答案是B。"
    paper, honest, _ = views(output, FOUR, "B")
    # CJK characters are word characters, so the original's bounded-letter rule finds nothing.
    assert paper["rule"] == "similarity"
    assert (honest["first"], honest["rule"]) == ("B", "answer_phrase")
    paper, honest, _ = views("我选择选项C", FOUR, "C")
    assert (honest["first"], honest["rule"]) == ("C", "answer_phrase")


def test_no_answer_at_all_and_empty():
    paper, honest, _ = views("I do not know.", FOUR, "A")
    assert paper["rule"] == "letter" and paper["first"] == "I"
    assert honest["rule"] == "none" and honest["first"] is None
    paper, honest, _ = views("Hard to say without more data.", FOUR, "A")
    assert paper["rule"] == "similarity" and paper["first"] in FOUR
    assert honest["rule"] == "none"
    for blank in ("", "  \n"):
        paper, honest, _ = views(blank, FOUR, "A")
        assert paper["rule"] == honest["rule"] == "empty"
        assert not paper["first_correct"] and not honest["first_correct"]


def test_option_text_must_be_a_whole_word_in_the_honest_view():
    yes_no_maybe = {"A": "yes", "B": "no", "C": "maybe"}
    paper, honest, _ = views("We cannot know this for certain.", yes_no_maybe, "C")
    assert (paper["first"], paper["rule"]) == ("B", "option_text")  # "no" inside "cannot" and "know"
    assert honest["rule"] == "none"
    paper, honest, _ = views("Probably not; the answer would be no.", yes_no_maybe, "B")
    assert (honest["first"], honest["last"], honest["rule"]) == ("B", "B", "option_text")


def test_article_a_is_not_option_a():
    paper, honest, _ = views("A viral rash: think of measles.", FOUR, "B")
    assert paper["first"] == honest["first"] == "B"


def test_both_views_numbers_on_a_set():
    cases = [
        ("## Thinking\n\nx\n\n## Final Response\n\nThe answer is C.", FOUR, "C"),  # both right, format ok
        ("Option B looks tempting, but on reflection it is D.", FOUR, "D"),  # first wrong, last right
        ("I think the pancreas makes insulin.", TEN, "E"),  # paper wrong (I), honest right
        ("## Thinking\n\n想\n\n## Final Response\n\n答案是B。", FOUR, "B"),  # paper similarity, honest right
        ("Hard to say without more data.", FOUR, "A"),  # honest: no answer
        ("", FOUR, "A"),  # empty: wrong in both
        ("It is D.", FOUR, "A"),  # both wrong
        ("**B** is correct.", FOUR, "B"),  # both right
    ]
    verdicts = [scoring.score_item({"options": o, "answer_idx": g}, out) for out, o, g in cases]
    summary = scoring.summarize(verdicts)
    assert summary["n"] == 8
    # Honest: right first = cases 0, 2, 3, 7 -> 4/8; right last adds case 1 -> 5/8.
    assert summary["first_match_accuracy"] == 50.0
    assert summary["last_match_accuracy"] == 62.5
    assert summary["no_answer_found_rate"] == 12.5
    assert summary["empty_output_rate"] == 12.5
    assert summary["format_rate"] == 25.0
    # Paper: cases 0, 7 right in both; 1 right last; 2 wrong ("I"); 3 and 4 go to the similarity
    # fallback, whose guesses (the option text closest to the whole reply) miss here.
    assert [v["paper"]["rule"] for v in verdicts[3:5]] == ["similarity", "similarity"]
    assert not any(v["paper"]["first_correct"] for v in verdicts[3:5])
    assert summary["paper_first_match_accuracy"] == 25.0
    assert summary["paper_last_match_accuracy"] == 37.5
    assert summary["paper_accuracy"] == 37.5  # the better of the two
    assert summary["paper_similarity_fallback_rate"] == 25.0


def test_unknown_view_is_an_error():
    with pytest.raises(ValueError):
        scoring.extract_answers("A", FOUR, "lenient")


def test_report_cli_rescores_a_results_file(tmp_path, repo_root):
    import json
    import subprocess
    import sys

    results = [
        {"id": "MedMCQA_validation/0", "source": "MedMCQA_validation", "options": FOUR, "answer_idx": "B",
         "output": "## Thinking\n\nspots\n\n## Final Response\n\nThe answer is B.", "completion_tokens": 12, "finish_reason": "stop"},
        {"id": "MedMCQA_validation/1", "source": "MedMCQA_validation", "options": FOUR, "answer_idx": "A",
         "output": "I think it is D", "completion_tokens": 30, "finish_reason": "length"},
        {"id": "GPQA_Medical/0", "source": "GPQA_Medical", "options": FOUR, "answer_idx": "C", "output": "",
         "completion_tokens": 0, "finish_reason": "stop"},
    ]
    path = tmp_path / "m_api_x.json"
    path.write_text(json.dumps(results))
    done = subprocess.run([sys.executable, "evaluation/report.py", str(path), "--paper_row", "LLaMA-3.1-8B-Instruct"],
                          cwd=repo_root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "m_api_x_report.json").read_text())
    medmcqa = report["sources"]["MedMCQA_validation"]
    assert (medmcqa["n"], medmcqa["first_match_accuracy"], medmcqa["format_rate"]) == (2, 50.0, 50.0)
    assert (medmcqa["mean_completion_tokens"], medmcqa["cut_at_max_new_tokens_rate"]) == (21.0, 50.0)
    assert medmcqa["paper_table1"] == 56.0  # LLaMA-3.1-8B-Instruct's MedMCQA
    assert report["sources"]["GPQA_Medical"]["paper_table1"] is None  # the original's combined track: no column
    assert report["sources"]["GPQA_Medical"]["empty_output_rate"] == 100.0
    assert report["format_rate"] == round(100 / 3, 2)
    assert report["average_over_sources"]["first_match_accuracy"] == 25.0
    table = (tmp_path / "m_api_x_report.md").read_text()
    assert "| GPQA_Medical | 1 | 0.0 | 0.0 | 0.0 | 0.0 | 100.0 | 0.0 | 0.0 | n/a |" in table
    assert (tmp_path / "m_api_x_report.png").read_bytes()[:4] == b"\x89PNG"
