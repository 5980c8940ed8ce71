"""evaluation/compare.py on tiny results files whose figures are worked out by hand: accuracies, B - A,
the discordant counts and McNemar's exact p-value; the paired bootstrap interval holds the difference and
repeats with its seed; several runs enter as per-question means; mismatched files are refused in one line."""

import json
import os

import numpy as np
import pytest

from huatuo_o1.evaluation import paired
from tests.scripts import run_script

OPTIONS = {"A": "Mumps", "B": "Measles", "C": "Rubella", "D": "Chickenpox"}


def write_run(folder, name, rights, seed=1, sha="eval-file-1", gpqa_option_seed=None):
    """A results file of eval.py and its report's settings. rights: {source: [1 where the reply is right, ...]};
    every gold answer is A, a right reply says A, a wrong one B."""
    records = []
    for source, marks in rights.items():
        for index, right in enumerate(marks):
            records.append(
                {
                    "question": f"{source} question {index}?",
                    "options": OPTIONS,
                    "answer_idx": "A",
                    "source": source,
                    "id": f"{source}/{index}",
                    "output": f"## Thinking\n\nHm.\n\n## Final Response\n\nThe answer is {'A' if right else 'B'}.",
                }
            )
    settings = {"model_name": name, "seed": seed, "eval_file_sha256": sha}
    if gpqa_option_seed is not None:
        settings["gpqa_option_seed"] = gpqa_option_seed
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{name}.json")
    with open(path, "w") as f:
        json.dump(records, f)
    with open(os.path.join(folder, f"{name}_report.json"), "w") as f:
        json.dump({"settings": settings}, f)
    return path


def compare(a, b, *flags):
    return run_script("evaluation/compare.py", [a, b, *flags])


# S: A right on questions 0-5, B on 0-3 and 6-9: both right 4, A only 2, B only 4. T: A right on all 4, B on none.
A_RIGHTS = {"S": [1, 1, 1, 1, 1, 1, 0, 0, 0, 0], "T": [1, 1, 1, 1]}
B_RIGHTS = {"S": [1, 1, 1, 1, 0, 0, 1, 1, 1, 1], "T": [0, 0, 0, 0]}


def test_mcnemar_exact_p_by_hand():
    assert paired.mcnemar_exact_p(0, 0) == 1.0
    assert paired.mcnemar_exact_p(1, 5) == 2 * (1 + 6) / 64  # n = 6, tail k <= 1
    assert paired.mcnemar_exact_p(5, 1) == 2 * (1 + 6) / 64  # two-sided: symmetric
    assert paired.mcnemar_exact_p(0, 10) == 2 / 1024
    assert paired.mcnemar_exact_p(3, 3) == 1.0  # the doubled tail (84/64) is capped


def test_bootstrap_resamples_questions_with_replacement():
    rng = np.random.default_rng(0)
    means = paired.bootstrap_means(np.array([0.0, 1.0]), 4000, rng)
    assert set(np.unique(means)) == {0.0, 0.5, 1.0}  # two draws from {0, 1}
    assert abs((means == 0.5).mean() - 0.5) < 0.03 and abs((means == 0.0).mean() - 0.25) < 0.03


