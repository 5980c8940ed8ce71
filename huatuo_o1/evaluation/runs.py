"""Repeated runs of one evaluation: the runs a command asks for, each run's own GPQA option order, and the
files that tie the runs of a set together.

A run is one full pass of evaluation/eval.py with one value of each per-run setting (RUN_KEYS: the server's
seed and the seed of GPQA's option order). Each run keeps the files a single run with those flags writes
(<name>.json and <name>_report.*, <name> keyed by its settings, resumable on its own), so a run is shared by
every set that holds it. A set of several runs adds <set>_runs.json, the index: the settings the runs share,
then each run's per-run settings, its results file and its time. A further per-run setting (a thinking
budget, say) is one more key in RUN_KEYS: its runs get their own names through the settings, and the
index lists them with it.
"""

import dataclasses
import os
import random
from dataclasses import dataclass

from huatuo_o1.evaluation.client import EvalArguments, output_stem
from huatuo_o1.records import InputError, read_json, write_json_atomic

RUN_KEYS = ("seed", "gpqa_option_seed")
# GPQA's questions come with the correct answer first: the options have no order of their own, so each
# run may draw one (prepare_eval_data.py draws the eval file's with its --seed).
SHUFFLED_SOURCE_PREFIX = "GPQA"
INDEX_SUFFIX = "_runs.json"
RECORD_KEYS = ("output", "options", "answer_idx")


def run_arguments(args: EvalArguments) -> list[EvalArguments]:
    """One EvalArguments per run: --seeds as given, else --n_runs seeds counted up from --seed. With several
    runs each run shuffles GPQA's options with its own seed, unless --gpqa_option_seed fixes one order."""
    seeds = args.seeds if args.seeds is not None else [args.seed + offset for offset in range(args.n_runs)]
    several = len(seeds) > 1
    return [
        dataclasses.replace(
            args,
            seed=seed,
            seeds=None,
            n_runs=1,
            gpqa_option_seed=seed if several and args.gpqa_option_seed is None else args.gpqa_option_seed,
        )
        for seed in seeds
    ]


def run_key(settings: dict) -> dict:
    """A run's per-run settings, from its settings (absent: None)."""
    return {key: settings.get(key) for key in RUN_KEYS}


def shuffle_options(item: dict, seed: int) -> dict:
    """The item with its options in an order drawn from the seed and the item's id (so an item's order does
    not depend on which other items are asked); the letters stay, the answer letter follows its text."""
    letters = list(item["options"])
    order = list(range(len(letters)))
    random.Random(f"{seed}/{item['id']}").shuffle(order)
    options = {letter: item["options"][letters[index]] for letter, index in zip(letters, order)}
    answer = letters[order.index(letters.index(item["answer_idx"]))]
    shuffled = {**item, "options": options, "answer_idx": answer}
    if "answer" in item:
        shuffled["answer"] = options[answer]
    return shuffled


def items_for_run(items: list[dict], args: EvalArguments) -> list[dict]:
    """The items as this run asks them: GPQA's options reshuffled when the run has a GPQA option seed."""
    if args.gpqa_option_seed is None:
        return items
    return [
        shuffle_options(item, args.gpqa_option_seed) if item["source"].startswith(SHUFFLED_SOURCE_PREFIX) else item
        for item in items
    ]


def shared_settings(settings: dict) -> dict:
    return {key: value for key, value in settings.items() if key not in RUN_KEYS}


def set_stem(args: EvalArguments, run_settings: list[dict]) -> str:
    """<model folder>_<task>_<eval file>[_strict]_<key>_runs, the key over the shared settings and the runs'
    per-run settings: the same runs asked again find the same set, other seeds make another."""
    return (
        output_stem(args, {**shared_settings(run_settings[0]), "runs": [run_key(s) for s in run_settings]}) + "_runs"
    )


def write_index(path: str, run_settings: list[dict], results_paths: list[str], seconds: list[float]) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    write_json_atomic(
        path,
        {
            "settings": shared_settings(run_settings[0]),
            "runs": [
                {
                    **run_key(settings),
                    "results": os.path.relpath(os.path.abspath(results), folder),
                    "seconds": round(t, 1),
                }
                for settings, results, t in zip(run_settings, results_paths, seconds)
            ],
        },
    )


@dataclass
class Run:
    """One run's results and what is known of its settings (from its report; None where it has none)."""

    results_path: str
    settings: dict | None
    records: list[dict]

    @property
    def key(self) -> dict:
        return run_key(self.settings or {})


@dataclass
class RunSet:
    """The runs behind a results file (one run) or a set's index (several)."""

    path: str
    runs: list[Run]

    @property
    def settings(self) -> dict | None:
        return self.runs[0].settings

    def keys(self) -> list[dict]:
        return [run.key for run in self.runs]


