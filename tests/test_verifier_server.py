"""serve_verifier.py and RL_stage2.py --reward_url: the served reward equals the in-process one bit for bit (pairs,
whole PPO and GRPO runs), requests go through the model in batches, the PID lifecycle of evaluation/serve.py, and a
server that dies or stalls: retried with backoff, then the run stops in one line naming the URL."""

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading
import time

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from huatuo_o1.records import InputError
from huatuo_o1.rl.loading import Problem
from huatuo_o1.rl.reward import RLReward
from huatuo_o1.serving import free_port, process_start_time, stop_pid, stop_recorded_server
from huatuo_o1.verifier import PAPER_REWARD, RewardValues, VerifierReward
from huatuo_o1.verifier_service import ServedVerifier, create_app
from tests.rl_helpers import rl_flags, write_problems
from tests.scripts import REPO_ROOT, run_script

GOOD = "## Thinking\n\nBarking cough and stridor.\n\n## Final Response\n\n{}"
RESPONSES = [GOOD.format(answer) for answer in ("Croup", "Epiglottitis", "Viral croup.", "Bronchiolitis in infants")]
RESPONSES += ["Croup", "## Thinking\n\nx\n\n## Final Response\nCroup", GOOD.format("A much longer answer " * 8)]
REFERENCES = ["Croup"] * 4 + ["Croup", "Croup", "Croup (laryngotracheobronchitis)"]


def start_verifier_server(tiny_models, folder, batch_size=3):
    """serve_verifier.py as a user starts it (in the background, recorded); returns (url, pid file)."""
    port, pid_file = free_port(), str(folder / "verifier.pid")
    command = [sys.executable, "serve_verifier.py", "--model_path", tiny_models["tiny-verifier"], "--port", str(port),
               "--pid_file", pid_file, "--batch_size", str(batch_size), "--timeout", "120"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "ready on" in done.stdout, done.stderr
    return f"http://127.0.0.1:{port}", pid_file


def stop_server(pid_file):
    if os.path.exists(pid_file):
        stop_recorded_server(pid_file, "serve_verifier.py")


@pytest.fixture(scope="module")
def served(tiny_models, tmp_path_factory):
    """One verifier server for the module (the tiny verifier, batches of 3): its URL."""
    url, pid_file = start_verifier_server(tiny_models, tmp_path_factory.mktemp("served"))
    yield url
    stop_server(pid_file)


@pytest.fixture(scope="module")
def in_process(tiny_models):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_models["tiny-verifier"]).eval()
    return model, AutoTokenizer.from_pretrained(tiny_models["tiny-verifier"])


def assert_same_output(served_output, local_output):
    for name in ("rewards", "well_formed", "p_correct"):
        a, b = getattr(served_output, name), getattr(local_output, name)
        assert a.dtype == b.dtype and torch.equal(a.nan_to_num(-7.0), b.nan_to_num(-7.0)), (name, a, b)


OTHER_VALUES = RewardValues(correct=2.0, incorrect=-0.5, malformed=-1, threshold=0.45)  # tiny verifier: p 0.44-0.47


@pytest.mark.server
@pytest.mark.parametrize("values", [PAPER_REWARD, OTHER_VALUES])
def test_served_rewards_equal_the_in_process_ones_bit_for_bit(served, in_process, values):
    model, tokenizer = in_process
    local = VerifierReward(model, tokenizer, batch_size=3, threshold=values.threshold, correct_reward=values.correct,
                           incorrect_reward=values.incorrect, malformed_reward=values.malformed)  # fmt: skip
    local_output = local(RESPONSES, REFERENCES)
    assert_same_output(ServedVerifier(served, values)(RESPONSES, REFERENCES), local_output)
    rewards = set(local_output.rewards.tolist())  # the rule at work: right and malformed, and with 0.45 wrong too
    assert rewards == ({1.0, 0.0} if values == PAPER_REWARD else {2.0, -0.5, -1.0})
    # and through the RL reward, in the paper's mode and in hybrid (closed-set rows by the rule, the rest asked)
    closed = Problem("q", "B. Croup", options={"A": "Asthma", "B": "Croup"}, answer_idx="B")
    problems = [Problem("q", reference) for reference in REFERENCES[:-1]] + [closed]
    for mode in ("verifier", "hybrid"):
        served_reward = RLReward(mode, values, ServedVerifier(served, values))
        local_reward = RLReward(mode, values, local)
        served_output, local_output = served_reward(RESPONSES, problems), local_reward(RESPONSES, problems)
        assert_same_output(served_output, local_output)
        assert served_output.sources == local_output.sources


