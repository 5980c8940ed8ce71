"""Per-source accuracy report: JSON, a markdown table beside the paper's Table 1, a bar chart.

eval.py calls this after scoring. It also runs alone, to re-score a results file (for example
after changing the scoring rules) without asking the model again:
    python evaluation/report.py evaluation/results/<name>.json [--paper_row HuatuoGPT-o1-8B]
A set of runs (eval.py --seeds ...) is re-scored run by run, and its spread rebuilt, from its index:
    python evaluation/report.py evaluation/results/<set>_runs.json
Each record's "output" (the reply as cleaned by eval.py) is scored as it stands, so a results file
of the original code (its "output" was cleaned the same way) re-scores to the original's figures.
"""

import os

from huatuo_o1 import cli
from huatuo_o1.evaluation import report, scoring, spread
from huatuo_o1.evaluation.runs import INDEX_SUFFIX, read_run_set, report_settings, shared_settings
from huatuo_o1.records import InputError, write_json_atomic


def main():
    parser = cli.argument_parser(__doc__)
    parser.add_argument("results_file", help="<name>.json (or a set's <set>_runs.json) written by evaluation/eval.py")
    parser.add_argument("--paper_row", default="HuatuoGPT-o1-8B")
    args = parser.parse_args()

    # Check everything before writing anything: the row, the results, the settings of the earlier reports.
    rows = report.paper_table()["rows"]
    if args.paper_row not in rows:
        raise InputError(f"--paper_row {args.paper_row!r} is not a row of the paper's Table 1: one of {list(rows)}")
    run_set = read_run_set(args.results_file)
    settings = [
        report_settings(run.results_path) or run.settings or {"model_name": run.records[0].get("model_name")}
        for run in run_set.runs
    ]

    # Re-score, and write the results and the reports.
    summaries = []
    for run, run_settings in zip(run_set.runs, settings):
        for record in run.records:
            record["verdict"] = scoring.score_item(record, record["output"])
        summaries.append(report.build_report(run.records, run_settings, args.paper_row))
        try:
            write_json_atomic(run.results_path, run.records)
            report.write_reports(summaries[-1], os.path.splitext(run.results_path)[0] + "_report")
        except OSError as e:
            raise InputError(f"cannot write beside {run.results_path}: {e.strerror}") from None
    if not args.results_file.endswith(INDEX_SUFFIX):
        print(report.markdown_table(summaries[0]))
        return
    runs_report = spread.build_spread_report(summaries, run_set.keys(), shared_settings(settings[0]), args.paper_row)
    spread.write_spread_reports(runs_report, os.path.splitext(args.results_file)[0] + "_report")
    print(spread.markdown_table(runs_report))


if __name__ == "__main__":
    cli.run(main)