def read_run_set(path: str) -> RunSet:
    """A results file of eval.py, or a set's <set>_runs.json with every results file it lists."""
    if not path.endswith(INDEX_SUFFIX):
        return RunSet(path, [Run(path, report_settings(path), read_results(path))])
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file (evaluation/eval.py --seeds ... writes <set>{INDEX_SUFFIX})")
    index = read_json(path)
    if not isinstance(index, dict) or not isinstance(index.get("runs"), list) or not index["runs"]:
        raise InputError(f"{path}: not a runs index of eval.py (a dict with a non-empty 'runs' list)")
    folder = os.path.dirname(os.path.abspath(path))
    runs = []
    for number, entry in enumerate(index["runs"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("results"), str):
            raise InputError(f"{path}: run {number} names no 'results' file")
        results = os.path.join(folder, entry["results"])
        runs.append(Run(results, {**index.get("settings", {}), **run_key(entry)}, read_results(results)))
    return RunSet(path, runs)


def report_path(results_path: str) -> str:
    return os.path.splitext(results_path)[0] + "_report.json"


def report_settings(results_path: str) -> dict | None:
    """The settings in the report beside a results file, or None when there is no report (or it has none)."""
    path = report_path(results_path)
    if not os.path.exists(path):
        return None
    try:
        report = read_json(path)
    except InputError as error:
        raise InputError(f"{error}; move it away for a new report") from None
    if not isinstance(report, dict):
        raise InputError(f"{path}: not a report of eval.py (a JSON object); move it away for a new report")
    settings = report.get("settings")
    return settings if isinstance(settings, dict) else None


def read_results(path: str) -> list[dict]:
    """The records of an eval.py results file; InputError (one line: the file, the row, what is wrong) otherwise."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file (give the <name>.json that evaluation/eval.py wrote)")
    results = read_json(path)
    if not isinstance(results, list) or not results:
        raise InputError(f"{path}: a results file of eval.py is a non-empty JSON list of records; this is not")
    for index, record in enumerate(results):
        missing = [key for key in RECORD_KEYS if not isinstance(record, dict) or key not in record]
        if missing:
            raise InputError(f"{path}: record {index} lacks {', '.join(repr(k) for k in missing)} (eval.py writes it)")
        output = record["output"]
        if not isinstance(record["options"], dict) or not (output is None or isinstance(output, str)):
            raise InputError(f"{path}: record {index}: 'options' must be a dict and 'output' text")
    return results


def question_ids(records: list[dict]) -> list[str]:
    """Each record's id: eval.py's, or <source>/<position in its source> as eval.py numbers them (a results
    file of the original code has none)."""
    positions, ids = {}, []
    for record in records:
        source = record.get("source", "eval")
        ids.append(record.get("id") or f"{source}/{positions.get(source, 0)}")
        positions[source] = positions.get(source, 0) + 1
    return ids


def describe_runs(run_set: RunSet) -> str:
    """'1 run (seed 42)', '3 runs (seeds 1, 2, 3; GPQA orders 1, 2, 3)'."""
    keys = run_set.keys()
    seeds = ", ".join("unknown (no report beside it)" if k["seed"] is None else str(k["seed"]) for k in keys)
    text = f"{len(keys)} run{'s' * (len(keys) > 1)} (seed{'s' * (len(keys) > 1)} {seeds}"
    orders = [k["gpqa_option_seed"] for k in keys]
    if any(order is not None for order in orders):
        text += "; GPQA orders " + ", ".join("the file's" if o is None else str(o) for o in orders)
    return text + ")"


def check_comparable(a: RunSet, b: RunSet) -> None:
    """Two sets a paired comparison may take: the same runs (per-run settings) over the same questions; one
    line naming what differs otherwise."""
    if a.keys() != b.keys():
        raise InputError(
            f"not the same runs: A ({a.path}) has {describe_runs(a)}, B ({b.path}) has {describe_runs(b)}; "
            "compare results of the same seeds"
        )
    digests = [s.get("eval_file_sha256") for s in (a.settings or {}, b.settings or {})]
    if None not in digests and digests[0] != digests[1]:
        raise InputError(
            f"not the same eval file: A ({a.path}) was asked from one with sha256 {digests[0]}, "
            f"B ({b.path}) from one with {digests[1]}"
        )
    first = a.runs[0]
    questions = dict(zip(question_ids(first.records), (r.get("question") for r in first.records)))
    for name, run_set in (("A", a), ("B", b)):
        for run in run_set.runs:
            theirs = dict(zip(question_ids(run.records), (r.get("question") for r in run.records)))
            only_first, only_theirs = sorted(questions.keys() - theirs), sorted(theirs.keys() - questions)
            if only_first or only_theirs:
                example = (only_first or only_theirs)[0]
                raise InputError(
                    f"not the same questions: {first.results_path} has {len(only_first)} that {run.results_path} "
                    f"({name}) lacks, it has {len(only_theirs)} the other lacks (e.g. {example}); "
                    "compare runs of the same eval file and --max_items_per_source"
                )
            differing = [qid for qid in questions if questions[qid] != theirs[qid]]
            if differing:
                raise InputError(
                    f"not the same eval file: question {differing[0]} differs between {first.results_path} and "
                    f"{run.results_path} ({name})"
                )
