"""Manifests: what a folder we wrote (a checkpoint, a trained model) held when it was complete, to check it before
it is trusted.

A manifest (manifest.json, written last, atomically) lists each file's path relative to the folder, its size and
its SHA-256, and its part: "model" (what loading the model reads) or "run" (what resuming or "nothing to do" reads:
trainer_state.json, training_state/, a summary). `problems` compares a folder with its manifest: sizes always,
digests in "full" mode; a loader checks the model part only. A folder without a manifest (written before
manifests, or by someone else) has no problems: it loads as it always did.

The digest work can be spread over the processes of a launch (`share`): each process reads its share of the
bytes, the caller gathers what they found (huatuo_o1/training.py does).

- check_model_folder: the check every loader of a local model folder makes (once per process and state of the
  files), HUATUO_VERIFY_CHECKPOINTS=sizes skipping the digests.
"""

import hashlib
import os
from collections.abc import Iterable, Sequence

from huatuo_o1.records import InputError, read_json, write_json_atomic

MANIFEST = "manifest.json"
FORMAT = "huatuo_o1 manifest 1"
# "full": sizes and SHA-256 digests; "sizes": sizes only (for huge folders: docs/design.md has the measured cost).
VERIFY_MODES = ("full", "sizes")
VERIFY_VARIABLE = "HUATUO_VERIFY_CHECKPOINTS"
READ_SIZE = 1 << 20
# The parts of a folder's files: what loading the model reads; what resuming (or finding the run finished) reads.
MODEL, RUN = "model", "run"

_checked_folders: dict[str, tuple] = {}  # folder -> the state of its files when check_model_folder found it sound


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's bytes, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(READ_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def verify_mode(requested: str | None = None) -> str:
    """The verification mode: the flag's when given, else HUATUO_VERIFY_CHECKPOINTS's, else "full"."""
    mode = requested or os.environ.get(VERIFY_VARIABLE) or "full"
    if mode not in VERIFY_MODES:
        source = "--verify_checkpoints" if requested else VERIFY_VARIABLE
        raise InputError(f"{source} {mode!r}: expected one of {', '.join(VERIFY_MODES)}")
    return mode


def listing(folder: str) -> list[tuple[str, int]]:
    """(path relative to folder, size) of every file under it, sorted; the manifest and temporary files left out."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            if name == MANIFEST or name.startswith(".tmp-"):
                continue
            path = os.path.join(root, name)
            found.append((os.path.relpath(path, folder), os.path.getsize(path)))
    return sorted(found)


def my_share(sized: Sequence[tuple[str, int]], share: tuple[int, int]) -> list[str]:
    """The paths process share[0] of share[1] reads: the largest first, each to the process with the fewest bytes
    so far (every process computes the same split from the same list)."""
    index, count = share
    if count <= 1:
        return [path for path, _ in sized]
    loads, mine = [0] * count, []
    for path, size in sorted(sized, key=lambda item: (-item[1], item[0])):
        target = loads.index(min(loads))
        loads[target] += size
        if target == index:
            mine.append(path)
    return mine


def part_of(path: str, run_parts: Iterable[str]) -> str:
    """RUN for a path that is (or lies under) one of run_parts, else MODEL."""
    return RUN if any(path == p or path.startswith(p.rstrip("/") + "/") for p in run_parts) else MODEL


def describe(folder: str, sized: Sequence[tuple[str, int]], run_parts: Iterable[str] = (), share=(0, 1)) -> list:
    """Manifest entries {path, size, sha256, part} of this process's share of `sized` (listing's pairs)."""
    run_parts = tuple(run_parts)
    sizes = dict(sized)
    return [
        {
            "path": path,
            "size": sizes[path],
            "sha256": file_sha256(os.path.join(folder, path)),
            "part": part_of(path, run_parts),
        }
        for path in my_share(sized, share)
    ]


def write(folder: str, entries: Iterable[dict], removable: Iterable[str] = ()) -> None:
    """folder/manifest.json listing entries (describe's, from every process), written atomically.

    removable: sub-folders whose removal as a whole leaves the rest sound (an older checkpoint's training_state,
    removed when it rotates): problems() passes over their files once they are gone."""
    write_json_atomic(
        os.path.join(folder, MANIFEST),
        {
            "format": FORMAT,
            "digest": "sha256",
            "removable": sorted(removable),
            "files": sorted(entries, key=lambda entry: entry["path"]),
        },
    )


def add(folder: str, paths: Iterable[str], part: str = RUN) -> None:
    """Add files written after the manifest (a summary) to it, rewritten atomically: the manifest stays last."""
    manifest = read(folder)
    if manifest is None:
        return
    listed = {entry["path"]: entry for entry in manifest["files"]}
    for path in paths:
        full = os.path.join(folder, path)
        listed[path] = {"path": path, "size": os.path.getsize(full), "sha256": file_sha256(full), "part": part}
    write(folder, listed.values(), manifest.get("removable", ()))


def read(folder: str) -> dict | None:
    """folder's manifest, or None where it has none; InputError naming the file when it is no manifest."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        return None
    manifest = read_json(path)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, list) or not all(
        isinstance(entry, dict) and isinstance(entry.get("path"), str) and isinstance(entry.get("size"), int)
        for entry in files
    ):
        raise InputError(f"{path}: not a manifest (a 'files' list of {{path, size, sha256}} objects)")
    return manifest


