"""Ask a HuatuoGPT-o1 style model a medical question: its thinking, then its final response, streamed.

The model answers in the layout it was trained on ("## Thinking ... ## Final Response ..."); this
prints the two parts under their own labels as the tokens arrive, and returns them separately.

Usage:
    python inference.py --model_path FreedomIntelligence/HuatuoGPT-o1-8B --question "How to stop a cough?"
    python inference.py --model_path ckpts/sft_stage1/checkpoint-1000      # interactive: a question per line
"""

import sys
from dataclasses import dataclass, field

from huatuo_o1 import cli
from huatuo_o1.chat import answer, load
from huatuo_o1.models import check_model_source
from huatuo_o1.records import InputError


@dataclass
class InferenceArguments:
    model_path: str = field(metadata={"help": "Model folder or hub id."})
    question: str | None = field(
        default=None, metadata={"help": "Ask this and exit; without it, read questions from stdin."}
    )
    max_new_tokens: int = field(default=2048)
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy decoding."})
    top_p: float = field(default=0.9)


def check_arguments(args):
    """Values generation would reject inside its thread (where the stream would wait for ever), refused now."""
    if args.max_new_tokens <= 0:
        raise InputError(f"--max_new_tokens must be a positive number of tokens, not {args.max_new_tokens}")
    if args.temperature < 0:
        raise InputError(f"--temperature must be 0 (greedy) or more, not {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise InputError(f"--top_p must be in (0, 1], not {args.top_p}")


def main(argv=None):
    (args,) = cli.parse((InferenceArguments,), argv)
    check_arguments(args)
    check_model_source(args.model_path, "--model_path")  # a folder of ours: its files match its manifest
    tokenizer, model = load(args.model_path)
    ask = lambda question: answer(tokenizer, model, question, args.max_new_tokens, args.temperature, args.top_p)  # noqa: E731
    if args.question:
        return ask(args.question)
    print("Ask a question (Ctrl-D to quit).", file=sys.stderr)
    for line in sys.stdin:
        if line.strip():
            ask(line.strip())


if __name__ == "__main__":
    cli.run(main)
