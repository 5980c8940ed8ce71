"""Serve the 2-label medical verifier over HTTP, as the RL reward: RL_stage2.py --reward_url asks it.

The verifier then runs once, in its own process (on its own GPU, or another machine), instead of once in every
training process. It scores a request's (response, reference) pairs exactly as RL_stage2.py does in process: the same
input template, layout gate, threshold and 1.0 / 0.1 / 0.0 rule (a request may carry other values: RL_stage2.py sends
its --correct_reward, --incorrect_reward, --malformed_reward and --verifier_threshold), in batches of --batch_size
(give RL_stage2.py's --local_rollout_forward_batch_size for bitwise the same probabilities as in process). Endpoints
and wire format: huatuo_o1/verifier_service.py (GET /health, POST /score).

As evaluation/serve.py does for the evaluated model: the server starts only on a port nobody holds, is ready only when
the process started answers /health, and runs on in the background with its PID, start time and command line in
--pid_file; --stop stops exactly that process. --foreground True serves in this process instead (a job scheduler's
or container's way; Ctrl-C stops it).

Usage:
    python serve_verifier.py --model_path FreedomIntelligence/medical_o1_verifier_3B --port 8001 --batch_size 8
    accelerate launch ... RL_stage2.py ... --reward_url http://127.0.0.1:8001     # instead of --reward_model_path
    python serve_verifier.py --stop
    curl -s localhost:8001/score -H 'Content-Type: application/json' \\
        -d '{"responses": ["## Thinking\\n\\n...\\n\\n## Final Response\\n\\nCroup"], "references": ["Croup"]}'
"""

import os
import sys
from dataclasses import dataclass, field

import torch

from huatuo_o1 import cli
from huatuo_o1.models import attn_implementation, check_verifier_config
from huatuo_o1.records import InputError
from huatuo_o1.serving import check_port_free, refuse_recorded_server, start_recorded_server, stop_recorded_server
from huatuo_o1.verifier import VerifierReward, load_template, load_verifier
from huatuo_o1.verifier_service import DTYPES, create_app

DEFAULT_PID_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "verifier_server.pid")


@dataclass
class ServeVerifierArguments:
    model_path: str = field(default=None, metadata={"help": "The 2-label verifier: a folder or hub id."})
    port: int = field(default=8001)
    host: str = field(default="127.0.0.1", metadata={"help": "0.0.0.0 to answer other machines too."})
    batch_size: int = field(
        default=8, metadata={"help": "Pairs per forward pass (RL_stage2.py's --local_rollout_forward_batch_size)."}
    )
    dtype: str = field(
        default="auto",
        metadata={
            "choices": ["auto", *DTYPES],
            "help": "The verifier's dtype (the softmax and the rewards keep it): auto is bfloat16 on a GPU, as "
            "RL_stage2.py --bf16 True loads it, else float32.",
        },
    )
    verifier_template: str = field(
        default=None, metadata={"help": "Verifier input template (default huatuo_o1/templates/verifier_input.txt)."}
    )
    trust_remote_code: bool = field(default=False)
    pid_file: str = field(default=DEFAULT_PID_FILE)
    log_file: str = field(default=None, metadata={"help": "Server output (default: the PID file with .log)."})
    timeout: float = field(default=1800.0, metadata={"help": "Seconds to wait for /health (download and load)."})
    stop: bool = field(default=False, metadata={"help": "Stop the server recorded in --pid_file."})
    foreground: bool = field(
        default=False, metadata={"help": "Serve in this process (no PID file; Ctrl-C or SIGTERM stops it)."}
    )


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    (args,) = cli.parse((ServeVerifierArguments,), argv)
    if args.stop:
        print(stop_recorded_server(args.pid_file, "serve_verifier.py"))
        return 0

    # Check: a 2-label verifier, sizes that make sense, the port free.
    if not args.model_path:
        raise InputError("--model_path is required to start a server")
    check_verifier_config(args.model_path, "--model_path")
    cli.check_ranges(args, at_least_1=("batch_size",), above_0=("timeout",))
    if not args.foreground:
        refuse_recorded_server(args.pid_file, "serve_verifier.py", "python serve_verifier.py --stop")
    check_port_free(args.host, args.port)
    url = f"http://{args.host}:{args.port}"

    if not args.foreground:  # this same command, serving in its own session, recorded once it answers
        log_file = args.log_file or os.path.splitext(args.pid_file)[0] + ".log"
        command = [sys.executable, os.path.abspath(__file__), *argv, "--foreground", "True"]
        print(f"starting the verifier server (log: {log_file})", flush=True)
        process = start_recorded_server(command, f"{url}/health", args.pid_file, log_file, args.timeout)
        print(f"verifier server PID {process.pid} ready on {url} (recorded in {args.pid_file})")
        return 0

    # Load, then serve until stopped.
    import uvicorn

    dtype = DTYPES.get(args.dtype) or (torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    model, tokenizer = load_verifier(
        args.model_path,
        dtype,
        "--model_path",
        trust_remote_code=args.trust_remote_code,
        attn_implementation=attn_implementation(dtype != torch.float32),
    )
    model.requires_grad_(False).to("cuda" if torch.cuda.is_available() else "cpu")
    template = load_template(args.verifier_template) if args.verifier_template else None  # a missing file: one line
    reward = VerifierReward(model, tokenizer, template=template, batch_size=args.batch_size)
    print(f"verifier {args.model_path} ({args.dtype} -> {dtype}) serving on {url}", flush=True)
    uvicorn.run(create_app(reward, args.model_path), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    cli.run(main)