def problems(folder: str, mode: str = "full", model_only: bool = False, share=(0, 1)) -> list[str]:
    """What in folder does not match its manifest, one line each naming the file ([] where it matches, or where
    there is no manifest). model_only: only the files loading the model reads. share: check only this process's
    share of the files (the caller gathers every process's lines); a manifest that cannot be read is everyone's."""
    try:
        manifest = read(folder)
    except InputError as error:
        return [str(error)]
    if manifest is None:
        return []
    removed = {name for name in manifest.get("removable", []) if not os.path.isdir(os.path.join(folder, name))}
    entries = {
        entry["path"]: entry
        for entry in manifest["files"]
        if not (model_only and entry.get("part") == RUN) and entry["path"].split("/")[0] not in removed
    }
    found = []
    for path in my_share([(path, entry["size"]) for path, entry in entries.items()], share):
        entry, full = entries[path], os.path.join(folder, path)
        if not os.path.isfile(full):
            reason = "missing"
        elif os.path.getsize(full) != entry["size"]:
            reason = f"{os.path.getsize(full)} bytes, the manifest says {entry['size']}"
        elif mode == "full" and file_sha256(full) != entry.get("sha256"):
            reason = "its sha256 differs"
        else:
            continue
        found.append(f"{full} does not match its manifest ({reason})")
    return sorted(found)


def one_line(found: Sequence[str]) -> str:
    """The first problem, and how many more there are."""
    return found[0] + (f" (and {len(found) - 1} more file(s))" if len(found) > 1 else "")


def _files_state(folder: str) -> tuple:
    """What changes when any file of the folder's manifest changes: its files' sizes and modification times."""
    manifest_path = os.path.join(folder, MANIFEST)
    state = [(MANIFEST, os.stat(manifest_path).st_mtime_ns)]
    for entry in read(folder)["files"]:
        try:
            stat = os.stat(os.path.join(folder, entry["path"]))
            state.append((entry["path"], stat.st_size, stat.st_mtime_ns))
        except OSError:
            state.append((entry["path"], None))
    return tuple(state)


def check_model_folder(folder: str, what: str, mode: str | None = None) -> None:
    """Before a model loads from a local folder with a manifest: its model files match it, else InputError naming
    the file. Checked once per process while the files stay as they were. mode: "full" or "sizes" (None: from
    HUATUO_VERIFY_CHECKPOINTS, else full). what: how the message names the folder (the flag)."""
    if not os.path.isfile(os.path.join(folder, MANIFEST)):
        return
    key = os.path.realpath(folder)
    try:
        state = _files_state(folder)
    except InputError:
        state = None
    if state is not None and _checked_folders.get(key) == state:
        return
    found = problems(folder, verify_mode(mode), model_only=True)
    if found:
        raise InputError(
            f"{what} {folder}: {one_line(found)}; the folder is damaged (a copy cut short, a full disk): copy or "
            "write it again"
        )
    _checked_folders[key] = state
