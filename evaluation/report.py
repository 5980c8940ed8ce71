"""Per-source accuracy report: JSON, a markdown table beside the paper's Table 1, a bar chart.

eval.py calls this after scoring. It also runs alone, to re-score a results file (for example
after changing the scoring rules) without asking the model again:
    python evaluation/report.py evaluation/results/<name>.json [--paper_row HuatuoGPT-o1-8B]
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evaluation import scoring  # noqa: E402
from pipeline_io import write_json_atomic  # noqa: E402

PAPER_TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "paper_table1.json")


def paper_table():
    with open(PAPER_TABLE_PATH, encoding="utf-8") as f:
        return json.load(f)


def paper_figure(source, paper_row):
    """The paper's Table 1 number for this source and row, or None when no column matches."""
    table = paper_table()
    if paper_row not in table["rows"]:
        raise ValueError(f"--paper_row {paper_row!r} is not in Table 1; choose one of {list(table['rows'])}")
    column = table["source_to_column"].get(source)
    if column is None:
        return None
    return table["rows"][paper_row][table["columns"].index(column)]


def reply_lengths(records):
    """Mean generated tokens and the share of replies cut by --max_new_tokens (when the server said)."""
    tokens = [r["completion_tokens"] for r in records if r.get("completion_tokens") is not None]
    reasons = [r["finish_reason"] for r in records if r.get("finish_reason")]
    return {
        "mean_completion_tokens": round(sum(tokens) / len(tokens), 1) if tokens else None,
        "cut_at_max_new_tokens_rate": round(100.0 * reasons.count("length") / len(reasons), 2) if reasons else None,
    }


def build_report(results, settings, paper_row):
    """results: items with 'source' and 'verdict' (scoring.score_item). Returns the report dict."""
    by_source = {}
    for record in results:
        by_source.setdefault(record["source"], []).append(record["verdict"])
    sources = {}
    for source, verdicts in by_source.items():
        records = [r for r in results if r["source"] == source]
        sources[source] = {**scoring.summarize(verdicts), **reply_lengths(records), "paper_table1": paper_figure(source, paper_row)}
    overall = {**scoring.summarize([r["verdict"] for r in results]), **reply_lengths(results)}
    return {
        "model": settings.get("model_name"),
        "settings": settings,
        "paper_row": paper_row,
        "format_rate": overall["format_rate"],
        "sources": sources,
        "overall": overall,
        "average_over_sources": {
            key: round(sum(s[key] for s in sources.values()) / len(sources), 2)
            for key in ("paper_accuracy", "first_match_accuracy", "last_match_accuracy")
        },
    }


def _cell(value):
    return "n/a" if value is None else f"{value:.1f}"


def markdown_table(summary):
    lines = [
        f"Model: `{summary['model']}`; accuracy in %. paper view = the original's rules (better of first/last match); "
        "first/last = our strict letter matching; no answer = nothing found without the similarity fallback "
        "(counted wrong); empty = blank replies (counted wrong); format = exactly one `## Thinking` and one `## Final Response`; "
        "reply tokens = mean generated tokens.",
        "",
        f"| source | n | ours, paper view | ours, first match | ours, last match | no answer found | empty | format | reply tokens | paper: {summary['paper_row']} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for source, s in summary["sources"].items():
        lines.append(
            f"| {source} | {s['n']} | {_cell(s['paper_accuracy'])} | {_cell(s['first_match_accuracy'])} | "
            f"{_cell(s['last_match_accuracy'])} | {_cell(s['no_answer_found_rate'])} | {_cell(s['empty_output_rate'])} | "
            f"{_cell(s['format_rate'])} | {_cell(s['mean_completion_tokens'])} | {_cell(s['paper_table1'])} |"
        )
    o, avg = summary["overall"], summary["average_over_sources"]
    lines.append(
        f"| **average over sources** | {o['n']} | {_cell(avg['paper_accuracy'])} | {_cell(avg['first_match_accuracy'])} | "
        f"{_cell(avg['last_match_accuracy'])} | {_cell(o['no_answer_found_rate'])} | {_cell(o['empty_output_rate'])} | "
        f"{_cell(o['format_rate'])} | {_cell(o['mean_completion_tokens'])} | |"
    )
    return "\n".join(lines) + "\n"


def bar_chart(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = list(summary["sources"])
    series = [
        ("ours, paper view", [summary["sources"][s]["paper_accuracy"] for s in sources]),
        ("ours, first match", [summary["sources"][s]["first_match_accuracy"] for s in sources]),
        (f"paper: {summary['paper_row']}", [summary["sources"][s]["paper_table1"] or 0.0 for s in sources]),
    ]
    width = 0.8 / len(series)
    figure, axes = plt.subplots(figsize=(max(6, 1.3 * len(sources)), 4))
    for offset, (label, values) in enumerate(series):
        axes.bar([i + offset * width for i in range(len(sources))], values, width, label=label)
    axes.set_xticks([i + width for i in range(len(sources))])
    axes.set_xticklabels(sources, rotation=30, ha="right", fontsize=8)
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(0, 100)
    axes.set_title(os.path.basename(os.path.normpath(summary["model"] or "model")))
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_reports(summary, prefix):
    write_json_atomic(prefix + ".json", summary)
    with open(prefix + ".md", "w", encoding="utf-8") as f:
        f.write(markdown_table(summary))
    bar_chart(summary, prefix + ".png")


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
    summary = build_report(results, settings, args.paper_row)
    write_reports(summary, os.path.splitext(args.results_file)[0] + "_report")
    print(markdown_table(summary))


if __name__ == "__main__":
    main()
