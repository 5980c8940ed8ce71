"""Replies that break the answer layout, and Chinese replies: both views of huatuo_o1/evaluation/scoring.py.

Every case carries the paper view's letters as the original scorer gives them (recorded by running the
original's scoring function on these replies) and the honest view's reading; the layout class is
answer_format.reply_layout's.
"""

import json

import pytest

from huatuo_o1 import answer_format
from huatuo_o1.evaluation import report, scoring
from huatuo_o1.evaluation.client import EvalArguments, check_arguments
from tests.scripts import run_script

FOUR = {"A": "Mumps", "B": "Measles", "C": "Rubella", "D": "Chickenpox"}
RASHES = {"A": "腮腺炎", "B": "麻疹", "C": "风疹", "D": "水痘", "E": "猩红热"}
IMAGING = {"A": "CT", "B": "MRI", "C": "X线", "D": "B超"}
CELLS = {"A": "T细胞", "B": "NK细胞", "C": "B细胞", "D": "巨噬细胞"}

# (reply, options, layout, honest (first, last, rule), paper (first, last, rule))
LAYOUT_CASES = [
    # full: both headings; the final response decides.
    (
        "## Thinking\n\nMumps? No: Koplik spots.\n\n## Final Response\n\nThe answer is B.",
        FOUR,
        "full",
        ("B", "B", "answer_statement"),
        ("B", "B", "answer_is"),
    ),
    # full, typeset otherwise: the honest view finds the headings; the paper view needs "## Final Response\n\n".
    (
        "### thinking:\nThe answer is A? No.\n### final response:\nC.",
        FOUR,
        "full",
        ("C", "C", "letter"),
        ("A", "A", "answer_is"),
    ),
    (
        "## Thinking\nThe answer is A? No.\n## Final Response\nThe answer is C.",
        FOUR,
        "full",
        ("C", "C", "answer_statement"),
        ("A", "C", "answer_is"),
    ),
    # final_only: no thinking heading.
    (
        "## Final Response\n\nThe answer is B.",
        FOUR,
        "final_only",
        ("B", "B", "answer_statement"),
        ("B", "B", "answer_is"),
    ),
    ("**Final Response**\nB. Measles", FOUR, "final_only", ("B", "B", "letter"), ("B", "B", "letter")),
    # thinking_only: cut short (no answer), or closed by an answer heading of the model's own.
    (
        "## Thinking\n\nOption B looks right, but",
        FOUR,
        "thinking_only",
        (None, None, "unfinished"),
        ("B", "B", "letter"),
    ),
    (
        "## Thinking\n\nThe answer is A? Koplik spots say otherwise.\n\n## Answer\n\nB",
        FOUR,
        "thinking_only",
        ("B", "B", "answer_statement"),
        ("A", "A", "answer_is"),
    ),
    (
        "## Thinking\nMumps (A) swells the parotids; Koplik spots mean measles.\nFinal answer: B",
        FOUR,
        "thinking_only",
        ("B", "B", "answer_statement"),
        ("A", "B", "letter"),
    ),
    # neither: the whole reply, or what follows a closed <think> block or an answer heading of its own.
    (
        "Koplik spots point to measles, so the answer is B.",
        FOUR,
        "neither",
        ("B", "B", "answer_statement"),
        ("B", "B", "answer_is"),
    ),
    (
        "<think>\nThe answer is A? No: Koplik spots.\n</think>\n\nThe answer is B.",
        FOUR,
        "neither",
        ("B", "B", "answer_statement"),
        ("A", "B", "answer_is"),
    ),
    ("<think>\nThe answer is A? Let me check", FOUR, "neither", (None, None, "unfinished"), ("A", "A", "answer_is")),
    (
        "Mumps (A) swells the parotids.\n\n**Final Answer:**\nB",
        FOUR,
        "neither",
        ("B", "B", "answer_statement"),
        ("A", "B", "letter"),
    ),
    (
        "腮腺炎（A）不符合。\n\n## 最终答案\n\nB",
        RASHES,
        "neither",
        ("B", "B", "answer_statement"),
        ("A", "B", "letter"),
    ),
    ("", FOUR, "neither", (None, None, "blank"), (None, None, "dropped")),
]


@pytest.mark.parametrize("reply, options, layout, honest, paper", LAYOUT_CASES)
def test_each_layout_is_classed_and_read(reply, options, layout, honest, paper):
    assert answer_format.reply_layout(reply) == layout
    assert scoring.honest_extract(reply, options) == scoring.Extraction(*honest)
    assert scoring.paper_extract(reply, options) == scoring.Extraction(*paper)


def test_layouts_are_counted_per_source():
    item = {"options": FOUR, "answer_idx": "B"}
    verdicts = [scoring.score_item(item, reply) for reply, options, *_ in LAYOUT_CASES if options is FOUR]
    summary = scoring.summarize(verdicts)
    assert summary["layout_counts"] == {"full": 3, "final_only": 2, "thinking_only": 3, "neither": 5}
    assert sum(summary["layout_counts"].values()) == summary["n"] == 13
    # format_ok stays the strict rule: only the first reply has the layout exactly.
    assert [v["format_ok"] for v in verdicts].count(True) == 1


