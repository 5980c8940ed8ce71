"""Per-source accuracy report: JSON, a markdown table beside the paper's Table 1, a bar chart; for a run with
--think_budget or --keep_thinking also its thinking lengths and the accuracy by thinking length (a table and a chart).

evaluation/eval.py builds it after scoring; evaluation/report.py rebuilds it from a results file.
"""

import os

from huatuo_o1.evaluation import scoring
from huatuo_o1.records import read_json, write_json_atomic

# The paper's tables of accuracy: Table 1 (English benchmarks) and Table 4 (the Chinese track).
PAPER_TABLE_PATHS = [
    os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
    for name in ("paper_table1.json", "paper_table4.json")
]


def paper_table() -> dict:
    """The paper's tables as one: "rows" (model -> {column: figure}) and "source_to_column"."""
    rows, source_to_column = {}, {}
    for path in PAPER_TABLE_PATHS:
        table = read_json(path)
        rows.update({row: dict(zip(table["columns"], figures)) for row, figures in table["rows"].items()})
        source_to_column.update(table["source_to_column"])
    return {"rows": rows, "source_to_column": source_to_column}


def paper_figure(source: str, paper_row: str) -> float | None:
    """The paper's figure for this source and row, or None when the row's table has no column for the source."""
    table = paper_table()
    if paper_row not in table["rows"]:
        raise ValueError(
            f"--paper_row {paper_row!r} is not in the paper's tables; choose one of {list(table['rows'])}"
        )
    return table["rows"][paper_row].get(table["source_to_column"].get(source))


def reply_lengths(records: list[dict]) -> dict:
    """Mean generated tokens and the share of replies cut by --max_new_tokens (when the server said)."""
    tokens = [r["completion_tokens"] for r in records if r.get("completion_tokens") is not None]
    reasons = [r["finish_reason"] for r in records if r.get("finish_reason")]
    return {
        "mean_completion_tokens": round(sum(tokens) / len(tokens), 1) if tokens else None,
        "cut_at_max_new_tokens_rate": round(100.0 * reasons.count("length") / len(reasons), 2) if reasons else None,
    }


AVERAGED = (
    "paper_accuracy",
    "paper_first_match_accuracy",
    "paper_last_match_accuracy",
    "honest_first_match_accuracy",
    "honest_last_match_accuracy",
)


def _mean(values):
    """Mean of the sources that have a figure (a source whose replies were all empty has no paper view)."""
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 2) if values else None


# Thinking lengths in bins 0-16, 17-32, 33-64, ... tokens: a reply cut at a budget of 16 * 2^k ends its bin.
FIRST_BIN_END = 16


def length_bin_end(tokens: int) -> int:
    end = FIRST_BIN_END
    while tokens > end:
        end *= 2
    return end


def thinking_figures(records: list[dict]) -> dict:
    """Thinking lengths (the records' thinking_tokens, thinking_cut, thinking_extensions) over all sources, and the
    accuracy of each length bin."""
    tokens = [r["thinking_tokens"] for r in records]
    extensions = [r["thinking_extensions"] for r in records]
    bins = {}
    for record in records:
        bins.setdefault(length_bin_end(record["thinking_tokens"]), []).append(record["verdict"])
    by_length = []
    for end in sorted(bins):
        figures = scoring.summarize(bins[end])
        start = 0 if end == FIRST_BIN_END else end // 2 + 1
        by_length.append(
            {
                "tokens": f"{start}-{end}",
                "n": figures["n"],
                **{key: figures[key] for key in ("paper_accuracy", "honest_first_match_accuracy")},
            }
        )
    return {
        "mean_thinking_tokens": round(sum(tokens) / len(tokens), 1),
        "max_thinking_tokens": max(tokens),
        "cut_rate": round(100.0 * sum(bool(r["thinking_cut"]) for r in records) / len(records), 2),
        "extended_rate": round(100.0 * sum(count > 0 for count in extensions) / len(records), 2),
        "mean_extensions": round(sum(extensions) / len(extensions), 2),
        "by_length": by_length,
    }


def build_report(results: list[dict], settings: dict, paper_row: str) -> dict:
    """results: items with 'source' and 'verdict' (scoring.score_item). Returns the report dict."""
    by_source = {}
    for record in results:
        by_source.setdefault(record["source"], []).append(record["verdict"])
    sources = {}
    for source, verdicts in by_source.items():
        records = [r for r in results if r["source"] == source]
        sources[source] = {
            **scoring.summarize(verdicts),
            **reply_lengths(records),
            "paper_table1": paper_figure(source, paper_row),
        }
    overall = {**scoring.summarize([r["verdict"] for r in results]), **reply_lengths(results)}
    summary = {
        "model": settings.get("model_name"),
        "settings": settings,
        "paper_row": paper_row,
        "format_rate": overall["format_rate"],
        "sources": sources,
        "overall": overall,
        "average_over_sources": {key: _mean(s[key] for s in sources.values()) for key in AVERAGED},
    }
    if results and all("thinking_tokens" in r for r in results):  # runs with --think_budget / --keep_thinking
        summary["thinking"] = thinking_figures(results)
    return summary


