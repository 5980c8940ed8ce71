"""Per-item progress of a data stage: one file per finished item, and one run at a time on a progress folder.

Each item's file is named by a key made from the item's content and holds a fingerprint of the item and the
settings, so a rerun skips the items finished with the same settings (wherever they moved in the input), redoes
the others, and a kill -9 loses only the items in flight.
"""

import fcntl
import os
import re
import time
from collections import Counter

from huatuo_o1.records import InputError, digest, looks_like_hub_id, read_json, write_json_atomic


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


def task_store(job, suffix: str = "") -> tuple[str, "ItemStore"]:
    """(task name, per-item store) of a run (job: its JobArguments): <input name><suffix>[_zh], under <output_dir>/
    (the original's naming).

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
            return read_json(self.path(key))
        except InputError:  # not done yet, or (only by a hand that edited it) unreadable: done again
            return None

    def save(self, key: str, entry: dict) -> None:
        write_json_atomic(self.path(key), entry)
