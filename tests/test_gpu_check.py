"""bench/gpu_check.py at tiny sizes on the CPU: every step runs as its user types it and reports its figures, so
the GPU check cannot rot between the rare runs on a GPU; a failing or skipped step is named and the exit is 1."""

import json
import math
import os
import subprocess
import sys

import pytest

from tests.scripts import REPO_ROOT

STEPS = ["prepare", "sft_zero3", "ppo", "serve_eval", "inference", "verifier", "sft_zero3_padded", "sft_plain",
         "sft_trl", "grpo", "reload"]  # fmt: skip
SFT_STEPS = ["sft_zero3", "sft_zero3_padded", "sft_plain", "sft_trl"]


def run_check(smollm2, out, *flags):
    command = [sys.executable, "bench/gpu_check.py", "--device", "cpu", "--tiny", "--tokenizer", smollm2,
               "--output_dir", str(out), *flags]  # fmt: skip
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    with open(os.path.join(out, "gpu_check.json"), encoding="utf-8") as f:
        report = json.load(f)
    with open(os.path.join(out, "gpu_check.md"), encoding="utf-8") as f:
        table = f.read()
    return done, report, table


@pytest.mark.e2e
@pytest.mark.server
@pytest.mark.real_model
def test_every_step_runs_tiny_on_the_cpu_and_reports_its_figures(smollm2, tmp_path):
    out = tmp_path / "gpu"
    done, report, table = run_check(smollm2, out, "--jobs", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    steps = report["steps"]
    assert list(steps) == STEPS and report["ok"] and report["failed"] == report["skipped"] == []
    for name, step in steps.items():
        assert step["status"] == "ok", (name, step)
        assert step["seconds"] > 0 and step["peak_gpu_memory_gib"] is None  # no GPU: nothing to record
        assert os.path.getsize(out / "logs" / f"{name}.log") > 0
        assert f"| {name} | ok | {step['seconds']} |" in table  # the table lists every step
    # every step that loads a model names its attention kernel, measured inside its processes
    assert all(steps[name]["attention"] == ["sdpa"] for name in STEPS if name != "serve_eval")
    assert steps["prepare"]["models"]["policy"]["parameters"] > 0
    assert "random" in report["weights"].lower() and report["device"] == "cpu"

    for name in SFT_STEPS:
        sft = steps[name]
        assert sft["optimizer_steps"] == 3 and sft["tokens_per_second"] > 0, (name, sft)
        assert math.isfinite(sft["first_loss"]) and math.isfinite(sft["last_loss"])
        assert sft["mfu"] is None  # no bf16 peak on a CPU
    assert steps["sft_zero3"]["padding_share"] == 0 < steps["sft_zero3_padded"]["padding_share"]
    assert all(ratio > 0 for ratio in report["comparisons"].values())

    ppo = steps["ppo"]
    assert ppo["updates"] == 2 and len(ppo["seconds_per_update"]) == 2
    for update in ppo["seconds_per_update"]:
        assert set(update) == {"generate", "forward", "reward", "optimise", "total"}
        assert update["generate"] > 0 and update["optimise"] > 0
        assert update["total"] == pytest.approx(sum(v for k, v in update.items() if k != "total"), abs=0.02)
    assert steps["grpo"]["updates"] == 2 and len(steps["grpo"]["seconds_per_update"]) == 2
    verifier = steps["verifier"]
    assert verifier["tokens_per_second"] > 0 and math.isfinite(verifier["last_loss"])
    assert steps["serve_eval"]["answers"] == 7  # one question of each of the 7 sources (--tiny)

    # every checkpoint saved above reloads and generates (policies) or scores (the verifier)
    reloaded = steps["reload"]["reloaded"]
    assert len(reloaded) == 6 and all(r["ok"] and r["finite"] for r in reloaded.values())
    assert sorted(r.get("new_tokens") for r in reloaded.values() if r["class"].endswith("ForCausalLM")) == [8] * 5


@pytest.mark.real_model
def test_a_failing_step_is_named_its_rerun_keeps_the_others_and_steps_out_of_time_are_skipped(smollm2, tmp_path):
    out = tmp_path / "gpu"
    done, report, table = run_check(smollm2, out, "--only", "prepare", "inference", "--break_step", "inference")
    assert done.returncode == 1 and "FAILED: inference" in done.stdout
    assert report["steps"]["prepare"]["status"] == "ok" and report["failed"] == ["inference"]
    assert report["steps"]["inference"]["status"] == "failed"
    assert "exit status 2" in report["steps"]["inference"]["reason"]  # the script's one-line error for the flag
    assert "unknown flag --no_such_flag" in (out / "logs" / "inference.log").read_text()
    assert "| inference | failed |" in table

    # a second try of that step alone: the earlier result of the other step is kept
    done, report, _ = run_check(smollm2, out, "--only", "inference")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [report["steps"][name]["status"] for name in ("prepare", "inference")] == ["ok", "ok"]

    # no time left: the steps are skipped, and said to be
    done, report, table = run_check(smollm2, tmp_path / "late", "--only", "prepare", "inference", "--deadline", "1")
    assert done.returncode == 1 and "SKIPPED: prepare, inference" in done.stdout
    assert report["skipped"] == ["prepare", "inference"] and not report["ok"]
    assert report["steps"]["prepare"]["reason"].startswith("out of time")
    assert report["steps"]["inference"]["reason"] == "needs prepare"
    assert "| prepare | skipped |" in table


@pytest.mark.parametrize("ending, status", [("pass", 0), ("os._exit(3)", 3), ("os.kill(os.getpid(), 15)", -15)])
def test_the_probe_records_each_process_however_it_ends(tiny_models, tmp_path, ending, status):
    """A step's process writes its figures when it ends: normally, through os._exit (a rank of a multi-process
    launch) or by SIGTERM (a stopped server), and still ends as it would have."""
    code = (
        "import os\nfrom transformers import AutoModelForCausalLM\n"
        f"AutoModelForCausalLM.from_pretrained({tiny_models['tiny-llama']!r}, attn_implementation='eager')\n{ending}\n"
    )
    env = dict(os.environ, GPU_CHECK_PROBE_DIR=str(tmp_path), PYTHONPATH=os.path.join(REPO_ROOT, "bench", "gpu_probe"))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == status, done.stderr[-2000:]
    (written,) = os.listdir(tmp_path)
    with open(tmp_path / written, encoding="utf-8") as f:
        figures = json.load(f)
    assert written == f"{figures['pid']}.json"
    assert figures["attention"] == {"LlamaModel": "eager", "LlamaForCausalLM": "eager"}
    assert figures["peak_allocated_bytes"] is None  # no CUDA used
