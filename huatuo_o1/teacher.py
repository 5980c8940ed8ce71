"""The teacher LLM as the data stages ask it: one openai client shared by the worker threads, every call counted.

- ApiArguments: the endpoint flags both data stages take (model, URL, key, retries, timeout, parsing).
- Teacher.complete: one chat completion through the client's own retries (429, 5xx, timeouts, connection errors,
  honouring retry-after); every HTTP attempt, retries included, counted per item and per run, with the tokens.
- Teacher.ask: a prompt sent again while its reply does not parse (--parse_attempts), every exchange logged;
  an item that cannot go on raises ItemFailed with the reason, the API key redacted.
- Teacher.stop: set on Ctrl-C; from then on no HTTP attempt leaves (Abandoned).
"""

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import openai

from huatuo_o1.cli import check_ranges, redact
from huatuo_o1.records import InputError


@dataclass
class ApiArguments:
    model_name: str = field(default="gpt-4o", metadata={"help": "Model name sent to the endpoint."})
    api_url: str = field(
        default="https://api.openai.com/v1",
        metadata={"help": "Any OpenAI-compatible endpoint: a base URL (.../v1) or a full .../chat/completions URL."},
    )
    api_key: str | None = field(
        default=None,
        metadata={"help": "API key. Prefer the OPENAI_API_KEY environment variable (a flag is visible in `ps`)."},
    )
    max_retries: int = field(
        default=6,
        metadata={
            "help": (
                "HTTP retries per call on 429/5xx/timeouts/connection errors (the client's exponential "
                "backoff, honouring retry-after)."
            )
        },
    )
    timeout: float = field(
        default=120.0, metadata={"help": "Seconds before one HTTP call times out (then it is retried)."}
    )
    parse_attempts: int = field(
        default=3,
        metadata={"help": "How many times a prompt is sent when the reply cannot be parsed (the original: 2)."},
    )
    temperature: float | None = field(
        default=None, metadata={"help": "Sampling temperature; unset = the endpoint's default."}
    )
    max_tokens: int = field(
        default=8192,
        metadata={
            "help": "max_tokens sent with every request, as the original did; 0 sends none (the endpoint's default)."
        },
    )
    reply_parsing: str = field(
        default="strict",
        metadata={
            "help": "'strict': a verdict must be named as a word, JSON is read as written; 'original': the original's "
            "reading ('pass' / 'true' anywhere in the reply passes, raw newlines deleted before JSON parsing, "
            "any final response accepted).",
            "choices": ["strict", "original"],
        },
    )

    def __post_init__(self):
        check_ranges(
            self,
            at_least_1=("parse_attempts",),
            at_least_0=("max_retries", "max_tokens", "temperature"),
            above_0=("timeout",),
        )


class ItemFailed(Exception):
    """An item that cannot be finished; the message is the reason recorded with it."""


class Abandoned(BaseException):
    """The run is stopping (Ctrl-C): this item's work ends here, unrecorded, and the next run does it again.

    A BaseException, so that no `except Exception` in an item's work records it as a failure.
    """


def api_base_url(api_url: str) -> str:
    """Accept a base URL or a full chat-completions URL (the original took the latter)."""
    url = api_url.rstrip("/")
    return url[: -len("/chat/completions")] if url.endswith("/chat/completions") else url


class ItemTrace:
    """What one item cost and said: calls, tokens, and every query with its reply (for audit)."""

    def __init__(self):
        self.calls = self.prompt_tokens = self.completion_tokens = 0
        self.log = []


class Teacher:
    """One openai client shared by all worker threads: at most `concurrency` requests at once; counts calls, tokens."""

    def __init__(self, args: ApiArguments, concurrency=1):
        self.api_key = args.api_key or os.environ.get("OPENAI_API_KEY")
        if not self.api_key:
            raise InputError("no API key: set the OPENAI_API_KEY environment variable (or pass --api_key)")
        self.args = args
        self.concurrency = concurrency  # requests in flight at once (--num_process)
        self.stop = threading.Event()  # set on Ctrl-C: no request leaves after it
        self.attempts = threading.local()  # .count: HTTP attempts of the call this thread makes now
        # The SDK's own HTTP client (httpx2 under openai 3.x, httpx under 2.x) with its defaults; the hook runs
        # before every attempt the openai client makes, its retries included.
        self.http_client = openai.DefaultHttpxClient(event_hooks={"request": [self._before_attempt]})
        self.client = openai.OpenAI(
            base_url=api_base_url(args.api_url),
            api_key=self.api_key,
            max_retries=args.max_retries,
            timeout=args.timeout,
            http_client=self.http_client,
        )
        self.lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(self.concurrency)
        self.calls = self.prompt_tokens = self.completion_tokens = 0

    def _before_attempt(self, request) -> None:
        if self.stop.is_set():
            raise Abandoned()
        self.attempts.count += 1

    def redact(self, text: object) -> str:
        return redact(text, self.api_key)

    def _count(self, trace, calls, prompt_tokens=0, completion_tokens=0):
        trace.calls += calls
        trace.prompt_tokens += prompt_tokens
        trace.completion_tokens += completion_tokens
        with self.lock:
            self.calls += calls
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens

    def complete(self, prompt: str, trace: ItemTrace) -> str:
        """One chat completion (with the client's retries); returns the reply text."""
        extra = {} if self.args.temperature is None else {"temperature": self.args.temperature}
        if self.args.max_tokens:
            extra["max_tokens"] = self.args.max_tokens
        self.attempts.count = 0
        try:
            with self.slots:
                if self.stop.is_set():
                    raise Abandoned()
                raw = self.client.chat.completions.with_raw_response.create(
                    model=self.args.model_name, messages=[{"role": "user", "content": prompt}], **extra
                )
            completion = raw.parse()
        except openai.OpenAIError:
            self._count(trace, self.attempts.count)
            raise
        usage = completion.usage
        self._count(
            trace,
            self.attempts.count,
            (usage.prompt_tokens or 0) if usage else 0,
            (usage.completion_tokens or 0) if usage else 0,
        )
        return completion.choices[0].message.content or "" if completion.choices else ""

    def ask(self, step: str, prompt: str, parse: Callable[[str], Any], trace: ItemTrace) -> Any:
        """Send prompt until parse(reply) succeeds (at most parse_attempts times); log every exchange.

        parse raises ValueError for an unusable reply. Raises ItemFailed with the reason otherwise.
        """
        problem = None
        for _ in range(self.args.parse_attempts):
            try:
                reply = self.complete(prompt, trace)
            except openai.OpenAIError as error:
                raise ItemFailed(
                    self.redact(f"{step}: {type(error).__name__} after {self.attempts.count} HTTP call(s): {error}")
                ) from None
            try:
                value = parse(reply)
            except ValueError as error:
                problem = error
                trace.log.append({"step": step, "query": prompt, "reply": reply, "parsed": False})
                continue
            trace.log.append({"step": step, "query": prompt, "reply": reply, "parsed": True})
            return value
        raise ItemFailed(
            self.redact(f"{step}: no usable reply after {self.args.parse_attempts} attempt(s) ({problem})")
        )
