"""Compare two models question by question on the same eval file and the same runs.

Usage:
    python evaluation/compare.py A_results B_results [--view honest_first] [--resamples 10000] [--seed 0] \
        [--output PREFIX]
A_results, B_results: a results file of evaluation/eval.py (<name>.json, one run) or the index of a set of
runs (<set>_runs.json, eval.py --seeds ...); both must hold the same runs (seeds, GPQA option orders) of
the same questions, or the comparison is refused with one line naming what differs.

Per source and averaged over sources: each model's accuracy, B - A with a 95% paired bootstrap interval
(questions resampled, seeded), the questions each got that the other missed, McNemar's exact test. With
several runs a question's score is its correctness averaged over the runs (huatuo_o1/evaluation/paired.py
says how each figure is made). Writes PREFIX.json and PREFIX.png (the differences with their intervals);
PREFIX defaults to compare_<A>_vs_<B> beside B's file.
"""

import os

from huatuo_o1 import cli
from huatuo_o1.evaluation import paired, scoring
from huatuo_o1.evaluation.runs import check_comparable, question_ids, read_run_set, shared_settings
from huatuo_o1.records import InputError


def scored_runs(run_set) -> list[list[dict]]:
    """Each run's records with their id and verdict (a record without one is scored as it stands)."""
    runs = []
    for run in run_set.runs:
        records = []
        for qid, record in zip(question_ids(run.records), run.records):
            verdict = record.get("verdict") or scoring.score_item(record, record["output"])
            records.append({"id": qid, "source": record.get("source", "eval"), "verdict": verdict})
        runs.append(records)
    return runs


def settings_that_differ(a, b) -> dict:
    """{setting: [A's, B's]} of the shared settings the two sets do not share (the model, at least)."""
    a_settings, b_settings = shared_settings(a.settings or {}), shared_settings(b.settings or {})
    keys = sorted(a_settings.keys() | b_settings.keys())
    return {
        key: [a_settings.get(key), b_settings.get(key)] for key in keys if a_settings.get(key) != b_settings.get(key)
    }


def main():
    parser = cli.argument_parser(__doc__)
    parser.add_argument("a_results", help="A: <name>.json or <set>_runs.json written by evaluation/eval.py")
    parser.add_argument("b_results", help="B: the same for the other model; the difference is B - A")
    parser.add_argument(
        "--view", default="honest_first", choices=list(paired.VIEWS), help="How a reply counts as right."
    )
    parser.add_argument("--resamples", type=int, default=10000, help="Bootstrap resamples of the questions.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the bootstrap.")
    parser.add_argument("--output", default="", help="Prefix of the JSON and PNG written (default: beside B).")
    args = parser.parse_args()
    cli.check_ranges(args, at_least_1=("resamples",))

    a, b = read_run_set(args.a_results), read_run_set(args.b_results)
    check_comparable(a, b)
    a_scores = paired.per_question_scores(scored_runs(a), args.view)
    b_scores = paired.per_question_scores(scored_runs(b), args.view)
    comparison = {
        "a": args.a_results,
        "b": args.b_results,
        "view": args.view,
        "runs": len(a.runs),
        "run_settings": a.keys(),
        "resamples": args.resamples,
        "bootstrap_seed": args.seed,
        "settings_that_differ": settings_that_differ(a, b),
        **paired.compare_scores(a_scores, b_scores, args.resamples, args.seed),
    }
    stem = lambda path: os.path.splitext(os.path.basename(path))[0]  # noqa: E731
    prefix = args.output or os.path.join(
        os.path.dirname(os.path.abspath(args.b_results)), f"compare_{stem(args.a_results)}_vs_{stem(args.b_results)}"
    )
    try:
        paired.write_comparison(comparison, prefix)
    except OSError as e:
        raise InputError(f"cannot write {prefix}.json: {e.strerror}") from None
    print(paired.markdown_table(comparison))
    print(f"wrote {prefix}.json and {prefix}.png")


if __name__ == "__main__":
    cli.run(main)
