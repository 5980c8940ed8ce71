"""Where results go: checked before the work, so that nothing is lost or overwritten by surprise.

- check_outputs: no output is an input (the same file or folder, resolved; a file inside an input folder;
  a checkpoint the run would rotate away), and every output can be written.
- keep_larger_result: a run never replaces a result file with one of fewer rows.
"""

import json
import os
import tempfile

from huatuo_o1.records import InputError


def same_path(a: str, b: str) -> bool:
    """The same file or folder: one path resolved (links, '..'), or one file under two names."""
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def check_writable(path: str, flag: str, folder: bool = False) -> None:
    """Stop now when `path` (a file, or a folder with folder=True) could not be written later.

    Creates nothing: a temporary file is made and removed in the nearest folder that exists (os.access
    would answer yes to root on a read-only folder).
    """
    kind = "folder" if folder else "file"
    if os.path.exists(path) and os.path.isdir(path) != folder:
        other = "folder" if os.path.isdir(path) else "file"
        raise InputError(f"{flag} {path}: is a {other}, expected a {kind} to write")
    existing = os.path.abspath(path if folder else os.path.dirname(os.path.abspath(path)))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise InputError(f"{flag} {path}: cannot be created, {existing} is a file")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise InputError(f"{flag} {path}: cannot write in {existing} ({e.strerror or e})") from None


def check_outputs(
    outputs: list[tuple[str, str, bool]], inputs: dict[str, str | None], replaced_inside: str = ""
) -> None:
    """Before the work: every output (flag, path, is_folder) can be written and none is an input.

    inputs: {flag: path}; None, hub ids and other paths that do not exist here are skipped. An output
    file that would replace an existing file inside an input folder is refused. With replaced_inside
    (e.g. "checkpoint-"), an input inside an output folder's entries of that name is refused too: the
    run replaces or rotates them away.
    """
    local_inputs = {flag: path for flag, path in inputs.items() if path and os.path.exists(path)}
    for flag, path, folder in outputs:
        check_writable(path, flag, folder)
        for input_flag, input_path in local_inputs.items():
            named = f"{input_flag} {input_path}"
            real_input = os.path.realpath(input_path.rstrip("/"))
            if same_path(input_path, path):
                kind = "folder" if os.path.isdir(input_path) else "file"
                raise InputError(f"{flag} {path} would overwrite {named} (the same {kind}): pass another {flag}")
            if folder and replaced_inside:
                parent, name = os.path.split(real_input)
                if same_path(parent, path) and name.startswith(replaced_inside):
                    raise InputError(
                        f"{flag} {path} would rotate away {named}, which lies inside it: pass another {flag}"
                    )
            inside = os.path.isdir(real_input) and os.path.realpath(path).startswith(real_input + os.sep)
            if not folder and inside and os.path.exists(path):
                raise InputError(f"{flag} {path} would replace a file inside {named}: pass another {flag}")


def count_rows(data: object) -> int | None:
    """Rows of a result: the length of a list, or the total length of a dict of lists; None for other shapes."""
    if isinstance(data, list):
        return len(data)
    if isinstance(data, dict) and all(isinstance(rows, list) for rows in data.values()):
        return sum(len(rows) for rows in data.values())
    return None


def rows_in(path: str, flag: str, lists_only: bool = False) -> int | None:
    """Rows of the result an earlier run left at path (None: there is none). InputError when the file is no result
    of this kind, a JSON list of rows (unless lists_only, also a dict of such lists): a mistyped path is never
    overwritten."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = None
    rows = count_rows(data)
    if rows is None or lists_only and not isinstance(data, list):
        kind = "a JSON list of rows" if lists_only else "a result of this script"
        raise InputError(f"{flag} {path} exists and is not {kind}: not replaced; use another {flag}")
    return rows


def keep_larger_result(path: str, new_rows: int, flag: str) -> None:
    """InputError, leaving path as it is, when it holds a result with more rows than the new one, or something
    that is not a result of this kind at all."""
    old_rows = rows_in(path, flag)
    if old_rows is None:
        return
    if new_rows < old_rows:
        raise InputError(
            f"{flag} {path} holds {old_rows} rows, this run made {new_rows}: the old file is kept. Delete it or "
            f"choose another {flag} to write the smaller result"
        )
