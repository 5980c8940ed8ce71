"""Per-source accuracy report: JSON, a markdown table beside the paper's Table 1, a bar chart.

eval.py calls this after scoring. It also runs alone, to re-score a results file (for example
after changing the scoring rules) without asking the model again:
    python evaluation/report.py evaluation/results/<name>.json [--paper_row HuatuoGPT-o1-8B]
Each record's "output" (the reply as cleaned by eval.py) is scored as it stands, so a results file
of the original code (its "output" was cleaned the same way) re-scores to the original's figures.
"""

import argparse
import json
import os

from huatuo_o1 import cli
from huatuo_o1.evaluation import report, scoring
from huatuo_o1.records import write_json_atomic


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_file", help="<name>.json written by evaluation/eval.py")
    parser.add_argument("--paper_row", default="HuatuoGPT-o1-8B")
    args = parser.parse_args()
    with open(args.results_file, encoding="utf-8") as f:
        results = json.load(f)
    for record in results:
        record["verdict"] = scoring.score_item(record, record["output"])
    write_json_atomic(args.results_file, results)
    settings = {"model_name": results[0].get("model_name")} if results else {}
    previous = os.path.splitext(args.results_file)[0] + "_report.json"
    if os.path.exists(previous):
        with open(previous, encoding="utf-8") as f:
            settings = json.load(f).get("settings", settings)
    summary = report.build_report(results, settings, args.paper_row)
    report.write_reports(summary, os.path.splitext(args.results_file)[0] + "_report")
    print(report.markdown_table(summary))


if __name__ == "__main__":
    cli.run(main)
