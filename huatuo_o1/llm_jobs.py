"""What the two data stages share: ask a teacher LLM, parse its replies, keep per-item progress.

construct_verifiable_medical_problems.py and search_for_complex_reasoning_path.py both send many
prompts per input item to an OpenAI-compatible endpoint and must survive rate limits, bad replies
and crashes. This module holds that machinery so each script only says what to ask:

- ApiArguments / JobArguments: the flags both scripts take.
- load_prompts / render: prompt templates from files (prompts/<language>/ or the user's folder).
- Teacher: one shared openai client (its own retry/backoff on 429, 5xx, timeouts), counts every
  HTTP call and token, retries replies that do not parse, redacts the API key from every message.
- parse_json_object: JSON out of a reply that may wrap it in a ```json fence or prose
  (parse_json_object_as_original: the original's looser reading, for --reply_parsing original).
- ItemStore / run_items: each finished item is written atomically to its own file, so a rerun skips
  finished items, retries failed ones, and a kill -9 loses only the items in flight. A run holds its
  progress folder's lock (a second run on it refuses to start); Ctrl-C stops within a second or two:
  no new request, the items in flight abandoned (the next run does them), one line saying what was kept.
- check_output_paths / write_outputs: before the work, the outputs can be written and none is the input;
  after it, the merged output files plus a run summary, never replacing a file with fewer rows and
  never written when every item failed.
"""

import copy
import fcntl
import json
import os
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import openai
from tqdm import tqdm

from huatuo_o1.cli import check_ranges
from huatuo_o1.outputs import check_outputs, rows_in
from huatuo_o1.records import (
    InputError,
    digest,
    looks_like_hub_id,
    read_text,
    write_json_atomic,
)

PROMPTS_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prompts")


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


@dataclass
class JobArguments:
    data_path: str = field(metadata={"help": "Local .json/.jsonl list of items, or a Hugging Face dataset id."})
    output_path: str | None = field(
        default=None,
        metadata={"help": "Where to write the merged output (default: the original's name, in the current folder)."},
    )
    output_dir: str = field(
        default="output_data", metadata={"help": "Folder for per-item progress files (one sub-folder per task)."}
    )
    limit_num: int | None = field(default=None, metadata={"help": "Only process the first N items."})
    language: str = field(default="en", metadata={"help": "Language of the generated text.", "choices": ["en", "zh"]})
    prompt_dir: str | None = field(
        default=None,
        metadata={
            "help": (
                "Folder with your own prompt templates (same file names as huatuo_o1/prompts/en/); missing files fall "
                "back to the built-in ones."
            )
        },
    )

    def __post_init__(self):
        check_ranges(self, at_least_1=("limit_num",))


# ---- prompts --------------------------------------------------------------------------------


def load_prompts(required: dict, language: str = "en", prompt_dir: str | None = None) -> dict[str, str]:
    """required: {template name: [placeholders it must contain]} -> {name: template text}."""
    prompts = {}
    for name, placeholders in required.items():
        candidates = ([os.path.join(prompt_dir, f"{name}.txt")] if prompt_dir else []) + [
            os.path.join(PROMPTS_ROOT, language, f"{name}.txt")
        ]
        path = next((p for p in candidates if os.path.isfile(p)), None)
        if path is None:
            raise InputError(
                f"prompt template '{name}.txt' not found in {' or '.join(os.path.dirname(p) for p in candidates)}"
            )
        text = read_text(path, "prompt template")
        missing = [p for p in placeholders if "{" + p + "}" not in text]
        if missing:
            raise InputError(
                f"{path}: the template lacks the placeholder(s) {', '.join('{' + p + '}' for p in missing)}"
            )
        prompts[name] = text
    return prompts


def render(template: str, **values) -> str:
    """Fill {name} placeholders in one pass (text filled in is never scanned again); other braces stay."""
    return re.sub(r"\{(\w+)\}", lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), template)


# ---- replies --------------------------------------------------------------------------------


