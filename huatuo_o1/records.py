"""Records in and out, shared by every stage, and the field names of each data file (defined once).

Each stage reads a list of JSON objects (a local .json/.jsonl file or a Hugging Face dataset id)
and writes JSON that the next stage reads. Hub ids fail with a clear message when offline.
"""

import hashlib
import json
import os
import tempfile
from typing import Any

# Multiple-choice exam items (construct's input, the evaluation's items).
QUESTION, OPTIONS, ANSWER_IDX, ANSWER = "question", "options", "answer_idx", "answer"
# Verifiable problems: construct writes them, search and RL read them (the public dataset's keys).
OPEN_QUESTION, GROUND_TRUTH = "Open-ended Verifiable Question", "Ground-True Answer"
# SFT data: search writes it, SFT reads it (the public dataset's keys).
SFT_QUESTION, SFT_COT, SFT_RESPONSE = "Question", "Complex_CoT", "Response"
SFT_FIELDS = (SFT_QUESTION, SFT_COT, SFT_RESPONSE)
# The data recipe's parts (prepare_training_data.py): each row as read, plus its source (benchmark or
# input file), its data type (RECIPE_DATA_TYPES) and its origin ("<input name>#<row>").
SOURCE, DATA_TYPE, ORIGIN = "source", "data_type", "origin"
CLOSED_SET = "medical_closed_set"  # an exam question asked with its options, answered by the right option
RECIPE_DATA_TYPES = ("medical", CLOSED_SET, "general")
# Search records keep every verdict as {VERIFIED_RESPONSE, REFERENCE_ANSWER, VERDICT} in VERIFICATIONS:
# the verifier's training data.
VERIFICATIONS, VERIFIED_RESPONSE, REFERENCE_ANSWER, VERDICT = (
    "verifications",
    "response",
    "reference_answer",
    "verdict",
)

# Dataset ids with several configurations on the hub, and the one the paper's commands mean.
DEFAULT_HUB_CONFIGS = {
    "FreedomIntelligence/medical-o1-reasoning-SFT": "en",
}


class InputError(ValueError):
    """Bad input a user must fix: the message says which file and which row."""


def looks_like_hub_id(path_or_id: str) -> bool:
    return (
        not os.path.exists(path_or_id) and path_or_id.count("/") == 1 and not path_or_id.endswith((".json", ".jsonl"))
    )


def read_text(path: str, what: str = "file") -> str:
    """A text file's content (UTF-8, a leading byte-order mark dropped), or one line saying what is wrong."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, expected a {what}") from None
    except PermissionError:
        raise InputError(f"{path}: not readable (permission denied)") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(
            f"{path}: not UTF-8 text (byte {e.start}, line {line}: {data[e.start : e.start + 1]!r}); save it as UTF-8"
        ) from None
    return text.removeprefix("\ufeff")


def digest(obj: Any) -> str:
    """A short fingerprint (16 hex digits of a SHA-256) of bytes as they are, or of JSON-able data: the same data, in
    any key order, gives the same one."""
    if not isinstance(obj, bytes):
        obj = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return hashlib.sha256(obj).hexdigest()[:16]


def read_json(path: str | os.PathLike, jsonl: bool | None = None) -> Any:
    """A local JSON file (or JSONL: a list of rows), or one line naming the file and the line that is wrong.

    jsonl: read it as JSONL (one value per line) or as one JSON document; None: JSONL when its name ends in .jsonl.
    """
    path = os.fspath(path)
    text = read_text(path, "JSON or JSONL file")
    if path.endswith(".jsonl") if jsonl is None else jsonl:
        rows = []
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise InputError(f"{path}: line {line_no} is not valid JSON ({e.msg})") from None
        return rows
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


def _read_hub(dataset_id, split):
    name, _, config = dataset_id.partition(":")
    config = config or DEFAULT_HUB_CONFIGS.get(name)
    try:
        from datasets import load_dataset

        dataset = load_dataset(name, config, split=split)
    except Exception as e:  # datasets raises several types for "offline" / "not found"
        raise InputError(
            f"could not load the Hugging Face dataset '{dataset_id}' ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}). "
            "If this machine is offline, download it where you have network "
            f"(`huggingface-cli download --repo-type dataset {name} --local-dir data/...`) and pass the local "
            ".json/.jsonl file instead."
        ) from None
    return [dict(row) for row in dataset]


def load_records(
    path_or_id: str, required_fields: tuple = (), split: str = "train", allow_empty: bool = False
) -> list[dict]:
    """Return a list of dicts from a local JSON list / JSONL file or a hub dataset id.

    Raises InputError naming the file and the first bad row when the top level is not a list,
    a row is not an object, or a row lacks one of required_fields.
    """
    if looks_like_hub_id(path_or_id):
        rows = _read_hub(path_or_id, split)
    elif not os.path.isfile(path_or_id):
        raise InputError(f"{path_or_id}: no such file (and not a Hugging Face dataset id of the form org/name)")
    else:
        rows = read_json(path_or_id)
    if not isinstance(rows, list):
        raise InputError(
            f"{path_or_id}: expected a JSON list of objects at the top level, found {type(rows).__name__}"
        )
    if not rows and not allow_empty:
        raise InputError(f"{path_or_id}: the list is empty, nothing to do")
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InputError(f"{path_or_id}: row {index} is a {type(row).__name__}, expected an object")
        missing = [field for field in required_fields if field not in row]
        if missing:
            raise InputError(f"{path_or_id}: row {index} lacks the field(s) {', '.join(map(repr, missing))}")
    return rows


def write_json_atomic(path: str, obj: Any) -> None:
    """Write JSON so that a crash leaves either the old file or the new one, never half of one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=2)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; results should read like any other file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
