"""The paper's data recipe (section 4.1, Algorithm 1) between construct and search/RL: decontaminate,
de-duplicate, split into disjoint search (+SFT) and RL parts, add closed-set and general-domain items.

prepare_training_data.py wires these to its flags and files. Every input item ends in exactly one part
or dropped with its reason (`contaminated`, `duplicate`, `empty`, `not_selected`); `summarise` counts them.
"""

import hashlib
import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction

from huatuo_o1.construct import option_line, question_with_options
from huatuo_o1.decontamination import EvalIndex, nfkc_lower_single_spaced, training_texts
from huatuo_o1.records import (
    ANSWER_IDX,
    CLOSED_SET,
    DATA_TYPE,
    GROUND_TRUTH,
    OPEN_QUESTION,
    OPTIONS,
    ORIGIN,
    QUESTION,
    SFT_QUESTION,
    SOURCE,
    InputError,
    load_records,
)

# Every field of the pipeline's formats that can carry a benchmark's text: verifiable problems,
# exam items (question, option texts) and SFT rows (Question).
CHECK_FIELDS = (OPEN_QUESTION, GROUND_TRUTH, QUESTION, OPTIONS, SFT_QUESTION)
PARTS = ("search", "rl")
SIZES = ("search", "rl", "closed_set", "general")  # each the flag --<name>_size
EXAMPLES_PER_BENCHMARK = 5
NORMALISATION = "NFKC, lower case, whitespace runs -> one space (none beside a CJK character), stripped"


@dataclass
class Item:
    row: dict
    origin: str  # "<input name>#<row index>"
    source: str
    pool: str  # "medical" or "general"
    reason: str = ""  # why it was dropped
    detail: dict = field(default_factory=dict)


# ---- sizes -------------------------------------------------------------------------------------


def parse_size(text: str, flag: str) -> int | float:
    """A count ("20000", an int) or, with a decimal point, a share ("0.5", a float)."""
    try:
        value = float(text) if "." in text else int(text)
    except ValueError:
        raise InputError(f"{flag} {text!r}: expected a count (20000) or a share with a decimal point (0.5)") from None
    if value < 0 or (isinstance(value, float) and value > 1):
        raise InputError(f"{flag} {text!r}: a count must be >= 0, a share between 0.0 and 1.0")
    return value


def resolve(size: int | float, pool: int) -> int:
    return round(size * pool) if isinstance(size, float) else size


def part_counts(search: int | float, rl: int | float, pool: int, seed: int) -> tuple[int, int]:
    """The search and RL counts of `pool` clean items.

    Two shares are split together with what is left over, by largest remainder (ties drawn with the seed):
    shares that add up to 1 place every item (0.5 + 0.5 of 5 items: 3 + 2, never 2 + 2 and one left out),
    and each count is its share of the pool rounded up or down. A count is taken as given.
    """
    if not (isinstance(search, float) and isinstance(rl, float)):
        return resolve(search, pool), resolve(rl, pool)
    shares = [Fraction(repr(search)), Fraction(repr(rl))]  # the decimal as typed, not its binary approximation
    if sum(shares) > 1:
        return resolve(search, pool), resolve(rl, pool)  # more than everything: the caller says so
    shares.append(1 - sum(shares))  # what the user left out
    quotas = [share * pool for share in shares]
    counts = [int(quota) for quota in quotas]
    ties = random.Random(f"part sizes {seed}")  # its own stream: the split's draws stay as they were
    order = sorted(range(3), key=lambda i: (-(quotas[i] - counts[i]), ties.random()))
    for i in order[: pool - sum(counts)]:
        counts[i] += 1
    return counts[0], counts[1]


