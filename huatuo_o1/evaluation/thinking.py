"""A reply's thinking, controlled at test time (evaluation/eval.py --think_budget, --keep_thinking): what counts as
thinking, the cut at a budget, the "Wait" that keeps a model thinking, and the completions requests that do it.

- Thinking is the reply's text after its first "## Thinking" up to the first "## Final Response" after that (from
  the reply's start when it has no "## Thinking", to its end when it has no "## Final Response"), whitespace
  stripped at both ends. Its length is counted in tokens of the model's own tokenizer, without special tokens.
  A model that writes no heading thinks, by this rule, for its whole reply.
- A budget of N cuts a reply whose thinking is longer than N tokens: its text is kept up to the end of its N-th
  thinking token (the tokenizer's character offsets, so the kept text is the model's own, as decoding the first
  N tokens gives it; one token less where the N-th ends inside a character that spans two tokens), then
  FORCE_ANSWER is appended and a second request lets the model answer. A reply whose thinking is N tokens or
  fewer is left as it is.
- Keeping thinking K times: each request stops at "## Final Response"; where the model wrote it (the server
  names it as the stop, or the text holds it, from a server that ignores stop strings), the text before it,
  trailing whitespace removed, gets KEEP_THINKING and the model goes on; after K of these a request without a
  stop string lets it write its final response. A request that ends otherwise (the end-of-text token, or the
  token limit) ends the reply: there was no end of thinking to skip.
- Every request's max_tokens is --max_new_tokens minus the tokens the reply already holds (this tokenizer's
  count of the text so far, appended texts included; at least 1 for the forced answer), so the first request is
  the one eval.py sends without these flags, and a reply is as long as without them.
"""

import threading
from collections.abc import Callable
from dataclasses import dataclass

from huatuo_o1.answer_format import FINAL_MARK, FINAL_RESPONSE, THINKING
from huatuo_o1.records import InputError

# What a cut appends: the model is made to answer after the thinking it has written.
FORCE_ANSWER = "\n\n" + FINAL_MARK
# What --keep_thinking appends in place of the final-response heading, after the thinking's trailing whitespace
# is removed (the word of s1's budget forcing).
KEEP_THINKING = "\n\nWait"
# Fields each reply gets in the results of a run with --think_budget or --keep_thinking.
THINKING_KEYS = ("thinking_tokens", "thinking_cut", "thinking_extensions")


@dataclass
class Completion:
    """One completions request's answer: its text, why it ended (and the stop string the server names, if any),
    and the tokens the server generated."""

    text: str
    finish_reason: str | None
    stop_reason: str | int | None  # vLLM: stop_reason, SGLang: matched_stop; None for end-of-text
    completion_tokens: int | None


# (prompt, max_tokens, stop strings or None) -> the server's answer
Complete = Callable[[str, int, list[str] | None], Completion]


@dataclass
class ControlledReply:
    text: str
    finish_reason: str | None
    completion_tokens: int | None  # every request's generated tokens, summed (the tokens cut away included)
    thinking_tokens: int
    thinking_cut: bool
    thinking_extensions: int


def thinking_span(reply: str) -> tuple[int, int]:
    """(start, end) of the reply's thinking: reply[start:end] is its text, whitespace stripped."""
    start = reply.find(THINKING)
    start = 0 if start < 0 else start + len(THINKING)
    end = reply.find(FINAL_RESPONSE, start)
    end = len(reply) if end < 0 else end
    text = reply[start:end]
    start += len(text) - len(text.lstrip())
    return start, start + len(text.strip())


class ThinkingControl:
    """Counts and cuts a reply's thinking with the model's tokenizer, and asks for a reply within a budget and/or
    with its thinking kept going (budget None: no cut; keep_thinking 0: no "Wait")."""

    def __init__(self, tokenizer, budget: int | None = None, keep_thinking: int = 0):
        if not getattr(tokenizer, "is_fast", False):
            raise InputError(
                f"{getattr(tokenizer, 'name_or_path', 'the model')}: --think_budget and --keep_thinking need a fast "
                "tokenizer (tokenizer.json), to cut thinking on a token boundary"
            )
        self.tokenizer, self.budget, self.keep_thinking = tokenizer, budget, keep_thinking
        self._lock = threading.Lock()  # eval.py's worker threads share it; a Rust tokenizer takes one call at a time

    def _encode(self, text: str, offsets: bool = False):
        with self._lock:
            return self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=offsets)

    def count(self, text: str) -> int:
        return len(self._encode(text)["input_ids"])

    def thinking_tokens(self, reply: str) -> int:
        start, end = thinking_span(reply)
        return self.count(reply[start:end])

    def cut(self, reply: str) -> str | None:
        """The reply up to the end of its budget-th thinking token, or None when its thinking is within budget."""
        start, end = thinking_span(reply)
        thinking = reply[start:end]
        offsets = self._encode(thinking, offsets=True)["offset_mapping"]
        if len(offsets) <= self.budget:
            return None
        kept = self.budget
        while kept > 0 and self.count(thinking[: offsets[kept - 1][1]]) > self.budget:
            kept -= 1  # the last token ends inside a character: keep that character out
        return reply[: start + (offsets[kept - 1][1] if kept else 0)]

    def reply(self, complete: Complete, prompt: str, max_new_tokens: int) -> ControlledReply:
        text, finish_reason, tokens, extensions = "", None, [], 0
        while True:
            room = max_new_tokens - self.count(text)
            if room < 1:
                finish_reason = "length"
                break
            keep_going = extensions < self.keep_thinking
            part = complete(prompt + text, room, [FINAL_RESPONSE] if keep_going else None)
            tokens.append(part.completion_tokens)
            finish_reason = part.finish_reason
            ended_thinking = part.stop_reason == FINAL_RESPONSE or FINAL_RESPONSE in part.text
            if not (keep_going and ended_thinking):
                text += part.text
                break
            text = (text + part.text.split(FINAL_RESPONSE, 1)[0]).rstrip() + KEEP_THINKING
            extensions += 1
        kept = self.cut(text) if self.budget is not None else None
        if kept is not None:
            text = kept + FORCE_ANSWER
            part = complete(prompt + text, max(1, max_new_tokens - self.count(text)), None)
            text += part.text
            finish_reason = part.finish_reason
            tokens.append(part.completion_tokens)
        known = [count for count in tokens if count is not None]
        return ControlledReply(
            text=text,
            finish_reason=finish_reason,
            completion_tokens=sum(known) if known else None,
            thinking_tokens=self.thinking_tokens(text),
            thinking_cut=kept is not None,
            thinking_extensions=extensions,
        )