def test_compare_two_results_files_by_hand(tmp_path):
    a = write_run(tmp_path / "a", "base", A_RIGHTS)
    b = write_run(tmp_path / "b", "trained", B_RIGHTS)
    result = compare(a, b, "--output", tmp_path / "cmp")
    assert result.returncode == 0, result.stderr
    comparison = json.loads((tmp_path / "cmp.json").read_text())
    s, t, average = comparison["sources"]["S"], comparison["sources"]["T"], comparison["average_over_sources"]
    # S: A 6/10, B 8/10, B - A = +20 points; discordant 2 and 4: p = 2 (C(6,0) + C(6,1) + C(6,2)) / 2^6 = 44/64.
    assert (s["n"], s["a_accuracy"], s["b_accuracy"], s["difference"]) == (10, 60.0, 80.0, 20.0)
    assert (s["a_only"], s["b_only"], s["ties"], s["mcnemar_p"]) == (2, 4, 4, 44 / 64)
    # T: A 4/4, B 0/4: -100 points, whatever questions are drawn; discordant 4 and 0: p = 2 / 2^4.
    assert (t["a_accuracy"], t["b_accuracy"], t["difference"], t["ci95"]) == (100.0, 0.0, -100.0, [-100.0, -100.0])
    assert (t["a_only"], t["b_only"], t["mcnemar_p"]) == (4, 0, 2 / 16)
    # Averaged over sources: A (60 + 100) / 2 = 80, B (80 + 0) / 2 = 40; the test over all 14 questions,
    # discordant 6 and 4: p = 2 (1 + 10 + 45 + 120 + 210) / 2^10.
    assert (average["n"], average["a_accuracy"], average["b_accuracy"], average["difference"]) == (
        14,
        80.0,
        40.0,
        -40.0,
    )
    assert (average["a_only"], average["b_only"], average["mcnemar_p"]) == (6, 4, 772 / 1024)
    # The intervals hold the differences; S's is not a point (its differences vary from question to question).
    assert s["ci95"][0] <= 20.0 <= s["ci95"][1] and s["ci95"][0] < s["ci95"][1]
    assert average["ci95"][0] <= -40.0 <= average["ci95"][1]
    assert (comparison["runs"], comparison["resamples"], comparison["view"]) == (1, 10000, "honest_first")
    assert comparison["settings_that_differ"] == {"model_name": ["base", "trained"]}
    assert (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"
    assert "| S | 10 | 60.0 | 80.0 | +20.0 |" in result.stdout

    # Seeded: the same seed gives the same intervals, another seed other ones.
    again = compare(a, b, "--output", tmp_path / "again")
    assert again.returncode == 0 and json.loads((tmp_path / "again.json").read_text()) == comparison
    other = compare(a, b, "--output", tmp_path / "other", "--seed", "1", "--resamples", "500")
    assert other.returncode == 0
    assert json.loads((tmp_path / "other.json").read_text())["sources"]["S"]["ci95"] != s["ci95"]

    # Default output: beside B.
    assert compare(a, b).returncode == 0
    assert (tmp_path / "b" / "compare_base_vs_trained.json").exists()


def write_set(folder, name, runs_rights):
    """A set's index over one results file per run (seeds 1, 2, ...)."""
    entries = []
    for seed, rights in enumerate(runs_rights, start=1):
        path = write_run(folder, f"{name}_seed{seed}", rights, seed=seed, gpqa_option_seed=seed)
        entries.append({"seed": seed, "gpqa_option_seed": seed, "results": os.path.basename(path), "seconds": 1.0})
    index = os.path.join(folder, f"{name}_runs.json")
    with open(index, "w") as f:
        json.dump({"settings": {"model_name": name, "eval_file_sha256": "eval-file-1"}, "runs": entries}, f)
    return index


def test_several_runs_enter_as_per_question_means(tmp_path):
    # A: question 0 right in run 1 only (0.5), question 1 in both (1). B: question 0 in both (1), 1 in neither (0).
    a = write_set(tmp_path, "a", [{"S": [1, 1]}, {"S": [0, 1]}])
    b = write_set(tmp_path, "b", [{"S": [1, 0]}, {"S": [1, 0]}])
    result = compare(a, b, "--output", tmp_path / "cmp")
    assert result.returncode == 0, result.stderr
    s = json.loads((tmp_path / "cmp.json").read_text())["sources"]["S"]
    assert (s["a_accuracy"], s["b_accuracy"], s["difference"]) == (75.0, 50.0, -25.0)
    assert (s["a_only"], s["b_only"], s["mcnemar_p"]) == (1, 1, 1.0)
    # Against one run of seed 1: not the same runs.
    single = write_run(tmp_path / "single", "c", {"S": [1, 1]}, seed=1, gpqa_option_seed=1)
    refused = compare(a, single)
    assert refused.returncode == 1 and "A (" in refused.stderr and "has 2 runs (seeds 1, 2" in refused.stderr


def test_the_bootstrap_is_paired(tmp_path):
    # Two models right and wrong on the same questions: every resample gives no difference. Resampling the
    # two models' questions apart would give a wide interval.
    a = write_run(tmp_path / "a", "base", {"S": B_RIGHTS["S"]})
    b = write_run(tmp_path / "b", "trained", {"S": B_RIGHTS["S"]})
    assert compare(a, b, "--output", tmp_path / "cmp").returncode == 0
    s = json.loads((tmp_path / "cmp.json").read_text())["sources"]["S"]
    assert (s["difference"], s["ci95"], s["a_only"], s["b_only"], s["ties"], s["mcnemar_p"]) == (
        0.0,
        [0.0, 0.0],
        0,
        0,
        10,
        1.0,
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(seed=2), "not the same runs: A ("),
        (dict(sha="eval-file-2"), "not the same eval file: A ("),
        (dict(rights={"S": B_RIGHTS["S"], "T": [0, 0, 0]}), "not the same questions:"),
        (dict(question=("S/3", "Another question?")), "not the same eval file: question S/3 differs"),
    ],
)
def test_mismatched_results_are_refused_in_one_line(tmp_path, change, message):
    a = write_run(tmp_path / "a", "base", A_RIGHTS)
    b = write_run(
        tmp_path / "b",
        "trained",
        change.get("rights", B_RIGHTS),
        seed=change.get("seed", 1),
        sha=change.get("sha", "eval-file-1"),
    )
    if "question" in change:
        records = json.loads(open(b).read())
        qid, text = change["question"]
        next(r for r in records if r["id"] == qid)["question"] = text
        with open(b, "w") as f:
            json.dump(records, f)
    result = compare(a, b, "--output", tmp_path / "cmp")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: " + message), result.stderr
    assert not os.path.exists(tmp_path / "cmp.json")