def stratified_counts(sizes: dict, total: int, capacity: dict | None = None) -> dict:
    """Split `total` over the sources in proportion to `sizes` (largest remainder, ties by name), within capacity."""
    capacity = dict(sizes) if capacity is None else capacity
    pool = sum(sizes.values())
    if total > sum(capacity.values()):
        raise ValueError(f"cannot take {total} items from {sum(capacity.values())}")
    counts = {s: min(total * n // pool, capacity[s]) for s, n in sizes.items()} if pool else {}
    remainder = {s: total * n % pool for s, n in sizes.items()}
    left = total - sum(counts.values())
    for s in sorted(sizes, key=lambda s: (-remainder[s], s)):
        if left and remainder[s] and counts[s] < capacity[s]:
            counts[s] += 1
            left -= 1
    for s in sorted(sizes):  # only when capacities bind: anywhere with room
        take = min(left, capacity[s] - counts[s])
        counts[s] += take
        left -= take
    return counts


# ---- load --------------------------------------------------------------------------------------


def input_name(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0] if os.path.exists(path) else path


def load_items(paths: list[str], pool: str, required: tuple, check_fields: list[str]) -> list[Item]:
    """The rows of every input file as Items; the source is a row's `source` field, else the input's name."""
    items = []
    for path in paths:
        for index, row in enumerate(load_records(path, required_fields=required)):
            where = f"{path}: row {index}"
            for key in required:
                if not isinstance(row[key], str):
                    raise InputError(f"{where}: '{key}' is a {type(row[key]).__name__}, expected text")
            if not required and not any(key in row for key in check_fields):
                raise InputError(f"{where} has none of the fields {', '.join(map(repr, check_fields))}")
            source = row.get(SOURCE) if isinstance(row.get(SOURCE), str) and row.get(SOURCE) else input_name(path)
            items.append(Item(row, f"{input_name(path)}#{index}", source, pool))
    return items


# ---- decontaminate, de-duplicate ---------------------------------------------------------------


def decontaminate(items: list[Item], index: EvalIndex, check_fields: list[str]) -> dict:
    """Mark contaminated items (reason, detail) and return the report: counts and examples per benchmark."""
    started = time.perf_counter()
    found = index.check(training_texts([item.row for item in items], check_fields, index.window))
    per_benchmark = {source: {"items": 0, "examples": []} for source in index.sources}
    by_field = Counter()
    for number in sorted(found):
        item, hit = items[number], found[number]
        item.reason = "contaminated"
        item.detail = {
            "benchmarks": sorted(hit.sources),
            "overlaps": [
                {"field": o.field, "eval_item": f"{o.eval_source}/{o.eval_item}", "eval_field": o.eval_field,
                 "text": o.text}
                for o in hit.overlaps
            ],
        }  # fmt: skip
        by_field.update({o.field.split(".")[0] for o in hit.overlaps})
        for source in hit.sources:
            entry = per_benchmark[source]
            entry["items"] += 1
            if len(entry["examples"]) < EXAMPLES_PER_BENCHMARK:
                overlap = next(o for o in hit.overlaps if o.eval_source == source)
                entry["examples"].append(
                    {"origin": item.origin, "field": overlap.field, "eval_item": f"{source}/{overlap.eval_item}",
                     "eval_field": overlap.eval_field, "overlap": overlap.text}
                )  # fmt: skip
    return {
        "rule": {"window": index.window, "normalisation": NORMALISATION, "fields": list(check_fields),
                 "stock_phrase_threshold": index.stock_phrase_threshold},
        "eval_texts_of_window_length": len(index.texts),
        "eval_windows": index.windows_indexed,
        "stock_windows_ignored": index.stock_windows,
        "checked_items": len(items),
        "contaminated_items": len(found),
        "contaminated_by_field": dict(sorted(by_field.items())),
        "per_benchmark": per_benchmark,
        "seconds": round(time.perf_counter() - started, 3),
    }  # fmt: skip


def has_options(row: dict) -> bool:
    """The row carries its exam question, options and the right option's letter (closed-set material)."""
    return (
        isinstance(row.get(QUESTION), str)
        and bool(row[QUESTION].strip())
        and isinstance(row.get(OPTIONS), dict)
        and bool(row[OPTIONS])
        and row.get(ANSWER_IDX) in row[OPTIONS]
    )


def closed_set_row(row: dict) -> dict:
    """The item as a closed-set problem: its question with the option list, answered by the right option."""
    letter = row[ANSWER_IDX]
    return {**row, OPEN_QUESTION: question_with_options(row), GROUND_TRUTH: option_line(letter, row[OPTIONS][letter])}


def drop_empty_and_duplicates(items: list[Item]) -> None:
    """Mark items with an empty question or answer, and items repeating an earlier one: the same normalised
    open-ended question, or the same normalised exam question with the same options."""
    seen = {}
    for item in items:
        if item.reason:
            continue
        question, answer = item.row[OPEN_QUESTION], item.row[GROUND_TRUTH]
        if not question.strip() or not answer.strip():
            item.reason = "empty"
            item.detail = {"empty": [k for k in (OPEN_QUESTION, GROUND_TRUTH) if not item.row[k].strip()]}
            continue
        keys = [("open-ended", nfkc_lower_single_spaced(question))]
        if has_options(item.row):
            options = tuple(nfkc_lower_single_spaced(str(text)) for _, text in sorted(item.row[OPTIONS].items()))
            keys.append(("multiple-choice", nfkc_lower_single_spaced(item.row[QUESTION]), options))
        first = next((seen[k] for k in keys if k in seen), None)
        if first is not None:
            item.reason = "duplicate"
            item.detail = {"duplicate_of": first}
            continue
        for k in keys:
            seen[k] = item.origin


# ---- split -------------------------------------------------------------------------------------


def _content_key(item: Item) -> str:
    return hashlib.sha1(json.dumps(item.row, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def by_source_shuffled(items: list[Item], rng: random.Random) -> dict:
    """{source: items}, each list in a seeded order that does not depend on the order of the input rows."""
    groups = {}
    for item in sorted(items, key=_content_key):
        groups.setdefault(item.source, []).append(item)
    for source in sorted(groups):
        rng.shuffle(groups[source])
    return {source: groups[source] for source in sorted(groups)}


def take(groups: dict, total: int) -> tuple[list[Item], dict]:
    """Take `total` items stratified by source from the front of each group; returns (taken, rest)."""
    counts = stratified_counts({s: len(g) for s, g in groups.items()}, total)
    taken = [item for s, g in groups.items() for item in g[: counts[s]]]
    rest = {s: g[counts[s] :] for s, g in groups.items()}
    return taken, rest


def output_row(item: Item, data_type: str, row: dict | None = None) -> dict:
    return {**(row or item.row), SOURCE: item.source, DATA_TYPE: data_type, ORIGIN: item.origin}


def split_medical(clean: list[Item], search_n: int, rl_n: int, rng: random.Random) -> tuple[dict, dict]:
    """{part: {source: items}} and the items of neither part, {source: items}: seeded, stratified by source."""
    groups = by_source_shuffled(clean, rng)
    sizes = {s: len(g) for s, g in groups.items()}
    search_counts = stratified_counts(sizes, search_n)
    rl_counts = stratified_counts(sizes, rl_n, {s: sizes[s] - search_counts[s] for s in sizes})
    members = {
        "search": {s: g[: search_counts[s]] for s, g in groups.items()},
        "rl": {s: g[search_counts[s] : search_counts[s] + rl_counts[s]] for s, g in groups.items()},
    }
    unused = {s: g[search_counts[s] + rl_counts[s] :] for s, g in groups.items()}
    return members, unused


def split(medical: list[Item], general: list[Item], sizes: dict, args, rng: random.Random) -> tuple[dict, dict]:
    """The two parts as lists of rows, and the sizes asked and got. Items left out get reason not_selected.

    `sizes` holds parse_size's values; `args` the flags (the sizes as typed, closed_set_part,
    closed_set_from, general_part)."""
    clean = [item for item in medical if not item.reason]
    n = len(clean)
    search_n, rl_n = part_counts(sizes["search"], sizes["rl"], n, args.seed)
    if search_n + rl_n > n:
        raise InputError(
            f"--search_size {args.search_size} + --rl_size {args.rl_size} ask for {search_n + rl_n} items, but {n} "
            "medical items are left after decontamination and de-duplication (give shares such as 0.5)"
        )
    members, unused = split_medical(clean, search_n, rl_n, rng)
    parts = {part: [output_row(item, "medical") for g in members[part].values() for item in g] for part in PARTS}

    # Closed-set items: copies from the receiving part, or the items neither part took.
    closed_n = resolve(sizes["closed_set"], n)
    pool = members[args.closed_set_part] if args.closed_set_from == "part" else unused
    eligible = {s: [item for item in g if has_options(item.row)] for s, g in pool.items()}
    available = sum(len(g) for g in eligible.values())
    if closed_n > available:
        where = (
            f"the {args.closed_set_part} part"
            if args.closed_set_from == "part"
            else "the items left out of both parts"
        )
        raise InputError(
            f"--closed_set_size {args.closed_set_size} asks for {closed_n} closed-set items, but only {available} "
            f"items of {where} carry '{QUESTION}', '{OPTIONS}' and an '{ANSWER_IDX}' among them "
            "(lower it, or 0 for none)"
        )
    closed, _ = take(eligible, closed_n)
    parts[args.closed_set_part] += [output_row(item, CLOSED_SET, closed_set_row(item.row)) for item in closed]
    in_closed_set = {id(item) for item in closed}
    for item in (item for g in unused.values() for item in g if id(item) not in in_closed_set):
        item.reason = "not_selected"

    general_clean = [item for item in general if not item.reason]
    general_n = resolve(sizes["general"], len(general_clean))
    if general_n > len(general_clean):
        raise InputError(
            f"--general_size {args.general_size} asks for {general_n} general-domain items, "
            f"but {len(general_clean)} are left after decontamination and de-duplication"
        )
    chosen, rest = take(by_source_shuffled(general_clean, rng), general_n)
    parts[args.general_part] += [output_row(item, "general") for item in chosen]
    for item in (item for g in rest.values() for item in g):
        item.reason = "not_selected"

    for part in PARTS:
        rng.shuffle(parts[part])  # sources and kinds mixed: any prefix (--limit_num) is a fair sample
    got = {"search": search_n, "rl": rl_n, "closed_set": len(closed), "general": len(chosen)}
    report = {name: {"asked": getattr(args, f"{name}_size"), "got": got[name]} for name in got}
    left_out = n - search_n - rl_n
    report["medical_left_out"] = {
        "items": left_out,
        "why": f"--search_size {args.search_size} + --rl_size {args.rl_size} ask for {search_n + rl_n} of the {n} "
        "clean medical items"
        if left_out
        else "none: the two parts hold every clean medical item",
    }
    report["closed_set"].update(part=args.closed_set_part, **{"from": args.closed_set_from})
    report["general"]["part"] = args.general_part
    return parts, report


# ---- report ------------------------------------------------------------------------------------


def dropped_rows(items: list[Item]) -> list[dict]:
    return [
        {"origin": item.origin, "source": item.source, "pool": item.pool, "reason": item.reason, **item.detail,
         "row": item.row}
        for item in items
        if item.reason
    ]  # fmt: skip


def summarise(inputs: dict, seed: int, items: list[Item], parts: dict, size_report: dict, report, outputs) -> dict:
    """Rows per part, dropped by reason and source, and the accounting: input items = search + RL + dropped."""
    dropped = [item for item in items if item.reason]
    placed_origins = {part: {row[ORIGIN] for row in rows} for part, rows in parts.items()}
    return {
        "inputs": inputs,
        "seed": seed,
        "sizes": size_report,
        "parts": {
            part: {
                "rows": len(rows),
                "by_data_type": dict(Counter(r[DATA_TYPE] for r in rows)),
                "by_source": dict(sorted(Counter(r[SOURCE] for r in rows).items())),
            }
            for part, rows in parts.items()
        },
        "dropped": {
            "items": len(dropped),
            "by_reason": dict(Counter(item.reason for item in dropped)),
            "by_source": dict(sorted(Counter(item.source for item in dropped).items())),
        },
        "accounting": {
            "input_items": len(items),
            **{f"in_{part}": len(placed_origins[part]) for part in PARTS},
            "dropped": len(dropped),
        },
        "decontamination": "skipped (--eval_file none)"
        if report is None
        else {
            "contaminated_items": report["contaminated_items"],
            "per_benchmark": {s: v["items"] for s, v in report["per_benchmark"].items()},
        },
        "outputs": outputs,
    }
