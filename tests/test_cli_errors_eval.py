"""Bad input to the evaluation scripts, inference.py and score_verifier.py: one line, a non-zero exit, files
untouched; and the process findings of issue 13, each against a tiny HTTP server written here (no model
is served): a port held by another server, a forged PID file, the API key, result-file keys, a hang."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from transformers import HfArgumentParser

from huatuo_o1.evaluation.client import EvalArguments, output_stem, settings_of
from huatuo_o1.serving import free_port, process_start_time, start_server, stop_pid
from tests.damage import damage, seal
from tests.scripts import REPO_ROOT, run_script

ITEM = {"question": "Which vitamin deficiency causes scurvy?", "options": {"A": "C", "B": "D"}, "answer_idx": "A"}
OPENAI_SECRET = "sk-openai-teacher-key-0123456789"
EVAL_SECRET = "sk-eval-server-key-9876543210"

# A stand-in inference server: /health answers 200; every POST is logged (its Authorization header and
# model) and answered as `mode` says: "reply" (a completion that echoes the header, model and seed),
# "slow" (the same after 2 s: longer than a loaded machine takes to deliver a Ctrl-C, so no worker finishes a
# request and starts another in between) or "error" (401 with the header echoed in the error body, as careless
# servers do).
TINY_SERVER = textwrap.dedent(
    """
    import json, sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    port, mode, log = int(sys.argv[1]), sys.argv[2], sys.argv[3]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def send(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.send(200, {"status": "ok"})

        def do_POST(self):
            auth = self.headers.get("Authorization", "")
            request = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            with open(log, "a") as f:
                f.write(json.dumps({"authorization": auth, "model": request.get("model")}) + "\\n")
            if mode == "error":
                self.send(401, {"error": {"message": f"invalid key in {auth}", "type": "invalid_request_error"}})
                return
            if mode == "slow":
                time.sleep(2.0)
            text = f"The answer is A. ({auth} | {request.get('model')} | seed {request.get('seed')})"
            self.send(200, {
                "id": "x", "object": "text_completion", "created": 0, "model": request.get("model"),
                "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
            })

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


@pytest.fixture
def tiny_server(tmp_path):
    """tiny_server(mode) -> (base_url, log path, process); every server started is stopped by its PID."""
    script = tmp_path / "tiny_server.py"
    script.write_text(TINY_SERVER)
    started = []

    def start(mode="reply"):
        port = free_port()
        log = tmp_path / f"requests_{port}.jsonl"
        log.touch()
        process = start_server(
            [sys.executable, str(script), str(port), mode, str(log)], f"http://127.0.0.1:{port}/health", timeout_s=30
        )
        started.append(process)
        return f"http://127.0.0.1:{port}/v1", log, process

    yield start
    for process in started:
        stop_pid(process.pid)


@pytest.fixture
def bystander():
    """An unrelated process of ours (`sleep 300`) that no stop command may touch."""
    process = subprocess.Popen(["sleep", "300"])
    yield process
    process.kill()
    process.wait()


def fingerprint(folder):
    """{file name: sha256} of every file under folder, to show nothing was written or changed."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return found


def one_line_error(result, culprit):
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0, (result.stdout, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert culprit in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def eval_stem(argv):
    """The results' name eval.py derives from these flags (run from the repository)."""
    (args,) = HfArgumentParser(EvalArguments).parse_args_into_dataclasses([str(a) for a in argv])
    return output_stem(args, settings_of(args))


# ---------------------------------------------------------------------------------------------------------
# The table: script x bad input -> exit status, one line naming the culprit, files untouched.


def case_files(tmp_path):
    """The files a case may name (made fresh for each case); all of them must be left as they are."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "eval.json").write_text(json.dumps({"S": [ITEM, ITEM]}))
    (work / "latin1.json").write_bytes('{"S": [{"question": "caf\xe9"}]}'.encode("latin-1"))
    (work / "model").mkdir()
    (work / "model" / "config.json").write_text("{}")
    (work / "a_file").write_text("not a folder")
    (work / "results.json").write_text(json.dumps([{**ITEM, "output": "The answer is A."}]))
    (work / "results_dict.json").write_text(json.dumps({"S": [ITEM]}))
    (work / "results_lacking.json").write_text(json.dumps([ITEM]))
    (work / "pairs.json").write_text(json.dumps([{"response": "C", "reference_answer": "C"}] * 3))
    (work / "old_eval_data.json").write_text(json.dumps({"S": [ITEM, ITEM, ITEM]}))
    (work / "medqa.json").write_text(json.dumps([{"question": "q", "options": {"A": "x"}, "answer_idx": "A"}]))
    (work / "garbage.pid").write_text("not a pid\n")
    (work / "minus_one.pid").write_text("-1\n")
    (work / "binary.pid").write_bytes(b"\xff\xfe\x00\x01")
    (work / "empty.pid").write_text("")
    (work / "init.pid").write_text(json.dumps({"pid": 1, "start_time": "1", "command": ["init"]}))
    (work / "broken.json").write_text('[{"question": "a?"},\n{"question": "b?",}]')
    (work / "broken.pid").write_text('{"pid": 4242,\n "start_time": "1"\n "command": ["x"]}')
    # a model folder of ours whose weights were cut short after its manifest was written
    shutil.copytree(work / "model", work / "damaged_model")
    (work / "damaged_model" / "model.safetensors").write_bytes(b"weights" * 100)
    seal(str(work / "damaged_model"))
    damage(str(work / "damaged_model" / "model.safetensors"), "truncated")
    out = tmp_path / "out"
    out.mkdir()
    return work, out


SKIP_ALL = "--medqa skip --medmcqa skip --pubmedqa skip --mmlu_pro skip --gpqa skip"
SKIP_BUT_MEDQA = SKIP_ALL.split(" ", 2)[2]
EVAL = "--model_name {work}/model --eval_file {work}/eval.json --use_chat_template False"
EVAL_OUT = EVAL + " --output_dir {out} --port 1"
SERVE = "--model_path {work}/model --timeout 20"  # a bound wait: the code before the change started servers
STOP = "--stop --pid_file {work}/"
INFER = "--model_path {work}/model --question q"
SCORE = "--verifier_path {work}/model --data_path {work}/pairs.json"
PREPARE = "--output {work}/old_eval_data.json"

CASES = [
    # (script, arguments, what the one line must name)
    ("evaluation/eval.py", EVAL_OUT + " --max_new_tokns 5", "--max_new_tokns (did you mean --max_new_tokens?)"),
    ("evaluation/eval.py", EVAL_OUT + " --max_new_tokens 0", "--max_new_tokens"),
    ("evaluation/eval.py", EVAL_OUT + " --batch_size 0", "--batch_size"),
    ("evaluation/eval.py", EVAL_OUT + " --temperature -1", "--temperature"),
    ("evaluation/eval.py", EVAL_OUT + " --top_p 0", "--top_p"),
    ("evaluation/eval.py", EVAL_OUT + " --max_items_per_source 0", "--max_items_per_source"),
    ("evaluation/eval.py", EVAL_OUT + " --paper_row GPT-5", "--paper_row"),
    ("evaluation/eval.py", EVAL_OUT + " --task a/b", "--task"),
    ("evaluation/eval.py", EVAL_OUT.replace("eval.json", "latin1.json"), "latin1.json: not UTF-8"),
    ("evaluation/eval.py", EVAL + " --output_dir {work}/a_file --port 1", "--output_dir"),
    ("evaluation/eval.py", EVAL + " --output_dir {work}/model --port 1", "--output_dir"),
    ("evaluation/eval.py", EVAL_OUT + " #corrupt-partial", ".partial.jsonl: line 1"),
    ("evaluation/eval.py", EVAL_OUT + " #corrupt-results", "a finished run's results, but unreadable"),
    # a JSON file we or the user wrote, broken: the file and the line
    (
        "evaluation/eval.py",
        EVAL_OUT + " #corrupt-results",
        ".json: not valid JSON (line 1, column 16: Unterminated string",
    ),
    (
        "evaluation/eval.py",
        EVAL_OUT.replace("eval.json", "broken.json"),
        "broken.json: not valid JSON (line 2, column 19:",
    ),
    ("evaluation/serve.py", STOP + "broken.pid", "broken.pid: not valid JSON (line 3, column 2: Expecting ','"),
    ("evaluation/report.py", "{work}/broken.json", "broken.json: not valid JSON (line 2, column 19:"),
    (
        "score_verifier.py",
        SCORE.replace("pairs.json", "broken.json"),
        "broken.json: not valid JSON (line 2, column 19:",
    ),
    (
        "evaluation/prepare_eval_data.py",
        f"--output {{out}}/e.json {SKIP_ALL.replace('--pubmedqa skip', '--pubmedqa {work}/medqa.json')}"
        " --pubmedqa_test_ids {work}/broken.json",
        "--pubmedqa_test_ids {work}/broken.json: not valid JSON (line 2, column 19:",
    ),
    # a model folder whose files do not match its manifest: the damaged file, before anything loads or starts
    (
        "inference.py",
        INFER.replace("/model", "/damaged_model"),
        "damaged_model/model.safetensors does not match its manifest (350 bytes, the manifest says 700)",
    ),
    (
        "evaluation/serve.py",
        SERVE.replace("/model", "/damaged_model") + " --pid_file {out}/s.pid",
        "damaged_model/model.safetensors does not match its manifest",
    ),
    (
        "score_verifier.py",
        SCORE.replace("/model", "/damaged_model"),
        "damaged_model/model.safetensors does not match its manifest",
    ),
    ("evaluation/serve.py", SERVE + " --port 0 --pid_file {out}/s.pid", "--port"),
    ("evaluation/serve.py", SERVE + " --port 70000 --pid_file {out}/s.pid", "--port"),
    ("evaluation/serve.py", SERVE + " --backend tgi --pid_file {out}/s.pid", "--backend"),
    ("evaluation/serve.py", "--model_path {work}/model --timeout 0 --pid_file {out}/s.pid", "--timeout"),
    ("evaluation/serve.py", "--model_path {work}/no_model --timeout 20 --pid_file {out}/s.pid", "--model_path"),
    ("evaluation/serve.py", SERVE + " --pid_file {work}/garbage.pid", "garbage.pid"),
    ("evaluation/serve.py", STOP + "garbage.pid", "garbage.pid"),
    ("evaluation/serve.py", STOP + "minus_one.pid", "minus_one.pid"),
    ("evaluation/serve.py", STOP + "binary.pid", "binary.pid"),
    ("evaluation/serve.py", STOP + "empty.pid", "empty.pid"),
    ("evaluation/serve.py", STOP + "init.pid", "init.pid"),
    ("evaluation/report.py", "{work}/nope.json", "nope.json: no such file"),
    ("evaluation/report.py", "{work}/model", "model: no such file"),
    ("evaluation/report.py", "{work}/latin1.json", "latin1.json: not UTF-8"),
    ("evaluation/report.py", "{work}/a_file", "a_file: not valid JSON"),
    ("evaluation/report.py", "{work}/results_dict.json", "results_dict.json: a results file"),
    ("evaluation/report.py", "{work}/results_lacking.json", "record 0 lacks 'output'"),
    ("evaluation/report.py", "{work}/results.json --paper_row GPT-5", "--paper_row"),
    ("evaluation/report.py", "{work}/results.json --paper_rows x", "--paper_rows"),
    ("inference.py", INFER + " --max_new_tokens 0", "--max_new_tokens"),
    ("inference.py", INFER + " --max_new_tokens -5", "--max_new_tokens"),
    ("inference.py", INFER + " --temperature -1", "--temperature"),
    ("inference.py", INFER + " --top_p 1.5", "--top_p"),
    ("score_verifier.py", SCORE + " --batch_size 0", "--batch_size"),
    ("score_verifier.py", SCORE + " --batch_size -1 --output_path {work}/pairs.json", "--batch_size"),
    ("score_verifier.py", SCORE + " --output_path {work}/pairs.json", "--output_path"),
    ("score_verifier.py", SCORE + " --output_path {work}/model", "--output_path"),
    ("score_verifier.py", SCORE + " --threshold 2", "--threshold"),
    ("score_verifier.py", SCORE + " --batch_sise 2", "--batch_sise (did you mean --batch_size?)"),
    ("evaluation/prepare_eval_data.py", f"{PREPARE} {SKIP_ALL}", "every benchmark is 'skip'"),
    ("evaluation/prepare_eval_data.py", f"{PREPARE} --medqa {{work}}/medqa.json {SKIP_BUT_MEDQA}", "holds 3 rows"),
    (
        "evaluation/prepare_eval_data.py",
        f"--output {{work}}/medqa.json --medqa {{work}}/medqa.json {SKIP_BUT_MEDQA}",
        "--output {work}/medqa.json would overwrite --medqa",
    ),
    (
        "evaluation/prepare_eval_data.py",
        f"--output {{out}}/e.json {SKIP_ALL.replace('--pubmedqa skip', '--pubmedqa {work}/medqa.json')}"
        " --pubmedqa_test_ids {work}/nope.json",
        "--pubmedqa_test_ids",
    ),
]


@pytest.mark.parametrize("script, argv, culprit", CASES, ids=[f"{c[0].split('/')[-1]} {c[1]}" for c in CASES])
def test_bad_input_gets_one_line_a_non_zero_exit_and_changes_no_file(tmp_path, script, argv, culprit):
    work, out = case_files(tmp_path)
    argv = argv.format(work=work, out=out).split()
    culprit = culprit.format(work=work)
    if argv[-1].startswith("#corrupt-"):
        # A results file of this very run (same flags, so same name), damaged: named, kept, nothing asked.
        kind, argv = argv[-1], argv[:-1]
        stem = os.path.join(out, eval_stem(argv))
        if kind == "#corrupt-partial":
            with open(stem + ".partial.jsonl", "w") as f:
                f.write('{"settin\n{"id": "S/0", "output": "x"}\n')
        else:
            with open(stem + ".json", "w") as f:
                f.write('[{"id": "S/0", "outp')
    before = fingerprint(tmp_path)
    result = run_script(script, argv)
    one_line_error(result, culprit)
    assert fingerprint(tmp_path) == before


# ---------------------------------------------------------------------------------------------------------
# Processes: serving on a held port, readiness, and stopping only what is proven ours.


def test_serve_fails_at_once_on_a_port_another_server_holds(tiny_server, tmp_path):
    base_url, _, other = tiny_server()
    port = base_url.rsplit(":", 1)[1].split("/")[0]
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    pid_file = tmp_path / "server.pid"
    started = time.monotonic()
    result = run_script(
        "evaluation/serve.py",
        [
            "--model_path",
            model,
            "--port",
            port,
            "--backend",
            "transformers",
            "--pid_file",
            pid_file,
            "--timeout",
            "60",
        ],
        subprocess_run=True,
        timeout=120,
    )
    one_line_error(result, f"port {port}")
    assert f"PID {other.pid}" in result.stderr  # the holder is named
    assert "ready" not in result.stdout and time.monotonic() - started < 30
    assert not pid_file.exists() and other.poll() is None


def test_a_server_is_ready_only_when_the_process_we_started_answers(tiny_server, tmp_path):
    base_url, _, other = tiny_server()
    port = int(base_url.rsplit(":", 1)[1].split("/")[0])
    script = tmp_path / "tiny_server.py"
    pid_file = tmp_path / "ours.pid"
    # Ours cannot bind (the other holds the port) and dies; the other keeps answering /health.
    with pytest.raises(RuntimeError, match=f"port {port} is held by another process \\(PID {other.pid}\\)"):
        process = start_server(
            [sys.executable, str(script), str(port), "reply", str(tmp_path / "log")],
            f"http://127.0.0.1:{port}/health",
            pid_file=str(pid_file),
            timeout_s=30,
        )
        stop_pid(process.pid)  # reached only when start_server wrongly called it ready: leave nothing running
    assert not pid_file.exists() and other.poll() is None


def test_the_pid_file_holds_the_proof_and_the_stop_script_stops_that_server(tmp_path):
    script = tmp_path / "tiny_server.py"
    script.write_text(TINY_SERVER)
    port, pid_file = free_port(), tmp_path / "server.pid"
    command = [sys.executable, str(script), str(port), "reply", str(tmp_path / "log")]
    process = start_server(command, f"http://127.0.0.1:{port}/health", pid_file=str(pid_file), timeout_s=30)
    try:
        record = json.loads(pid_file.read_text())
        assert record == {"pid": process.pid, "start_time": process_start_time(process.pid), "command": command}
        result = subprocess.run(
            ["bash", "evaluation/kill_sglang_server.sh", str(pid_file)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHON": sys.executable},
            timeout=60,
        )
        assert result.returncode == 0 and f"stopped server PID {process.pid}" in result.stdout, result.stderr
        assert process.wait(timeout=10) is not None and not pid_file.exists()
    finally:
        stop_pid(process.pid)


def test_a_start_killed_while_it_waits_leaves_no_server_behind(tmp_path):
    """evaluation/serve.py (or the demo) killed by SIGTERM while its server loads: the server, in its own session,
    used to live on, holding its port and memory (found after a timed-out demo test)."""
    started = tmp_path / "server_pid"
    server = f"import os, time; open({str(started)!r}, 'w').write(str(os.getpid())); time.sleep(300)"
    caller = textwrap.dedent(f"""
        import sys
        from huatuo_o1.serving import free_port, start_server
        start_server([sys.executable, "-c", {server!r}], f"http://127.0.0.1:{{free_port()}}/health",
                     pid_file={str(tmp_path / "server.pid")!r}, timeout_s=120)
    """)
    process = subprocess.Popen([sys.executable, "-c", caller], cwd=REPO_ROOT)
    deadline = time.time() + 60
    while not (started.exists() and started.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    server_pid = int(started.read_text())
    try:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 143  # SystemExit(128 + SIGTERM), after stopping the server
        assert not os.path.exists(f"/proc/{server_pid}") and not (tmp_path / "server.pid").exists()
    finally:
        if os.path.exists(f"/proc/{server_pid}"):
            os.kill(server_pid, signal.SIGKILL)  # the server this test started, left running by a failing start


FORGED = {
    "pid only (the old format)": lambda p: f"{p.pid}\n",
    "pid and start time (the old format)": lambda p: f"{p.pid} {process_start_time(p.pid)}\n",
    "no command line": lambda p: json.dumps({"pid": p.pid, "start_time": process_start_time(p.pid)}),
    "another command line": lambda p: json.dumps(
        {"pid": p.pid, "start_time": process_start_time(p.pid), "command": ["python", "-m", "sglang.launch_server"]}
    ),
    "another start time": lambda p: json.dumps(
        {"pid": p.pid, "start_time": str(int(process_start_time(p.pid)) - 1), "command": ["sleep", "300"]}
    ),
}


@pytest.mark.parametrize("forgery", list(FORGED))
def test_a_forged_pid_file_never_stops_an_unrelated_process(tmp_path, bystander, forgery):
    pid_file = tmp_path / "server.pid"
    pid_file.write_text(FORGED[forgery](bystander))
    result = subprocess.run(
        ["bash", "evaluation/kill_sglang_server.sh", str(pid_file)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=60,
    )
    time.sleep(0.3)
    assert bystander.poll() is None, f"{forgery}: the unrelated process was signalled"
    assert f"stopped server PID {bystander.pid}" not in result.stdout
    if forgery == "another start time":  # provably another process: the stale file goes, nothing signalled
        assert result.returncode == 0 and "had already exited (nothing signalled)" in result.stdout
        assert not pid_file.exists()
    else:  # no proof: refused, the file kept for the user to check
        one_line_error(result, str(pid_file))
        assert pid_file.exists()


# ---------------------------------------------------------------------------------------------------------
# The API key, and result-file keys.


def run_eval(tmp_path, base_url, model, *flags, env=None):
    eval_file = tmp_path / "eval.json"
    if not eval_file.exists():
        eval_file.write_text(json.dumps({"S": [ITEM, ITEM]}))
    argv = ["--model_name", model, "--eval_file", eval_file, "--base_url", base_url, "--use_chat_template", "False"]
    argv += ["--output_dir", tmp_path / "out", "--max_retries", "0", *flags]
    env = {"OPENAI_API_KEY": OPENAI_SECRET, "EVAL_API_KEY": None, **(env or {})}
    return run_script("evaluation/eval.py", argv, env=env)


def everything_written(tmp_path, result):
    """Every message and every file of the run, as one text."""
    texts = [result.stdout, result.stderr]
    for root, _, names in os.walk(tmp_path / "out"):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                texts.append(f.read().decode(errors="replace"))
    return "\n".join(texts)


def test_eval_sends_no_key_it_was_not_given_and_never_shows_an_echoed_key(tiny_server, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    # OPENAI_API_KEY is set (the data stages' teacher key) and no key is given: it must not go out.
    base_url, log, _ = tiny_server("reply")
    result = run_eval(tmp_path, base_url, str(model))
    assert result.returncode == 0, result.stderr
    headers = {json.loads(line)["authorization"] for line in log.read_text().splitlines()}
    assert headers == {"Bearer EMPTY"}
    assert OPENAI_SECRET not in everything_written(tmp_path, result)

    # A key given (its own variable, or the flag) goes to the server, and never shows, though it is echoed
    # in replies and in error bodies.
    given = (("reply", "11", {"EVAL_API_KEY": EVAL_SECRET}, []), ("error", "12", None, ["--api_key", EVAL_SECRET]))
    for mode, seed, env, flags in given:  # other seeds: a run of its own, not the first one's results
        base_url, log, _ = tiny_server(mode)
        result = run_eval(tmp_path, base_url, str(model), "--seed", seed, *flags, env=env)
        headers = {json.loads(line)["authorization"] for line in log.read_text().splitlines()}
        assert headers == {f"Bearer {EVAL_SECRET}"}
        written = everything_written(tmp_path, result)
        assert EVAL_SECRET not in written and OPENAI_SECRET not in written
        assert "Bearer [redacted]" in written  # the echo was there, and was redacted
        if mode == "error":
            one_line = [line for line in result.stderr.splitlines() if "requests failed" in line]
            assert result.returncode == 1 and len(one_line) == 1


def test_two_models_sharing_a_folder_name_or_two_settings_never_share_a_results_file(tiny_server, tmp_path):
    base_url, log, _ = tiny_server("reply")
    sft, rl = tmp_path / "sft" / "checkpoint-6", tmp_path / "rl" / "checkpoint-6"
    for folder in (sft, rl):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"name": folder.parent.name}))
    runs = [(sft, ["--seed", "1"]), (rl, ["--seed", "1"]), (sft, ["--seed", "2"])]
    for model, flags in runs:
        result = run_eval(tmp_path, base_url, str(model), *flags)
        assert result.returncode == 0, result.stderr
    results = sorted(
        name for name in os.listdir(tmp_path / "out") if not name.endswith(("_report.json", ".md", ".png"))
    )
    assert len(results) == 3 and all(name.startswith("checkpoint-6_api_eval_") for name in results)
    replies = {}
    for name in results:
        (raw,) = {r["raw_output"] for r in json.loads((tmp_path / "out" / name).read_text())}
        replies[raw.split("| ", 1)[1]] = name
    assert sorted(replies) == sorted([f"{sft} | seed 1)", f"{rl} | seed 1)", f"{sft} | seed 2)"])

    # The same flags again: its own results file is found, nothing is asked again.
    asked = len(log.read_text().splitlines())
    result = run_eval(tmp_path, base_url, str(rl), "--seed", "1")
    assert result.returncode == 0 and "2 items, 2 already answered" in result.stdout
    assert len(log.read_text().splitlines()) == asked


def test_ctrl_c_stops_eval_at_once_keeps_every_answer_and_the_rerun_asks_only_the_rest(tiny_server, tmp_path):
    base_url, log, _ = tiny_server("slow")
    model = tmp_path / "model"
    model.mkdir()
    items = [dict(ITEM, question=f"{ITEM['question']} ({number})") for number in range(20)]
    (tmp_path / "eval.json").write_text(json.dumps({"S": items}))
    argv = ["--model_name", model, "--eval_file", tmp_path / "eval.json", "--base_url", base_url]
    argv += ["--use_chat_template", "False", "--output_dir", tmp_path / "out", "--max_retries", "0"]
    argv += ["--batch_size", "2"]
    partial = tmp_path / "out" / f"{eval_stem(argv)}.partial.jsonl"
    process = subprocess.Popen(
        [sys.executable, "evaluation/eval.py", *map(str, argv)],
        cwd=REPO_ROOT,
        env={**os.environ, "EVAL_API_KEY": ""},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, so the signal reaches only it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as from a terminal (see test_cli_errors)
    )
    deadline = time.monotonic() + 120
    while not (partial.exists() and len(partial.read_text().splitlines()) >= 3):  # the settings line, 2 answers
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.02)

    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    interrupted, asked_at_interrupt = time.monotonic(), len(log.read_text().splitlines())
    _, stderr = process.communicate(timeout=60)  # (a run that went on would ask the other items: counted below)
    seconds = time.monotonic() - interrupted
    assert process.returncode == 130, (process.returncode, seconds, stderr[-2000:])
    kept = len(partial.read_text().splitlines()) - 1
    messages = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    messages = [line for line in messages if not line.startswith("questions")]  # the rest is the progress bar
    assert messages == [f"interrupted: {kept} answers kept in {partial}; rerun to continue"], stderr[-2000:]
    assert 2 <= kept < 20
    time.sleep(1.0)  # requests on their way when the signal came have arrived: 2 threads, so at most 2
    asked = len(log.read_text().splitlines())
    assert asked <= asked_at_interrupt + 2, (asked_at_interrupt, asked)

    result = run_eval(tmp_path, base_url, str(model), "--batch_size", "20")  # (not a setting: the same results file)
    assert result.returncode == 0, result.stderr
    assert f"20 items, {kept} already answered (resumed), {20 - kept} to ask" in result.stdout
    assert len(log.read_text().splitlines()) == asked + 20 - kept  # only the missing ones asked
    assert not partial.exists()


# ---------------------------------------------------------------------------------------------------------
# Hangs and overwrites.


def test_inference_with_max_new_tokens_zero_exits_at_once(tiny_models):
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "inference.py", "--model_path", tiny_models["tiny-llama"], "--max_new_tokens", "0"]
        + ["--question", "Why?"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        stdout, stderr = process.communicate(timeout=45)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.communicate()
        pytest.fail("inference.py --max_new_tokens 0 hung")
    one_line_error(subprocess.CompletedProcess([], process.returncode, stdout, stderr), "--max_new_tokens")
    assert time.monotonic() - started < 45


def test_a_generation_error_ends_the_stream_instead_of_hanging(tiny_models):
    import torch

    from huatuo_o1.chat import answer, load

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tokenizer, model = load(tiny_models["tiny-llama"])
        outcome = []
        caller = threading.Thread(
            target=lambda: outcome.append(_raised(lambda: answer(tokenizer, model, "Why?", max_new_tokens=0))),
            daemon=True,
        )
        caller.start()
        caller.join(timeout=30)
    finally:
        torch.set_num_threads(threads)
    assert not caller.is_alive(), "answer() hung on an error inside generate"
    assert outcome and isinstance(outcome[0], ValueError)


def _raised(call):
    try:
        call()
    except Exception as error:
        return error
    return None


def test_score_verifier_never_writes_over_its_input(tiny_models, tmp_path):
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([{"response": "C", "reference_answer": "C"}] * 3))
    before = pairs.read_bytes()
    for flags in (["--batch_size", "-1"], ["--batch_size", "4"]):
        argv = ["--verifier_path", tiny_models["tiny-verifier"], "--data_path", pairs, "--output_path", pairs, *flags]
        result = run_script("score_verifier.py", argv)
        one_line_error(result, flags[0] if flags[1] == "-1" else "--output_path")
        assert pairs.read_bytes() == before


def test_prepare_eval_data_keeps_the_old_file_when_every_source_is_skipped(tmp_path):
    old = tmp_path / "eval_data.json"
    old.write_text(json.dumps({"S": [ITEM]}))
    result = run_script("evaluation/prepare_eval_data.py", ["--output", old, *SKIP_ALL.split()])
    one_line_error(result, f"{old} is kept")
    assert json.loads(old.read_text()) == {"S": [ITEM]}
