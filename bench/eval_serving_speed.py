"""Tokens per second of one model: plain `generate` in this process vs. through `transformers serve`.

Prints both rates and their ratio, measured in one run (the machine's load affects both alike).
    python bench/eval_serving_speed.py MODEL_DIR [--new_tokens 40] [--continuous_batching]
"""

import os
import subprocess
import sys
import tempfile
import time

import torch
from openai import OpenAI
from transformers import AutoModelForCausalLM, AutoTokenizer

from huatuo_o1 import cli
from huatuo_o1.serving import free_port

PROMPT = (
    "Please answer the following multiple-choice question:\nWhich vitamin deficiency causes scurvy?\nA. "
    "Vitamin A\nB. Vitamin B1\nC. Vitamin C\nD. Vitamin D"
)


def main():
    parser = cli.argument_parser(__doc__)
    parser.add_argument("model")
    parser.add_argument("--new_tokens", type=int, default=40)
    parser.add_argument("--continuous_batching", action="store_true")
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True
    )
    model = AutoModelForCausalLM.from_pretrained(args.model)
    inputs = tokenizer(text, return_tensors="pt")
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
    direct = (out.shape[1] - inputs["input_ids"].shape[1]) / (time.perf_counter() - start)
    del model

    port, pid_file = free_port(), tempfile.mktemp(suffix=".pid")
    serve = [
        sys.executable,
        "evaluation/serve.py",
        "--model_path",
        args.model,
        "--port",
        str(port),
        "--pid_file",
        pid_file,
        "--backend",
        "transformers",
    ] + (["--continuous_batching"] if args.continuous_batching else [])
    subprocess.run(serve, check=True, stdout=subprocess.DEVNULL)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="EMPTY")
        client.completions.create(model=args.model, prompt=text, max_tokens=2)  # warm-up
        start = time.perf_counter()
        reply = client.completions.create(model=args.model, prompt=text, max_tokens=args.new_tokens, temperature=0)
        served = reply.usage.completion_tokens / (time.perf_counter() - start)
    finally:
        subprocess.run(
            [sys.executable, "evaluation/serve.py", "--stop", "--pid_file", pid_file], stdout=subprocess.DEVNULL
        )
    print(
        f"direct generate: {direct:.1f} tokens/s; through transformers serve: {served:.1f} tokens/s "
        f"(ratio {served / direct:.2f}; served reply had {reply.usage.completion_tokens} tokens; load "
        f"{os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    main()
