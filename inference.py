"""Ask a HuatuoGPT-o1 style model a medical question: its thinking, then its final response, streamed.

The model answers in the layout it was trained on ("## Thinking ... ## Final Response ..."); this
prints the two parts under their own labels as the tokens arrive, and returns them separately.

Usage:
    python inference.py --model_path FreedomIntelligence/HuatuoGPT-o1-8B --question "How to stop a cough?"
    python inference.py --model_path ckpts/sft_stage1/checkpoint-1000      # interactive: a question per line
"""

import sys
import threading
from dataclasses import dataclass, field
from typing import Optional

import torch
from transformers import AutoModelForCausalLM, HfArgumentParser, TextIteratorStreamer

from pipeline_io import from_pretrained_or_explain, load_chat_tokenizer

THINKING, FINAL = "## Thinking", "## Final Response"
LABELS = {THINKING: "[Thinking]", FINAL: "[Final Response]"}


@dataclass
class InferenceArguments:
    model_path: str = field(metadata={"help": "Model folder or hub id."})
    question: Optional[str] = field(default=None, metadata={"help": "Ask this and exit; without it, read questions from stdin."})
    max_new_tokens: int = field(default=2048)
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy decoding."})
    top_p: float = field(default=0.9)


class SectionPrinter:
    """Prints streamed text with the layout's headings replaced by labels; collects each part.

    A heading can arrive split over several chunks, so the last few characters are held back until
    it is clear they do not start one.
    """

    def __init__(self, out=sys.stdout):
        self.out, self.pending, self.section = out, "", None
        self.parts = {None: "", THINKING: "", FINAL: ""}

    def _emit(self, text):
        self.parts[self.section] += text
        self.out.write(text)
        self.out.flush()

    def feed(self, chunk):
        self.pending += chunk
        while True:
            found = [(self.pending.find(h), h) for h in LABELS if h in self.pending]
            if not found:
                break
            index, heading = min(found)
            self._emit(self.pending[:index])
            self.section = heading
            self.out.write(("\n" if index or self.parts[None] or self.parts[THINKING] else "") + LABELS[heading])
            self.pending = self.pending[index + len(heading):]
        keep = max((k for h in LABELS for k in range(1, len(h)) if self.pending.endswith(h[:k])), default=0)
        self._emit(self.pending[: len(self.pending) - keep])
        self.pending = self.pending[len(self.pending) - keep:]

    def close(self):
        self._emit(self.pending)
        self.pending = ""
        self.out.write("\n")
        return {"thinking": self.parts[THINKING].strip(), "final_response": self.parts[FINAL].strip(),
                "unlabelled": self.parts[None].strip()}


def load(model_path):
    tokenizer = load_chat_tokenizer(model_path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = from_pretrained_or_explain(AutoModelForCausalLM, model_path, dtype=dtype).to(device).eval()
    return tokenizer, model


def answer(tokenizer, model, question, args, out=sys.stdout):
    """Generate an answer to question, printing it as it comes; return its parts."""
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True).to(model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    sampling = {"do_sample": True, "temperature": args.temperature, "top_p": args.top_p} if args.temperature > 0 else {"do_sample": False}
    generation = threading.Thread(target=model.generate, kwargs=dict(
        **inputs, streamer=streamer, max_new_tokens=args.max_new_tokens,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id, **sampling))
    generation.start()
    printer = SectionPrinter(out)
    for chunk in streamer:
        printer.feed(chunk)
    generation.join()
    return printer.close()


def main(argv=None):
    (args,) = HfArgumentParser(InferenceArguments).parse_args_into_dataclasses(args=argv)
    tokenizer, model = load(args.model_path)
    if args.question:
        return answer(tokenizer, model, args.question, args)
    print("Ask a question (Ctrl-D to quit).", file=sys.stderr)
    for line in sys.stdin:
        if line.strip():
            answer(tokenizer, model, line.strip(), args)


if __name__ == "__main__":
    main()
