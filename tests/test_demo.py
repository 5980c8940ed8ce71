"""The end-to-end demo at its reduced size: every stage runs and leaves non-trivial artifacts."""

import glob
import json
import math
import os
import subprocess
import sys

import pytest
from transformers import AutoConfig

from huatuo_o1.decontamination import WINDOW, nfkc_lower_single_spaced
from huatuo_o1.records import GROUND_TRUTH, OPEN_QUESTION, read_json
from tests.scripts import run_ok

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_DATA = os.path.join(REPO, "data", "demo_data.json")


def windows(text):
    text = nfkc_lower_single_spaced(text)
    return {text[i : i + WINDOW] for i in range(len(text) - WINDOW + 1)}


def facts_taught(search_part, rl_part):
    """RL problems whose reference answer an open-ended problem of the search half has (counted here, apart from
    demo.py's own count, which the quick demo's test checks against this one)."""
    taught = {row[GROUND_TRUTH] for row in search_part if row["data_type"] == "medical"}
    return sum(row[GROUND_TRUTH] in taught for row in rl_part)


def test_the_demo_data_asks_its_facts_twice_so_that_rl_meets_facts_sft_taught(tmp_path):
    items = read_json(DEMO_DATA)
    half = len(items) // 2
    firsts, seconds = items[:half], [item for item in items[half:] if OPEN_QUESTION in item]
    assert len(items) == 48 and len(seconds) == 22
    # Each verifiable item of the second half asks a fact of the first half again: the same answer and options, the
    # right one under another letter, in another vignette (most of its 64-character windows are its own; the
    # shared ones are exam stems such as "Which of the following is the most likely diagnosis?").
    twins = []
    for second in seconds:
        (first,) = [index for index, item in enumerate(firsts) if item["answer"] == second["answer"]]
        twins.append(first)
        original = firsts[first]
        assert second[GROUND_TRUTH] == original[GROUND_TRUTH] and second["answer_idx"] != original["answer_idx"]
        assert sorted(second["options"].values()) == sorted(original["options"].values())
        for field in ("question", OPEN_QUESTION):
            own = windows(second[field])
            assert len(own & windows(original[field])) / len(own) < 0.25, (second["answer"], field)
    assert twins == sorted(twins)  # in the first half's order: --quick's first facts of each half are twins

    # The demo's split (prepare_training_data.py as demo.py runs it, seed 42) puts some twins in different halves:
    # RL problems whose fact the search half teaches (10 of 22 today).
    problems = tmp_path / "problems.json"
    problems.write_text(json.dumps([item for item in items if OPEN_QUESTION in item]))
    recipe = tmp_path / "recipe"
    run_ok(
        "prepare_training_data.py",
        [
            "--data_path",
            problems,
            "--eval_file",
            os.path.join(REPO, "evaluation", "data", "demo_eval_data.json"),
            "--search_size",
            "0.5",
            "--rl_size",
            "0.5",
            "--closed_set_size",
            "0.1",
            "--output_dir",
            recipe,
        ],
    )
    search_part, rl_part = (read_json(recipe / f"{part}_part.json") for part in ("search", "rl"))
    assert facts_taught(search_part, rl_part) >= 8


