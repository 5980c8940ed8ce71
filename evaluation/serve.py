"""Start an OpenAI-compatible server for a model, record its PID, wait until it answers; or stop it.

Backends: SGLang with the paper's settings (--mem_fraction_static 0.8 --dp 1 --tp 1), vLLM, or,
where neither is installed or there is no GPU, `transformers serve` (CPU, needs fastapi and
uvicorn). `--backend auto` picks in that order. The PID (and the process start time, so a
recycled PID is never signalled) goes to --pid_file; `--stop` / evaluation/kill_sglang_server.sh
stop exactly that process group and nothing else.

Usage:
    python evaluation/serve.py --model_path FreedomIntelligence/HuatuoGPT-o1-8B --port 30000
    python evaluation/eval.py --model_name FreedomIntelligence/HuatuoGPT-o1-8B --eval_file ... --port 30000
    bash evaluation/kill_sglang_server.sh          # = python evaluation/serve.py --stop

Flags this script does not know are passed on to the server command unchanged.
"""

import importlib.util
import os
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from huatuo_o1 import cli
from huatuo_o1.serving import process_start_time, read_pid_file, start_server, stop_from_pid_file

DEFAULT_PID_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "server.pid")


@dataclass
class ServeArguments:
    model_path: str | None = field(default=None, metadata={"help": "Model folder or hub id to serve."})
    port: int = field(default=30000)
    host: str = field(default="127.0.0.1")
    backend: str = field(default="auto", metadata={"help": "auto, sglang, vllm or transformers."})
    mem_fraction_static: float = field(
        default=0.8, metadata={"help": "GPU memory share (SGLang; vLLM's --gpu-memory-utilization)."}
    )
    dp: int = field(default=1, metadata={"help": "Data-parallel replicas (SGLang, vLLM)."})
    tp: int = field(default=1, metadata={"help": "Tensor-parallel GPUs (SGLang, vLLM)."})
    seed: int = field(default=42, metadata={"help": "Server's default random seed."})
    continuous_batching: bool = field(
        default=False, metadata={"help": "transformers serve: paged-attention continuous batching."}
    )
    pid_file: str = field(default=DEFAULT_PID_FILE)
    log_file: str | None = field(default=None, metadata={"help": "Server output (default: the PID file with .log)."})
    timeout: float = field(
        default=1800.0, metadata={"help": "Seconds to wait for the health endpoint (model download and load)."}
    )
    stop: bool = field(
        default=False, metadata={"help": "Stop the server recorded in --pid_file instead of starting one."}
    )


def _has_gpu():
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def choose_backend(requested):
    if requested != "auto":
        return requested
    for backend in ("sglang", "vllm"):
        if importlib.util.find_spec(backend) is not None and _has_gpu():
            return backend
    return "transformers"


def server_command(args, backend, extra):
    host, port = args.host, str(args.port)
    if backend == "sglang":
        return [
            sys.executable,
            "-m",
            "sglang.launch_server",
            "--model-path",
            args.model_path,
            "--host",
            host,
            "--port",
            port,
            "--mem-fraction-static",
            str(args.mem_fraction_static),
            "--dp",
            str(args.dp),
            "--tp",
            str(args.tp),
            "--random-seed",
            str(args.seed),
            *extra,
        ]
    if backend == "vllm":
        return [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            args.model_path,
            "--host",
            host,
            "--port",
            port,
            "--gpu-memory-utilization",
            str(args.mem_fraction_static),
            "--data-parallel-size",
            str(args.dp),
            "--tensor-parallel-size",
            str(args.tp),
            "--seed",
            str(args.seed),
            *extra,
        ]
    if backend == "transformers":
        missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
        if missing:
            sys.exit(f"error: `transformers serve` needs {' and '.join(missing)}: pip install 'transformers[serving]'")
        # The model given here is pinned: requests must name it exactly so (eval.py sends --model_name).
        command = [
            sys.executable,
            "-m",
            "transformers.cli.transformers",
            "serve",
            args.model_path,
            "--host",
            host,
            "--port",
            port,
            "--default-seed",
            str(args.seed),
        ]
        if args.continuous_batching:
            command.append("--continuous-batching")
        return command + list(extra)
    sys.exit(f"error: unknown --backend {backend!r}: use auto, sglang, vllm or transformers")


def main():
    parser = HfArgumentParser(ServeArguments)
    args, extra = parser.parse_args_into_dataclasses(return_remaining_strings=True)

    if args.stop:
        if not os.path.exists(args.pid_file):
            print(
                f"No server recorded in {args.pid_file}: nothing stopped. (A server started by hand is "
                "stopped with `kill PID`; start it with evaluation/serve.py to have it recorded.)"
            )
            return
        pid, _ = read_pid_file(args.pid_file)
        stopped = stop_from_pid_file(args.pid_file)
        print(
            f"stopped server PID {pid}" if stopped else f"server PID {pid} had already exited; removed {args.pid_file}"
        )
        return

    if not args.model_path:
        sys.exit("error: --model_path is required to start a server")
    if os.path.exists(args.pid_file):
        pid, started = read_pid_file(args.pid_file)
        current = process_start_time(pid)
        if current is not None and started in (None, current):
            sys.exit(
                f"error: {args.pid_file} records a running server (PID {pid}); stop it first "
                "(bash evaluation/kill_sglang_server.sh) or pass another --pid_file"
            )
    backend = choose_backend(args.backend)
    command = server_command(args, backend, extra)
    log_file = args.log_file or os.path.splitext(args.pid_file)[0] + ".log"
    env = {**os.environ, "HF_HUB_DISABLE_UPDATE_CHECK": "1"}
    print(f"starting {backend}: {' '.join(command)}\n(log: {log_file})", flush=True)
    try:
        process = start_server(
            command,
            f"http://{args.host}:{args.port}/health",
            log_path=log_file,
            pid_file=args.pid_file,
            timeout_s=args.timeout,
            env=env,
        )
    except (RuntimeError, TimeoutError) as e:
        if os.path.exists(args.pid_file):
            os.remove(args.pid_file)
        with open(log_file, errors="replace") as f:
            tail = "".join(f.readlines()[-15:])
        sys.exit(f"error: the {backend} server did not come up: {e}\nlast lines of {log_file}:\n{tail}")
    print(
        f"{backend} server PID {process.pid} ready on http://{args.host}:{args.port}/v1 (recorded in {args.pid_file})"
    )


if __name__ == "__main__":
    cli.run(main)
