"""Per-source accuracy report: JSON, a markdown table beside the paper's Table 1, a bar chart.

eval.py calls this after scoring. It also runs alone, to re-score a results file (for example
after changing the scoring rules) without asking the model again:
    python evaluation/report.py evaluation/results/<name>.json [--paper_row HuatuoGPT-o1-8B]
Each record's "output" (the reply as cleaned by eval.py) is scored as it stands, so a results file
of the original code (its "output" was cleaned the same way) re-scores to the original's figures.
"""

import json
import os

from huatuo_o1 import cli
from huatuo_o1.evaluation import report, scoring
from huatuo_o1.records import InputError, read_json, write_json_atomic

RECORD_KEYS = ("output", "options", "answer_idx")


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


def main():
    parser = cli.argument_parser(__doc__)
    parser.add_argument("results_file", help="<name>.json written by evaluation/eval.py")
    parser.add_argument("--paper_row", default="HuatuoGPT-o1-8B")
    args = parser.parse_args()

    # Check everything before writing anything: the row, the results, the settings of the earlier report.
    rows = report.paper_table()["rows"]
    if args.paper_row not in rows:
        raise InputError(f"--paper_row {args.paper_row!r} is not a row of the paper's Table 1: one of {list(rows)}")
    results = read_results(args.results_file)
    settings = {"model_name": results[0].get("model_name")}
    previous = os.path.splitext(args.results_file)[0] + "_report.json"
    if os.path.exists(previous):
        try:
            with open(previous, encoding="utf-8") as f:
                settings = json.load(f).get("settings", settings)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
            raise InputError(f"{previous}: unreadable ({type(e).__name__}); move it away for a new report") from None

    # Re-score, and write the results and the reports.
    for record in results:
        record["verdict"] = scoring.score_item(record, record["output"])
    summary = report.build_report(results, settings, args.paper_row)
    try:
        write_json_atomic(args.results_file, results)
        report.write_reports(summary, os.path.splitext(args.results_file)[0] + "_report")
    except OSError as e:
        raise InputError(f"cannot write beside {args.results_file}: {e.strerror}") from None
    print(report.markdown_table(summary))


if __name__ == "__main__":
    cli.run(main)
