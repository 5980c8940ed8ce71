"""End to end through a real server, `transformers serve` on tiny models (the vLLM backend: tests/test_vllm.py):
evaluation/serve.py starts it, evaluation/eval.py asks it every question through the openai client (three ways),
kill_sglang_server.sh stops exactly that server; then evaluation/run_eval.sh does all three in one command."""

import json
import os
import re
import subprocess
import sys

import pytest
from transformers import AutoTokenizer, HfArgumentParser

from huatuo_o1.evaluation import scoring
from huatuo_o1.evaluation.client import EvalArguments, output_stem, settings_of
from huatuo_o1.serving import free_port, read_pid_file
from tests.scripts import run_command

pytestmark = pytest.mark.server

DEMO_FILE = "evaluation/data/demo_eval_data.json"
WITH_PYTHON = {"PYTHON": sys.executable}  # the shell scripts' interpreter: this one


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_serve_eval_and_stop_only_our_server_then_all_in_one_command(tiny_models, repo_root, tmp_path):
    model = tiny_models["tiny-llama"]
    port = free_port()
    pid_file = tmp_path / "server.pid"
    # Stands in for someone else's SGLang: the original stop script would have killed it.
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)", "sglang.launch_server", "--port", "1"]
    )
    try:
        serve = [sys.executable, "evaluation/serve.py", "--model_path", model, "--port", port,
                 "--backend", "transformers", "--pid_file", pid_file, "--timeout", "120"]  # fmt: skip
        run_command(serve, check=True)
        server_pid = read_pid_file(pid_file).pid
        assert alive(server_pid)

        # Run 1: the original's mode (client-side chat template, /v1/completions), resuming a partial run.
        out1 = tmp_path / "run1"
        out1.mkdir()
        common = [
            "--model_name",
            model,
            "--eval_file",
            DEMO_FILE,
            "--port",
            str(port),
            "--max_new_tokens",
            "8",
            "--max_items_per_source",
            "2",
            "--batch_size",
            "4",
            "--seed",
            "7",
        ]

        def stem_and_settings(*argv):
            """The results' name and the settings line eval.py derives from these flags (run from repo_root)."""
            (args,) = HfArgumentParser(EvalArguments).parse_args_into_dataclasses(list(argv))
            args.eval_file = os.path.join(repo_root, args.eval_file)
            settings = settings_of(args)
            return output_stem(args, settings), settings

        stem, settings = stem_and_settings(*common)
        assert stem.startswith("tiny-llama_api_demo_eval_data_")
        (out1 / f"{stem}.partial.jsonl").write_text(
            json.dumps({"settings": settings})
            + "\n"
            + json.dumps({"id": "PubMedQA/1", "output": "The answer is B."})
            + "\n"
        )
        done = run_command([sys.executable, "evaluation/eval.py", *common, "--output_dir", out1], check=True)
        assert "14 items, 1 already answered (resumed), 13 to ask" in done.stdout
        results = json.loads((out1 / f"{stem}.json").read_text())
        assert len(results) == 14 and len({r["id"] for r in results}) == 14
        assert all(isinstance(r["output"], str) for r in results)
        asked = [r for r in results if r["id"] != "PubMedQA/1"]
        assert all(1 <= r["completion_tokens"] <= 8 and r["finish_reason"] in ("length", "stop") for r in asked)
        assert all(r["output"] == scoring.clean_reply(r["raw_output"]) for r in asked)
        resumed = next(r for r in results if r["id"] == "PubMedQA/1")
        assert resumed["output"] == "The answer is B." and resumed["verdict"]["honest"]["first_correct"]
        assert resumed["verdict"]["paper"]["first_correct"]
        assert all(
            r["prompt"].startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nPlease answer")
            for r in results
        )
        assert not (out1 / f"{stem}.partial.jsonl").exists()
        report = json.loads((out1 / f"{stem}_report.json").read_text())
        assert set(report["sources"]) == {
            "MedQA_USLME_test",
            "MedMCQA_validation",
            "PubMedQA",
            "MMLU-Pro_Health",
            "MMLU-Pro_Biology",
            "GPQA_Genetics",
            "GPQA_Molecular_Biology",
        }
        # Each source's figures are those of its items' verdicts.
        for source, figures in report["sources"].items():
            verdicts = [r["verdict"] for r in results if r["source"] == source]
            assert {k: figures[k] for k in scoring.summarize(verdicts)} == scoring.summarize(verdicts)
        assert report["sources"]["PubMedQA"]["paper_table1"] == 79.2
        assert report["format_rate"] == 0.0
        assert report["overall"]["mean_completion_tokens"] == round(sum(r["completion_tokens"] for r in asked) / 13, 1)
        assert (out1 / f"{stem}_report.png").stat().st_size > 1000
        pubmedqa = report["sources"]["PubMedQA"]
        assert f"| PubMedQA | 2 | {pubmedqa['paper_accuracy']:.1f} |" in (out1 / f"{stem}_report.md").read_text()

        # Run 2: no client template, strict prompt, prompts cut to 250 tokens (tiny tokenizer: ~160-330 uncut).
        out2 = tmp_path / "run2"
        strict = ["--use_chat_template", "False", "--strict_prompt", "--max_tokens", "250"]
        run_command([sys.executable, "evaluation/eval.py", *common, "--output_dir", out2, *strict], check=True)
        stem2, _ = stem_and_settings(*common, *strict)
        assert stem2.startswith("tiny-llama_api_demo_eval_data_strict_") and stem2 != stem
        results = json.loads((out2 / f"{stem2}.json").read_text())
        assert len(results) == 14
        tokenizer = AutoTokenizer.from_pretrained(model)
        for r in results:
            assert r["prompt"].startswith(
                "Please answer the following multiple-choice questions. Please answer the following"
            )
            assert len(tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]) <= 250
            assert r["prompt"].endswith(f"{list(r['options'])[-1]}. {list(r['options'].values())[-1]}")
            # Short MedMCQA questions fit whole; the long PubMedQA contexts were cut.
            assert (r["question"] in r["prompt"]) == (r["source"] != "PubMedQA") or r["source"] not in (
                "PubMedQA",
                "MedMCQA_validation",
            )

        # Stop: exactly the recorded server, not the other "sglang" process.
        stop = ["bash", "evaluation/kill_sglang_server.sh", pid_file]
        done = run_command(stop, env=WITH_PYTHON, check=True)
        assert f"stopped server PID {server_pid}" in done.stdout
        assert not alive(server_pid) and not pid_file.exists()
        assert bystander.poll() is None
        assert "nothing stopped" in run_command(stop, env=WITH_PYTHON, check=True).stdout

        # Run 3, all in one command (evaluation/run_eval.sh: serve, eval, stop), through the chat endpoint (the
        # server applies the template), on the other tiny model.
        out3 = tmp_path / "run3"
        one_command = ["bash", "evaluation/run_eval.sh", tiny_models["tiny-qwen2"], "--eval_file", DEMO_FILE,
                       "--max_new_tokens", "6", "--max_items_per_source", "1", "--request_mode", "chat",
                       "--output_dir", out3]  # fmt: skip
        serve_with = {"TMPDIR": str(tmp_path), "SERVE_ARGS": "--backend transformers --timeout 120"}
        done = run_command(one_command, env={**WITH_PYTHON, **serve_with}, check=True)
        server_pid = int(re.search(r"server PID (\d+) ready", done.stdout).group(1))
        assert f"stopped server PID {server_pid}" in done.stdout and not alive(server_pid)
        assert bystander.poll() is None
        assert not [p for p in os.listdir(tmp_path) if p.startswith("eval_server.") and not p.endswith(".log")]
        (report_file,) = [name for name in os.listdir(out3) if name.endswith("_report.json")]
        assert report_file.startswith("tiny-qwen2_api_demo_eval_data_")
        report = json.loads((out3 / report_file).read_text())
        assert report["overall"]["n"] == 7 and "format_rate" in report
        assert all(s["n"] == 1 for s in report["sources"].values())
        (results3,) = [name for name in os.listdir(out3) if not name.endswith(("_report.json", ".md", ".png"))]
        assert len(json.loads((out3 / results3).read_text())) == 7
    finally:
        if pid_file.exists():
            subprocess.run(
                [sys.executable, "evaluation/serve.py", "--stop", "--pid_file", str(pid_file)], cwd=repo_root
            )
        bystander.kill()
        bystander.wait()


