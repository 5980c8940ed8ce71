"""Where results go: checked before the work, so that nothing is lost or overwritten by surprise.

- check_outputs: no output is an input (the same file or folder, resolved, or a file inside an input
  folder), and every output can be written.
- keep_larger_result: a run never replaces a result file with one of fewer rows.
"""

import json
import os

from huatuo_o1.records import InputError


def _writable_folder(folder: str) -> bool:
    """True when folder exists and can be written to, or can be created (its nearest existing parent can)."""
    while not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            return False
        folder = parent
    return os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)


def check_outputs(
    inputs: dict[str, str | None], files: dict[str, str] | None = None, folders: dict[str, str] | None = None
) -> None:
    """InputError when an output file or folder is one of the inputs, an output file would replace a file
    inside an input folder, or an output cannot be written. Each dict maps the flag that names a path to
    the path (None: not given; inputs that are no local path, e.g. hub ids, are skipped)."""
    files, folders = files or {}, folders or {}
    local_inputs = {flag: os.path.realpath(path) for flag, path in inputs.items() if path and os.path.exists(path)}
    for flag, path in {**files, **folders}.items():
        real = os.path.realpath(path)
        for input_flag, input_real in local_inputs.items():
            named = f"{input_flag} {inputs[input_flag]}"
            if real == input_real:
                raise InputError(f"{flag} {path} is {named}: the output would replace its input; use another {flag}")
            inside = os.path.isdir(input_real) and real.startswith(input_real + os.sep)
            if inside and flag in files and os.path.exists(real):
                raise InputError(f"{flag} {path} would replace a file inside {named}; choose another {flag}")
    for flag, path in files.items():
        if os.path.isdir(path):
            raise InputError(f"{flag} {path} is a folder; give the path of a file to write")
        if not _writable_folder(os.path.dirname(os.path.abspath(path))):
            raise InputError(f"{flag} {path}: its folder cannot be created or written to")
    for flag, path in folders.items():
        if os.path.exists(path) and not os.path.isdir(path):
            raise InputError(f"{flag} {path} is a file; give a folder")
        if not _writable_folder(os.path.abspath(path)):
            raise InputError(f"{flag} {path} cannot be created or written to")


def count_rows(data: object) -> int | None:
    """Rows of a result: the length of a list, or the total length of a dict of lists; None for other shapes."""
    if isinstance(data, list):
        return len(data)
    if isinstance(data, dict) and all(isinstance(rows, list) for rows in data.values()):
        return sum(len(rows) for rows in data.values())
    return None


def keep_larger_result(path: str, new_rows: int, flag: str) -> None:
    """InputError, leaving path as it is, when it holds a result with more rows than the new one, or something
    that is not a result of this kind at all (a mistyped path must not be overwritten)."""
    if not os.path.exists(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            old_rows = count_rows(json.load(f))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        old_rows = None
    if old_rows is None:
        raise InputError(f"{flag} {path} exists and is not a result of this script: not replaced; use another {flag}")
    if new_rows < old_rows:
        raise InputError(
            f"{flag} {path} holds {old_rows} rows, this run made {new_rows}: the old file is kept. Delete it or "
            f"choose another {flag} to write the smaller result"
        )
