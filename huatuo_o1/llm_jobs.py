"""A data stage's job: its input and output flags, and every item taken through the teacher once.

construct_verifiable_medical_problems.py and search_for_complex_reasoning_path.py each say what to ask of
an item (huatuo_o1/construct.py, huatuo_o1/search.py); run_items does the rest: items finished by an earlier
run are skipped, the others run --num_process at a time (huatuo_o1/worker_threads.py) and each is saved as it
finishes (huatuo_o1/item_store.py), with a progress bar. Ctrl-C stops within a second or two: no new request
(huatuo_o1/teacher.py), the items in flight abandoned (the next run does them), one line saying what was kept.
"""

import copy
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tqdm import tqdm

from huatuo_o1.cli import check_ranges
from huatuo_o1.item_store import ItemStore, fingerprint, item_keys
from huatuo_o1.teacher import Abandoned, ItemFailed, ItemTrace, Teacher
from huatuo_o1.worker_threads import Workers


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


def run_items(
    work: Callable[[dict, ItemTrace, str], str],
    items: list[dict],
    store: ItemStore,
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

    saving = threading.Lock()
    saved = []  # every entry saved by this run, in the order saved (under `saving`)

    def one(key_and_item):
        key, item = key_and_item
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
        return entry

    started = time.time()
    done = failed = 0
    # A few more threads than request slots keep every slot busy while a thread parses or writes a file;
    # teacher.stop keeps every thread from sending another request once the run stops.
    workers = Workers(one, pending, teacher.concurrency + 4, stop=teacher.stop)
    bar = tqdm(total=len(pending), desc=desc, unit="item")
    try:
        for _, entry in workers:
            if isinstance(entry, BaseException):  # the store could not be written (disk full, say): stop, loudly
                teacher.stop.set()
                bar.close()  # the error line starts on a line of its own
                raise entry
            entries[entry["key"]] = entry
            done += entry["status"] == "done"
            failed += entry["status"] == "failed"
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
            kept = list(saved)  # not what the loop counted: Ctrl-C may land between an item's arrival and its count
        bar.close()
        done, failed = (sum(entry["status"] == status for entry in kept) for status in ("done", "failed"))
        not_started = workers.not_started()
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