def parse_json_object(text: str) -> dict:
    """The JSON object in a reply: plain, inside a ```json fence, or between prose. Raises ValueError."""
    text = (text or "").strip()
    candidates = [text]
    candidates += re.findall(r"```(?:json|JSON)?\s*(.*?)```", text, flags=re.DOTALL)
    if "{" in text and "}" in text:
        candidates.append(text[text.index("{") : text.rindex("}") + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate, strict=False)  # strict=False: raw newlines inside strings
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    raise ValueError(f"no JSON object found in the reply ({text[:80]!r}...)")


def parse_json_object_as_original(text: str) -> dict:
    """The original's reading of a JSON reply: unless the reply starts with '{', the text from its first
    '{' to its last '}'; every raw newline deleted (line breaks inside strings are lost, text on two
    lines is joined); then strict JSON. Raises ValueError."""
    text = text or ""
    if not text.startswith("{"):
        match = re.search(r"\{.*\}", text, flags=re.DOTALL)
        if match is None:
            raise ValueError(f"no {{...}} in the reply ({text[:80]!r}...)")
        text = match.group(0)
    try:
        value = json.loads(text.replace("\n", ""))
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON once newlines are deleted: {error}") from None
    if not isinstance(value, dict):
        raise ValueError("the JSON is not an object")
    return value


class ItemFailed(Exception):
    """An item that cannot be finished; the message is the reason recorded with it."""


class Abandoned(BaseException):
    """The run is stopping (Ctrl-C): this item's work ends here, unrecorded, and the next run does it again.

    A BaseException, so that no `except Exception` in an item's work records it as a failure.
    """


class StoppableClient(openai.OpenAI):
    """The openai client, refusing to send any request (its own retries included) once `stop` is set."""

    stop: threading.Event

    def _prepare_request(self, request):  # the client's hook before every HTTP attempt
        if self.stop.is_set():
            raise Abandoned()
        return super()._prepare_request(request)


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
        self.client = StoppableClient(
            base_url=api_base_url(args.api_url),
            api_key=self.api_key,
            max_retries=args.max_retries,
            timeout=args.timeout,
        )
        self.client.stop = self.stop
        self.lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(self.concurrency)
        self.calls = self.prompt_tokens = self.completion_tokens = 0

    def redact(self, text: object) -> str:
        return str(text).replace(self.api_key, "***") if self.api_key else str(text)

    def _count(self, trace, calls, prompt_tokens=0, completion_tokens=0):
        trace.calls += calls
        trace.prompt_tokens += prompt_tokens
        trace.completion_tokens += completion_tokens
        with self.lock:
            self.calls += calls
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens

    def _http_calls_spent(self, error):
        """The client retried this error max_retries times before giving up, or not at all."""
        retryable = isinstance(error, openai.APIConnectionError) or (
            isinstance(error, openai.APIStatusError)
            and (error.status_code in (408, 409, 429) or error.status_code >= 500)
        )
        return self.args.max_retries + 1 if retryable else 1

    def complete(self, prompt: str, trace: ItemTrace) -> str:
        """One chat completion (with the client's retries); returns the reply text."""
        extra = {} if self.args.temperature is None else {"temperature": self.args.temperature}
        if self.args.max_tokens:
            extra["max_tokens"] = self.args.max_tokens
        try:
            with self.slots:
                if self.stop.is_set():
                    raise Abandoned()
                raw = self.client.chat.completions.with_raw_response.create(
                    model=self.args.model_name, messages=[{"role": "user", "content": prompt}], **extra
                )
            completion = raw.parse()
        except openai.OpenAIError as error:
            self._count(trace, self._http_calls_spent(error))
            raise
        usage = completion.usage
        self._count(
            trace,
            1 + raw.retries_taken,
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
                spent = self._http_calls_spent(error)
                raise ItemFailed(
                    self.redact(f"{step}: {type(error).__name__} after {spent} HTTP call(s): {error}")
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


# ---- per-item progress ----------------------------------------------------------------------


def task_name_of(data_path: str) -> str:
    """The original's task name: the input file name without extension (hub ids: org_name)."""
    if looks_like_hub_id(data_path):
        return data_path.replace("/", "_").replace(":", "_")
    return re.sub(r"\.(jsonl|json)$", "", os.path.basename(data_path))


def item_keys(items: list[dict]) -> list[str]:
    """A key per item from its content (so inserting or reordering rows keeps finished work findable);
    repeated identical items get -1, -2, ... appended."""
    keys, seen = [], Counter()
    for item in items:
        key = digest(item)
        keys.append(key if not seen[key] else f"{key}-{seen[key]}")
        seen[key] += 1
    return keys


def fingerprint(item: dict, settings: dict) -> str:
    """Identifies the work an item file holds: the item itself and the settings that change the result."""
    return digest([item, settings])


def task_store(job: "JobArguments", suffix: str = "") -> tuple[str, "ItemStore"]:
    """(task name, per-item store) of a run: <input name><suffix>[_zh], under <output_dir>/ (the original's naming).

    The store holds its folder's lock from here on: a second run on the same folder stops with one line.
    """
    task = task_name_of(job.data_path) + suffix + ("_zh" if job.language == "zh" else "")
    return task, ItemStore(f"{job.output_dir}/{task}")


class ItemStore:
    """One JSON file per input item in `folder` (named by its key), written atomically (old or new, never half).

    One run at a time: the store takes an exclusive lock on <folder>/.lock (the system releases it when the
    process ends, however it ends) and releases it on close() or at the end of a `with` block. Only the
    holder removes temporary files, so they are all leftovers of runs that died mid-write.
    """

    LOCK_NAME = ".lock"

    def __init__(self, folder):
        self.folder = folder
        os.makedirs(folder, exist_ok=True)
        self._lock = open(os.path.join(folder, self.LOCK_NAME), "a+", encoding="utf-8")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.seek(0)
            holder = self._lock.read().strip() or "unknown"
            self._lock.close()
            raise InputError(
                f"{folder} is in use by another run ({holder}); two runs would pay for every item twice: wait "
                "for it to end, or give this run another --output_dir"
            ) from None
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"PID {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        self._lock.flush()
        for name in os.listdir(folder):  # temp files of writes a crash interrupted (no other run is here)
            if name.startswith(".tmp-"):
                os.remove(os.path.join(folder, name))

    def close(self) -> None:
        if not self._lock.closed:
            self._lock.close()  # closing the file releases the lock

    def __enter__(self) -> "ItemStore":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def path(self, key: str) -> str:
        return os.path.join(self.folder, f"{key}.json")

    def load(self, key: str) -> dict | None:
        try:
            with open(self.path(key), encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):  # only possible if someone edited it by hand
            return None

    def save(self, key: str, entry: dict) -> None:
        write_json_atomic(self.path(key), entry)


def run_items(
    work: Callable[[dict, ItemTrace, str], str],
    items: list[dict],
    store: "ItemStore",
    settings: dict,
    teacher: Teacher,
    desc: str,
) -> tuple[list[dict], dict]:
    """Run work(record, trace, key) -> outcome for every item not finished yet.

    record starts as a copy of the item; work adds its results to it (kept even when the item fails).

    A finished item (status "done", same settings) is never sent again; a failed one is retried.
    Returns the entries of all items in input order, and the counts of this run.
    """
    entries, pending, stale = {}, [], 0
    for key, item in zip(item_keys(items), items):
        entry = store.load(key)
        if entry is not None and entry.get("fingerprint") != fingerprint(item, settings):
            stale, entry = stale + 1, None  # the settings changed: redo it
        if entry is not None and entry["status"] == "done":
            entries[key] = entry
        else:
            pending.append((key, item))
    resumed = len(entries)
    if resumed or stale:
        print(
            f"{desc}: {resumed} item(s) already finished in {store.folder} (skipped), {len(pending)} to do"
            + (f", {stale} redone because the input or settings changed" if stale else ""),
            flush=True,
        )

    def one(key, item):
        trace, record = ItemTrace(), copy.deepcopy(item)
        try:
            outcome = work(record, trace, key)
            status, reason = "done", None
        except Abandoned:
            return None  # stopping: not recorded, the next run does it
        except ItemFailed as error:
            outcome, status, reason = "failed", "failed", str(error)
        except Exception as error:  # a bug or an unexpected reply shape: record it, never drop the item
            outcome, status = "failed", "failed"
            reason = teacher.redact(f"unexpected {type(error).__name__}: {error}")
        record["outcome"] = outcome
        if reason:
            record["failure_reason"] = reason
        record["llm_log"] = trace.log
        entry = {
            "key": key,
            "fingerprint": fingerprint(item, settings),
            "status": status,
            "outcome": outcome,
            "reason": reason,
            "calls": trace.calls,
            "prompt_tokens": trace.prompt_tokens,
            "completion_tokens": trace.completion_tokens,
            "record": record,
        }
        with saving:  # once Ctrl-C is handled nothing more is saved, so its message counts exactly what was
            if teacher.stop.is_set():
                return None
            store.save(key, entry)
            saved.append(entry)
            finished.put(entry)
        return entry

    # Daemon threads, never joined: on Ctrl-C the main thread returns at once while a request in flight
    # finishes (or not) on its own, unsaved; teacher.stop keeps every thread from sending another one.
    todo, finished, saving = queue.SimpleQueue(), queue.SimpleQueue(), threading.Lock()
    saved = []  # every entry saved by this run, in the order saved (under `saving`)
    for key_and_item in pending:
        todo.put(key_and_item)

    def worker():
        while not teacher.stop.is_set():
            try:
                key, item = todo.get_nowait()
            except queue.Empty:
                return
            try:
                one(key, item)
            except Exception as error:  # the store could not be written (disk full, say): stop the run, loudly
                teacher.stop.set()
                finished.put(error)
                return

    def count(entry):
        nonlocal done, failed, received
        entries[entry["key"]] = entry
        received += 1
        done += entry["status"] == "done"
        failed += entry["status"] == "failed"

    started = time.time()
    done = failed = received = 0
    # A few more threads than request slots keep every slot busy while a thread parses or writes a file.
    workers = [threading.Thread(target=worker, daemon=True) for _ in range(min(len(pending), teacher.concurrency + 4))]
    bar = tqdm(total=len(pending), desc=desc, unit="item")
    try:
        for thread in workers:
            thread.start()
        while received < len(pending):
            try:
                entry = finished.get(timeout=0.5)
            except queue.Empty:
                continue
            if isinstance(entry, Exception):
                bar.close()  # the error line starts on a line of its own
                raise entry
            count(entry)
            bar.update(1)
            bar.set_postfix(
                done=done,
                failed=failed,
                calls=teacher.calls,
                tokens=teacher.prompt_tokens + teacher.completion_tokens,
                refresh=False,
            )
    except KeyboardInterrupt:
        with saving:
            teacher.stop.set()
            kept = list(saved)  # not what the main loop counted: Ctrl-C may land between a get() and its count()
        bar.close()
        done, failed = (sum(entry["status"] == status for entry in kept) for status in ("done", "failed"))
        not_started = todo.qsize()
        raise KeyboardInterrupt(
            f"{desc}: {resumed + done} item(s) finished and kept in {store.folder} ({done} in this run); "
            f"{failed} failed, {len(pending) - len(kept) - not_started} in flight abandoned, {not_started} not "
            "started: rerun the same command to do them (no output file written)"
        ) from None
    bar.close()
    elapsed = time.time() - started
    this_run = {
        "items_resumed": resumed,
        "items_processed": len(pending),
        "items_redone_stale": stale,
        "calls": teacher.calls,
        "prompt_tokens": teacher.prompt_tokens,
        "completion_tokens": teacher.completion_tokens,
        "elapsed_s": round(elapsed, 3),
        "items_per_s": round(len(pending) / elapsed, 3) if elapsed > 0 and pending else None,
    }
    return [entries[key] for key in item_keys(items)], this_run


# ---- outputs --------------------------------------------------------------------------------


def summarise(
    stage: str, entries: list[dict], this_run: dict, outputs: dict, settings: dict, skipped: int = 0
) -> dict:
    outcomes = Counter(entry["outcome"] for entry in entries)
    reasons = Counter(entry["reason"].split(":")[0] for entry in entries if entry["status"] == "failed")
    return {
        "stage": stage,
        "items": len(entries),
        "skipped_input_rows": skipped,
        "by_outcome": dict(sorted(outcomes.items())),
        "failed_by_step": dict(sorted(reasons.items())),
        "calls": sum(entry["calls"] for entry in entries),
        "prompt_tokens": sum(entry["prompt_tokens"] for entry in entries),
        "completion_tokens": sum(entry["completion_tokens"] for entry in entries),
        "this_run": this_run,
        "outputs": outputs,
        "settings": settings,
    }


def public_settings(*argument_groups) -> dict:
    """All flags, for the summary: never the API key."""
    settings = {}
    for group in argument_groups:
        settings.update(asdict(group))
    settings.pop("api_key", None)
    return settings


def output_names(output_path: str) -> tuple[str, str, str]:
    """(main, records, summary) file names of a run."""
    stem = output_path[:-5] if output_path.endswith(".json") else output_path
    return output_path, f"{stem}_records.json", f"{stem}_summary.json"


def check_output_paths(job: "JobArguments") -> None:
    """Before the work: the output files and the progress folder can be written, and none of them is the input.

    Without --output_path the name holds the row count and lands in the current folder: only that folder is checked.
    """
    outputs = [("--output_dir", job.output_dir, True)]
    if job.output_path:
        main, records, summary = output_names(job.output_path)
        outputs += [("--output_path", main, False), ("--output_path (records)", records, False)]
        outputs += [("--output_path (summary)", summary, False)]
    else:
        outputs.append(("the output file's folder", os.getcwd(), True))
    check_outputs(outputs, {"--data_path": job.data_path})
    if job.output_path:
        rows_in(job.output_path, "--output_path", lists_only=True)


def write_outputs(output_path: str, main_rows: list[dict], entries: list[dict], summary: dict) -> dict:
    """Write the main output, all records (incl. filtered/failed, with their reasons) and the summary.

    A run in which every item failed, or that would replace the main output with fewer rows, writes no
    main output and leaves earlier files as they were (where there were none, it still writes the records
    and the summary, which hold the reasons); it stops with one line (InputError).
    """
    output_path, records_path, summary_path = output_names(output_path)
    summary["outputs"].update({"main": output_path, "records": records_path, "summary": summary_path})
    failed = [entry for entry in entries if entry["status"] == "failed"]
    print(
        f"items by outcome: {summary['by_outcome']}; API calls {summary['calls']}, "
        f"tokens {summary['prompt_tokens']} prompt + {summary['completion_tokens']} completion",
        flush=True,
    )
    before = rows_in(output_path, "--output_path", lists_only=True)
    problem = None
    if entries and len(failed) == len(entries):
        problem = f"every item failed ({len(failed)})"
    elif before is not None and len(main_rows) < before:
        problem = f"this run has {len(main_rows)} row(s), fewer than the {before} in {output_path}"
    if problem:
        if before is None:
            write_json_atomic(records_path, [entry["record"] for entry in entries])
            write_json_atomic(summary_path, summary)
            kept = f"wrote no {output_path}, only {records_path} and {summary_path}"
        else:
            kept = f"kept {output_path} and its records and summary as they were"
        why = ""
        if failed:
            reason = " ".join(failed[0]["reason"].split())
            why = f"; failed items by step {summary['failed_by_step']}, the first: {reason[:160]}"
        raise InputError(
            f"{problem}: {kept}. Fix the cause and rerun the same command (finished items are kept in "
            f"{summary['outputs'].get('progress_dir')}), or, if fewer rows are right, remove {output_path} or pass "
            f"another --output_path{why}"
        )
    write_json_atomic(records_path, [entry["record"] for entry in entries])
    write_json_atomic(output_path, main_rows)
    write_json_atomic(summary_path, summary)
    if failed:
        print(
            f"{len(failed)} item(s) failed (reasons in the records file); rerun the same command to retry only those.",
            flush=True,
        )
    print(f"wrote {len(main_rows)} rows to {output_path}", flush=True)
    print(f"records: {records_path}", flush=True)
    print(f"summary: {summary_path}", flush=True)
    return summary