def test_the_report_shows_the_layouts_per_source():
    replies = {
        "MedQA_USLME_test": ["## Thinking\n\nx\n\n## Final Response\n\nB", "B"],
        "PubMedQA": ["## Thinking\n\nx"],
    }
    results = [
        {"source": source, "verdict": scoring.score_item({"options": FOUR, "answer_idx": "B"}, reply)}
        for source, texts in replies.items()
        for reply in texts
    ]
    summary = report.build_report(results, {"model_name": "m"}, "HuatuoGPT-o1-8B")
    assert summary["sources"]["MedQA_USLME_test"]["layout_counts"] == {
        "full": 1,
        "final_only": 0,
        "thinking_only": 0,
        "neither": 1,
    }
    assert summary["overall"]["layout_counts"] == {"full": 1, "final_only": 0, "thinking_only": 1, "neither": 1}
    table = report.markdown_table(summary)
    assert "| 50.0 | 1/0/0/1 |" in table  # format rate, then full/final_only/thinking_only/neither
    assert "| 0.0 | 0/0/1/0 |" in table
    assert "| 33.3 | 1/0/1/1 |" in table  # the last row: over all replies


# Chinese replies: (reply, options, honest (first, last, rule), paper (first, last, rule)).
CHINESE_CASES = [
    # Letters inside Chinese text: both views read them.
    ("答案是B", RASHES, ("B", "B", "answer_statement"), ("B", "B", "letter")),
    ("答案：B", RASHES, ("B", "B", "answer_statement"), ("B", "B", "letter")),
    ("选B", RASHES, ("B", "B", "answer_statement"), ("B", "B", "letter")),
    ("故本题选B项。", RASHES, ("B", "B", "answer_statement"), ("B", "B", "letter")),
    ("（B）", RASHES, ("B", "B", "letter"), ("B", "B", "letter")),
    ("正确答案为：（B）麻疹。", RASHES, ("B", "B", "answer_statement"), ("B", "B", "letter")),
    (
        "## Thinking\n\n腮腺炎不符合。\n\n## Final Response\n\n答案是E。",
        RASHES,
        ("E", "E", "answer_statement"),
        ("E", "E", "letter"),
    ),
    # Full-width letters: the honest view reads them after NFKC; the original never reads "Ｂ" as a letter
    # (its letter class is ASCII) and falls back to option texts or similarity.
    ("答案是Ｂ。", RASHES, ("B", "B", "answer_statement"), ("E", "E", "similarity")),
    ("正确答案为（Ｂ）麻疹。", RASHES, ("B", "B", "answer_statement"), ("B", "B", "option_text")),
    (
        "## Thinking\n\n……\n\n## Final Response\n\n答案：Ｄ",
        RASHES,
        ("D", "D", "answer_statement"),
        ("E", "E", "similarity"),
    ),
    # Letters that are part of a Chinese term: "B超" (ultrasound), "B细胞" (B cells): the option's text decides.
    ("应首选B超检查。", IMAGING, ("D", "D", "option_text"), ("B", "B", "letter")),
    ("选择B细胞。", CELLS, ("C", "C", "option_text"), ("B", "B", "letter")),
    ("最可能的诊断是麻疹。", RASHES, ("B", "B", "option_text"), ("B", "B", "option_text")),
]


@pytest.mark.parametrize("reply, options, honest, paper", CHINESE_CASES)
def test_chinese_replies_in_both_views(reply, options, honest, paper):
    assert scoring.honest_extract(reply, options) == scoring.Extraction(*honest)
    assert scoring.paper_extract(scoring.clean_reply(reply), options) == scoring.Extraction(*paper)


def test_the_papers_chinese_rows_stand_beside_our_figures(tmp_path, repo_root):
    """Table 4 (HuatuoGPT-o1-7B-zh and its baselines) is read as Table 1 is: by row, the source mapped to a column."""
    records = [
        {"source": "CMB_Exam_test", "options": RASHES, "answer_idx": "B", "output": "答案：Ｂ"},
        {"source": "CMMLU_Medical", "options": RASHES, "answer_idx": "A", "output": "选B"},
        {"source": "PubMedQA", "options": FOUR, "answer_idx": "B", "output": "B"},
    ]
    path = tmp_path / "m_api_zh.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    done = run_script("evaluation/report.py", [path, "--paper_row", "HuatuoGPT-o1-7B-zh"])
    assert done.returncode == 0, done.stderr
    sources = json.loads((tmp_path / "m_api_zh_report.json").read_text())["sources"]
    assert [sources[s]["paper_table1"] for s in ("CMB_Exam_test", "CMMLU_Medical", "PubMedQA")] == [73.0, 74.5, None]
    assert (sources["CMB_Exam_test"]["honest_first_match_accuracy"], sources["CMB_Exam_test"]["paper_accuracy"]) == (
        100.0,
        0.0,  # the original cannot read the full-width letter: its similarity guess is E
    )
    table = (tmp_path / "m_api_zh_report.md").read_text()
    assert "paper: HuatuoGPT-o1-7B-zh |" in table and "| 73.0 |" in table
    # Table 1's rows give no figure for the Chinese sources, and the baselines of Table 4 are rows too.
    assert report.paper_figure("CMB_Exam_test", "HuatuoGPT-o1-8B") is None
    assert report.paper_figure("MedQA_MCMLE_test", "Qwen2.5-7B") == 71.4
    assert report.paper_figure("PubMedQA", "HuatuoGPT-o1-8B") == 79.2
    check_arguments(
        EvalArguments(model_name="m", eval_file="e.json", paper_row="HuatuoGPT-o1-7B-zh")
    )  # eval.py takes it