def test_a_request_goes_through_the_model_in_batches_and_bad_requests_are_refused(in_process):
    from fastapi.testclient import TestClient

    model, tokenizer = in_process
    batch_sizes = []
    hook = model.register_forward_hook(
        lambda module, args, kwargs, output: batch_sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        client = TestClient(create_app(VerifierReward(model, tokenizer, batch_size=3), "tiny-verifier"))
        assert client.get("/health").json() == {"status": "ok", "model": "tiny-verifier", "dtype": "float32",
                                                "batch_size": 3}  # fmt: skip
        answer = client.post("/score", json={"responses": RESPONSES, "references": REFERENCES}).json()
        assert batch_sizes == [3, 3, 1] and len(answer["rewards"]) == 7 and answer["dtype"] == "float32"
        refused = client.post("/score", json={"responses": RESPONSES, "references": REFERENCES[:2]})
        assert refused.status_code == 422 and "7 responses but 2 references" in refused.text
        assert batch_sizes == [3, 3, 1]  # nothing scored for a refused request
    finally:
        hook.remove()


def train(argv):
    """RL_stage2.py in this process; (its log without the timings, a digest of the saved policy's weights)."""
    result = run_script("RL_stage2.py", argv)
    assert result.returncode == 0, result.stderr
    out = argv[argv.index("--output_dir") + 1]
    if os.path.exists(os.path.join(out, "rl_log.jsonl")):
        log = [json.loads(line) for line in open(os.path.join(out, "rl_log.jsonl"))]
    else:
        log = json.load(open(os.path.join(out, "rl_trl_log.json")))
    timings = ("episodes_per_second", "step_time")
    timeless = [{k: v for k, v in r.items() if not k.startswith("time/") and k not in timings} for r in log]
    with open(os.path.join(out, "model.safetensors"), "rb") as f:
        return timeless, hashlib.sha256(f.read()).hexdigest()


@pytest.mark.server
@pytest.mark.usefixtures("one_thread_fresh_accelerate")
@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_rl_with_reward_url_trains_exactly_as_with_the_verifier_in_process(
    served, tiny_models, taught_policy, tmp_path, algorithm
):
    sizes = dict(total_episodes=12, response_length=24) if algorithm == "ppo" else dict(
        total_episodes=12, gradient_accumulation_steps=3, response_length=24, value_model_path=None)  # fmt: skip
    argv = rl_flags(tiny_models, write_problems(tmp_path / "p.json"), str(tmp_path / "local"), rl_algorithm=algorithm,
                    num_ppo_epochs=1, save_strategy="no", eval_strategy="no", model_name_or_path=taught_policy,
                    **sizes)  # fmt: skip
    local_log, local_weights = train(argv)
    argv = rl_flags(tiny_models, write_problems(tmp_path / "p.json"), str(tmp_path / "served"), rl_algorithm=algorithm,
                    num_ppo_epochs=1, save_strategy="no", eval_strategy="no", model_name_or_path=taught_policy,
                    reward_model_path=None, reward_url=served, **sizes)  # fmt: skip
    served_log, served_weights = train(argv)
    assert served_log == local_log and served_weights == local_weights
    rewards = [r["objective/score"] if algorithm == "ppo" else r["rewards/verifier/mean"] for r in local_log]
    assert any(reward > 0 for reward in rewards)  # the verifier was asked about well-formed answers


@pytest.mark.server
@pytest.mark.usefixtures("one_thread_fresh_accelerate")
def test_a_server_killed_mid_run_stops_rl_in_one_line_naming_the_url(tiny_models, tmp_path, monkeypatch):
    url, pid_file = start_verifier_server(tiny_models, tmp_path)
    try:
        real_call = ServedVerifier.__call__

        def answer_then_die(self, responses, references):
            output = real_call(self, responses, references)
            stop_server(pid_file)  # the first reward call (the held-out evaluation) is answered, then the server dies
            return output

        monkeypatch.setattr(ServedVerifier, "__call__", answer_then_die)
        out = tmp_path / "out"
        argv = rl_flags(tiny_models, write_problems(tmp_path / "p.json"), str(out), total_episodes=8,
                        num_ppo_epochs=1, save_strategy="no", reward_model_path=None, reward_url=url,
                        reward_retries=1)  # fmt: skip
        result = run_script("RL_stage2.py", argv)
    finally:
        stop_server(pid_file)
    # the message ends the output, in one line (after the text of the progress bar it interrupted)
    message = "error: " + result.stderr.rstrip().split("error: ")[-1]
    assert result.returncode == 1 and result.stderr.count("error:") == 1 and "Traceback" not in result.stderr
    assert message.startswith(f"error: --reward_url {url}: no answer to /score after 2 tries (connection refused)")
    assert "\n" not in message and "\r" not in message
    assert not (out / "rl_summary.json").exists() and not (out / "model.safetensors").exists()


def test_a_dead_url_stops_rl_before_anything_loads(tiny_models, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    argv = rl_flags(tiny_models, write_problems(tmp_path / "p.json"), str(tmp_path / "out"), reward_model_path=None,
                    reward_url=url, reward_retries=0)  # fmt: skip
    result = run_script("RL_stage2.py", argv)
    assert result.returncode == 1 and result.stderr.strip() == (
        f"error: --reward_url {url}: no answer to /health after 1 tries (connection refused); is serve_verifier.py "
        "running there? The run stops rather than train on rewards nobody computed"
    )
    assert not (tmp_path / "out").exists()


@contextlib.contextmanager
def serving_in_a_thread(app):
    """`app` on a free port, served by uvicorn on a thread of this process; its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=1))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def stalling_app(stalled_requests):
    """A /score that never answers its first `stalled_requests` requests (it waits until shut down), then answers."""
    from fastapi import FastAPI

    app = FastAPI()
    app.state.requests = 0

    @app.post("/score")
    async def score(request: dict):
        app.state.requests += 1
        if app.state.requests <= stalled_requests:
            await asyncio.sleep(600)
        count = len(request["responses"])
        return {"rewards": [1.0] * count, "well_formed": [True] * count, "p_correct": [0.75] * count,
                "dtype": "float32"}  # fmt: skip

    return app


def test_a_slow_server_hits_the_timeout_and_is_retried():
    app = stalling_app(stalled_requests=1)
    with serving_in_a_thread(app) as url:
        output = ServedVerifier(url, timeout=2, retries=2)(["a", "b"], ["x", "y"])
    assert app.state.requests == 2  # the first try timed out, the retry was answered
    assert output.rewards.tolist() == [1.0, 1.0] and output.p_correct.tolist() == [0.75, 0.75]


def test_a_server_that_never_answers_stops_after_its_retries_naming_the_url():
    app = stalling_app(stalled_requests=10)
    with serving_in_a_thread(app) as url, pytest.raises(InputError) as error:
        ServedVerifier(url, timeout=0.5, retries=2)(["a"], ["x"])
    assert app.state.requests == 3
    assert str(error.value).startswith(
        f"--reward_url {url}: no answer to /score after 3 tries (no answer within --reward_timeout 0.5 s)"
    )


@pytest.mark.server
def test_serve_verifier_records_exactly_its_process_and_stops_only_that(tiny_models, tmp_path):
    url, pid_file = start_verifier_server(tiny_models, tmp_path)
    try:
        record = json.load(open(pid_file))
        assert record["start_time"] == process_start_time(record["pid"])
        port = url.rsplit(":", 1)[1]
        assert record["command"][1:] == [os.path.join(REPO_ROOT, "serve_verifier.py"), "--model_path",
                                         tiny_models["tiny-verifier"], "--port", port, "--pid_file", pid_file,
                                         "--batch_size", "3", "--timeout", "120", "--foreground", "True"]  # fmt: skip
        assert ServedVerifier(url).health()["batch_size"] == 3
        # a second start: refused over the running server's record, and on the port it holds
        again = [sys.executable, "serve_verifier.py", "--model_path", tiny_models["tiny-verifier"], "--port",
                 url.rsplit(":", 1)[1]]  # fmt: skip
        for extra, says in ((["--pid_file", pid_file], "records a running server"),
                            (["--pid_file", str(tmp_path / "other.pid")], "is already in use by PID")):  # fmt: skip
            done = subprocess.run(again + extra, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
            assert done.returncode == 1 and says in done.stderr and len(done.stderr.strip().splitlines()) == 1
        stop = [sys.executable, "serve_verifier.py", "--stop", "--pid_file", pid_file]
        done = subprocess.run(stop, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert done.stdout.strip() == f"stopped server PID {record['pid']}" and not os.path.exists(pid_file)
        with pytest.raises(InputError, match="connection refused"):
            ServedVerifier(url, retries=0).health()  # nothing answers there any more
        done = subprocess.run(stop, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert "nothing stopped" in done.stdout
    finally:
        if os.path.exists(pid_file):
            stop_pid(json.load(open(pid_file))["pid"])