RUN_EVAL_FLAGS = ["--eval_file", DEMO_FILE, "--max_new_tokens", "6", "--max_items_per_source", "1"]


def test_run_eval_two_models_then_compare(tiny_models, repo_root, tmp_path):
    serve_with = {"TMPDIR": str(tmp_path), "SERVE_ARGS": "--backend transformers --timeout 120"}
    out = tmp_path / "out"
    models = [tiny_models["tiny-qwen2"], tiny_models["tiny-llama"]]
    command = ["bash", "evaluation/run_eval.sh", *models, *RUN_EVAL_FLAGS, "--output_dir", out]
    done = run_command(command, env={**WITH_PYTHON, **serve_with}, check=True)
    # One server per model, each stopped before the next starts.
    server_pids = [int(pid) for pid in re.findall(r"server PID (\d+) ready", done.stdout)]
    assert len(server_pids) == 2 and not any(alive(pid) for pid in server_pids)
    assert done.stdout.index(f"stopped server PID {server_pids[0]}") < done.stdout.index(
        f"server PID {server_pids[1]} ready"
    )
    stems = sorted(name[: -len("_report.json")] for name in os.listdir(out) if name.endswith("_report.json"))
    a_stem, b_stem = (next(s for s in stems if s.startswith(prefix)) for prefix in ("tiny-qwen2_", "tiny-llama_"))
    comparison = json.loads((out / f"compare_{a_stem}_vs_{b_stem}.json").read_text())
    assert len(comparison["sources"]) == 7 and comparison["average_over_sources"]["n"] == 7
    # Each source's accuracies are those of the two models' verdicts on its one question.
    for name, stem in (("a", a_stem), ("b", b_stem)):
        for record in json.loads((out / f"{stem}.json").read_text()):
            right = 100.0 * record["verdict"]["honest"]["first_correct"]
            assert comparison["sources"][record["source"]][f"{name}_accuracy"] == right
    assert (out / f"compare_{a_stem}_vs_{b_stem}.png").exists()
