"""Asking a trained model: its reply streamed with the answer layout's headings shown as labels.

inference.py is the command around it.
"""

import sys
import threading
from dataclasses import asdict
from typing import TextIO

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase, TextIteratorStreamer

from huatuo_o1.answer_format import FINAL_RESPONSE, THINKING, split_reply
from huatuo_o1.models import from_pretrained_or_explain, load_chat_tokenizer

LABELS = {THINKING: "[Thinking]", FINAL_RESPONSE: "[Final Response]"}


class SectionPrinter:
    """Prints streamed text with the layout's headings replaced by labels; collects each part.

    A heading can arrive split over several chunks, so the last few characters are held back until
    it is clear they do not start one.
    """

    def __init__(self, out=sys.stdout):
        self.out, self.pending, self.section = out, "", None
        self.text = ""  # everything fed so far
        self.shown = {None: False, THINKING: False, FINAL_RESPONSE: False}  # text shown in each section yet

    def _emit(self, text):
        self.shown[self.section] = self.shown[self.section] or bool(text)
        self.out.write(text)
        self.out.flush()

    def feed(self, chunk: str) -> None:
        self.text += chunk
        self.pending += chunk
        while True:
            found = [(self.pending.find(h), h) for h in LABELS if h in self.pending]
            if not found:
                break
            index, heading = min(found)
            self._emit(self.pending[:index])
            self.section = heading
            self.out.write(("\n" if index or self.shown[None] or self.shown[THINKING] else "") + LABELS[heading])
            self.pending = self.pending[index + len(heading) :]
        keep = max((k for h in LABELS for k in range(1, len(h)) if self.pending.endswith(h[:k])), default=0)
        self._emit(self.pending[: len(self.pending) - keep])
        self.pending = self.pending[len(self.pending) - keep :]

    def close(self) -> dict:
        """Flush; the reply's parts and whether it is well-formed (huatuo_o1.answer_format's rule)."""
        self._emit(self.pending)
        self.pending = ""
        self.out.write("\n")
        return asdict(split_reply(self.text))


def load(model_path: str) -> tuple[PreTrainedTokenizerBase, torch.nn.Module]:
    tokenizer = load_chat_tokenizer(model_path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = from_pretrained_or_explain(AutoModelForCausalLM, model_path, dtype=dtype).to(device).eval()
    return tokenizer, model


def answer(
    tokenizer: PreTrainedTokenizerBase,
    model: torch.nn.Module,
    question: str,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 0.9,
    out: TextIO = sys.stdout,
) -> dict:
    """Generate an answer to question, printing it as it comes; return its parts."""
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    ).to(model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    )
    failure = []

    def generate(**kwargs):
        # An error inside generate would leave the stream waiting for ever: end it, and raise it below.
        try:
            model.generate(**kwargs)
        except BaseException as error:
            failure.append(error)
            streamer.end()

    generation = threading.Thread(
        target=generate,
        kwargs=dict(
            **inputs,
            streamer=streamer,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            **sampling,
        ),
    )
    generation.start()
    printer = SectionPrinter(out)
    for chunk in streamer:
        printer.feed(chunk)
    generation.join()
    if failure:
        raise failure[0]
    return printer.close()