# (column title, key in a source's figures); the row label and the paper's figure frame them.
COLUMNS = [
    ("n", "n"),
    ("paper view", "paper_accuracy"),
    ("paper: first", "paper_first_match_accuracy"),
    ("paper: last", "paper_last_match_accuracy"),
    ("paper: scored", "paper_scored"),
    ("honest: first", "honest_first_match_accuracy"),
    ("honest: last", "honest_last_match_accuracy"),
    ("honest: no answer", "honest_no_answer_rate"),
    ("blank", "blank_reply_rate"),
    ("format", "format_rate"),
    ("layouts", "layout_counts"),
    ("reply tokens", "mean_completion_tokens"),
]
COLUMN_NOTES = (
    "accuracy in %. **paper view** = the original evaluation's scorer, rule for rule: the better of its "
    "first-match and last-match accuracy (paper: first / last), over the replies it scores (paper: scored; "
    "empty replies are dropped, as the original did). Compare this with the paper's Table 1. "
    "**honest** = what the reply says: a letter counts only where written as an answer, otherwise the "
    "option's text; first and last option named, over all replies; no answer = no option named (wrong); "
    "blank = empty or whitespace replies (wrong). format = exactly one `## Thinking` and one "
    "`## Final Response` followed by a blank line (the RL reward's rule); layouts = replies with both headings / "
    "`## Final Response` only / `## Thinking` only / neither, however typeset; reply tokens = mean generated tokens. "
    "Last row: accuracies averaged over sources, "
    "counts and rates over all replies."
)


def _cell(value):
    if value is None:
        return "n/a"
    if isinstance(value, dict):
        return "/".join(str(count) for count in value.values())  # layout counts, in answer_format.LAYOUTS order
    return str(value) if isinstance(value, int) else f"{value:.1f}"


def markdown_table(summary: dict) -> str:
    lines = [
        f"Model: `{summary['model']}`; {COLUMN_NOTES}",
        "",
        "| source | " + " | ".join(title for title, _ in COLUMNS) + f" | paper: {summary['paper_row']} |",
        "|---" * (len(COLUMNS) + 2) + "|",
    ]
    for source, s in summary["sources"].items():
        lines.append(
            f"| {source} | " + " | ".join(_cell(s[key]) for _, key in COLUMNS) + f" | {_cell(s['paper_table1'])} |"
        )
    o, avg = summary["overall"], summary["average_over_sources"]
    cells = [_cell(avg[key]) if key in avg else _cell(o[key]) for _, key in COLUMNS]
    lines.append("| **average over sources** | " + " | ".join(cells) + " | |")
    if "thinking" in summary:
        lines += ["", *thinking_table(summary)]
    return "\n".join(lines) + "\n"


def thinking_table(summary: dict) -> list[str]:
    settings, thinking = summary["settings"], summary["thinking"]
    control = [f"budget {settings['think_budget']} tokens"] if settings.get("think_budget") is not None else []
    control += [f"'Wait' up to {settings['keep_thinking']} times"] if settings.get("keep_thinking") else []
    lines = [
        "Thinking"
        + (f" ({', '.join(control)})" if control else "")
        + f": {thinking['mean_thinking_tokens']} tokens on average, at most "
        f"{thinking['max_thinking_tokens']}; cut at the budget: {_cell(thinking['cut_rate'])}% of replies; extended: "
        f"{_cell(thinking['extended_rate'])}% ({thinking['mean_extensions']} times on average). Accuracy in % by "
        "thinking length (tokens of the model's tokenizer), all sources together:",
        "",
        "| thinking tokens | n | paper view | honest first |",
        "|---|---|---|---|",
    ]
    for row in thinking["by_length"]:
        cells = [row["tokens"], row["n"], row["paper_accuracy"], row["honest_first_match_accuracy"]]
        lines.append("| " + " | ".join(_cell(cell) if not isinstance(cell, str) else cell for cell in cells) + " |")
    return lines


def bar_chart(summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = list(summary["sources"])
    series = [
        ("ours, paper view", [summary["sources"][s]["paper_accuracy"] or 0.0 for s in sources]),
        ("ours, honest first match", [summary["sources"][s]["honest_first_match_accuracy"] for s in sources]),
        (f"paper: {summary['paper_row']}", [summary["sources"][s]["paper_table1"] or 0.0 for s in sources]),
    ]
    width = 0.8 / len(series)
    figure, axes = plt.subplots(figsize=(max(6, 1.3 * len(sources)), 4))
    for offset, (label, values) in enumerate(series):
        axes.bar([i + offset * width for i in range(len(sources))], values, width, label=label)
    save_chart(figure, axes, sources, width, os.path.basename(os.path.normpath(summary["model"] or "model")), path)


def thinking_chart(summary: dict, path: str) -> None:
    """Accuracy by thinking length: paper view and honest first match per length bin, each bin's n under it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["thinking"]["by_length"]
    labels = [f"{row['tokens']}\n(n={row['n']})" for row in rows]
    series = [("paper view", "paper_accuracy"), ("honest first match", "honest_first_match_accuracy")]
    width = 0.8 / len(series)
    figure, axes = plt.subplots(figsize=(max(6, 1.1 * len(labels)), 4))
    for offset, (label, key) in enumerate(series):
        axes.bar([i + offset * width for i in range(len(rows))], [row[key] or 0.0 for row in rows], width, label=label)
    axes.set_xlabel("thinking tokens")
    model = os.path.basename(os.path.normpath(summary["model"] or "model"))
    save_chart(figure, axes, labels, width / 2, f"{model}: accuracy by thinking length", path)


def save_chart(figure, axes, labels: list[str], tick_offset: float, title: str, path: str) -> None:
    """Label an accuracy bar chart (one group of bars per label, 0-100%) and save it."""
    import matplotlib.pyplot as plt

    axes.set_xticks([i + tick_offset for i in range(len(labels))])
    axes.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(0, 100)
    axes.set_title(title)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_reports(summary: dict, prefix: str, table=markdown_table, chart=bar_chart) -> None:
    """prefix.json, prefix.md (the table) and prefix.png (the chart) of a report (the spread's too)."""
    write_json_atomic(prefix + ".json", summary)
    with open(prefix + ".md", "w", encoding="utf-8") as f:
        f.write(table(summary))
    chart(summary, prefix + ".png")
    if "thinking" in summary:
        thinking_chart(summary, prefix + "_thinking.png")
