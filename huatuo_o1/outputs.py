"""Where results go: checked before the work, so that nothing is lost or overwritten by surprise.

- check_outputs: no output is an input (the same file or folder, resolved; a file inside an input folder;
  a checkpoint the run would rotate away), and every output can be written.
- keep_larger_result: a run never replaces a result file with one of fewer rows.
- The data stages' three files (check_output_paths, then write_outputs): the main output, every item's record and
  a run summary (summarise, public_settings), written only when some item succeeded and never with fewer rows.
"""

import os
import tempfile
from collections import Counter
from dataclasses import asdict

from huatuo_o1.records import InputError, read_json, write_json_atomic


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
        data, why = read_json(path, jsonl=False), ""  # we write JSON, whatever the name ends with
    except InputError as error:
        data, why = None, f" ({error})"
    rows = count_rows(data)
    if rows is None or lists_only and not isinstance(data, list):
        kind = "a JSON list of rows" if lists_only else "a result of this script"
        raise InputError(f"{flag} {path} exists and is not {kind}{why}: not replaced; use another {flag}")
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


# ---- the data stages' outputs -------------------------------------------------------------------


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


def check_output_paths(job) -> None:
    """Before the work (job: the stage's JobArguments): the output files and the progress folder can be written, and
    none of them is the input.

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