@pytest.mark.e2e
@pytest.mark.real_model
@pytest.mark.server
def test_quick_demo_runs_every_stage_and_learns_the_layout(tmp_path, smollm2):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "demo.py", "--quick", "--output_dir", str(out), "--model_path", smollm2],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "HuatuoGPT-o1 demo: what ran" in result.stdout
    summary = json.loads((out / "demo_summary.json").read_text())

    # Data stages: 24 exam items in, verifiable problems out, split by the recipe into disjoint halves
    # (the search half with closed-set copies of some of its items), SFT rows out, exactly the SFT keys.
    problems = json.loads((out / "data" / "verifiable_problems.json").read_text())
    search_part, rl_part = (
        json.loads((out / "data" / "recipe" / f"{p}_part.json").read_text()) for p in ("search", "rl")
    )
    sft_rows = json.loads((out / "data" / "sft_data.json").read_text())
    assert 15 <= len(problems) <= 24
    open_search = {row["origin"] for row in search_part if row["data_type"] == "medical"}
    closed = [row for row in search_part if row["data_type"] == "medical_closed_set"]
    assert not open_search & {row["origin"] for row in rl_part}
    assert {row["data_type"] for row in rl_part} == {"medical"}
    assert len(open_search) + len(rl_part) == len(problems) and abs(len(open_search) - len(rl_part)) <= 1
    assert len(closed) == round(0.1 * len(problems)) and {row["origin"] for row in closed} <= open_search
    assert summary["recipe"]["accounting"] == {
        "input_items": len(problems), "in_search": len(open_search), "in_rl": len(rl_part), "dropped": 0
    }  # fmt: skip
    assert (
        summary["recipe"]["decontamination"]["contaminated_items"] == 0
    )  # our items share nothing with the eval file
    # the RL problems whose fact the search half teaches (the other vignette of the same fact), counted and printed
    n_taught = facts_taught(search_part, rl_part)
    assert summary["recipe"]["rl_facts_taught"] == n_taught > 0
    assert f"{n_taught} of {len(rl_part)} RL problems ask a fact the search half teaches" in result.stdout
    assert len(sft_rows) == len(search_part)  # efficient search verifies every problem
    assert all(set(row) == {"Question", "Complex_CoT", "Response"} and all(row.values()) for row in sft_rows)

    # SFT: finite losses that fall, a loadable checkpoint.
    first, last = summary["sft_loss"]
    assert math.isfinite(first) and math.isfinite(last) and last < first / 2
    sft_ckpt = json.loads((out / "ckpts" / "sft" / "training_summary.json").read_text())["final_checkpoint"]
    assert AutoConfig.from_pretrained(sft_ckpt).model_type == "llama"

    # Verifier: trained on the search verdicts and the exam items' pairs (shares reported), figures are shares.
    verifier = summary["verifier"]
    sources = verifier["sources"]
    assert sources["search"]["examples"] > 0 and sources["exam"]["examples"] > 0
    assert sources["search"]["examples"] + sources["exam"]["examples"] == verifier["n_examples"]
    assert 0.0 <= verifier["heldout"]["accuracy"] <= 1.0 and 0.0 <= verifier["verifier_vs_baseline_agreement"] <= 1.0
    assert f"held-out accuracy {verifier['heldout']['accuracy']:.2f}" in result.stdout
    assert AutoConfig.from_pretrained(str(out / "verifier")).num_labels == 2

    # RL: rewards in [0, 1], a saved policy.
    rl = summary["rl"]
    assert rl["updates"] == 2
    for when in ("eval_start", "eval_end"):
        assert 0.0 <= rl[when]["mean_reward"] <= 1.0 and 0.0 <= rl[when]["format_rate"] <= 1.0
    assert os.path.exists(out / "ckpts" / "rl" / "config.json")
    log = [json.loads(line) for line in (out / "ckpts" / "rl" / "rl_log.jsonl").read_text().splitlines()]
    assert rl["training_reward"] == [r["objective/score"] for r in log] and len(log) == 2  # shown before / after
    assert (out / "ckpts" / "rl" / "rl_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert f"training reward {log[0]['objective/score']:.2f} -> {log[1]['objective/score']:.2f}" in result.stdout
    # the reward spread per update, as the log has it, printed
    assert rl["reward_spread"] == [[r[f"objective/score_{k}"] for k in ("min", "max", "std")] for r in log]
    assert all(low <= mean <= high for (low, high, _), mean in zip(rl["reward_spread"], rl["training_reward"]))
    spread = ", ".join(f"{low:.2f}..{high:.2f} ({std:.2f})" for low, high, std in rl["reward_spread"])
    assert f"RL reward spread per update (min..max, std): {spread}" in result.stdout

    # Evaluation: every question answered by both models, accuracies are shares, and the trained
    # model answers in the Thinking / Final Response layout more often than the base model.
    for name in ("base", "trained"):
        results = [p for p in glob.glob(str(out / "eval" / name / "*.json")) if not p.endswith("_report.json")]
        assert len(results) == 1 and len(json.loads(open(results[0]).read())) == 7
        assert all(0.0 <= acc <= 1.0 for acc in summary["accuracy"][name].values())
        assert glob.glob(str(out / "eval" / name / "*_report.png"))
    assert summary["format_rate"]["trained"] > summary["format_rate"]["base"]
    assert [s["stage"] for s in summary["stages"]] == [
        "model",
        "construct",
        "prepare",
        "search",
        "sft",
        "verifier",
        "rl",
        "eval base",
        "eval trained",
        "compare",
        "inference",
    ]
    assert (out / "logs" / "inference.log").read_text().strip()
