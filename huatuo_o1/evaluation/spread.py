"""The figures of repeated runs: per source and averaged over sources, the mean over runs, the sample
standard deviation (n - 1), min and max of each run's figure, beside the paper's row; JSON, a markdown
table, a chart.

evaluation/eval.py builds it when several runs are asked for (--seeds, --n_runs); evaluation/report.py
rebuilds it from a set's index. Each run's own report is huatuo_o1.evaluation.report's.
"""

import os
import statistics

from huatuo_o1.evaluation import report

SPREAD_OF = report.AVERAGED  # the accuracies whose spread over runs is given
STATISTIC = "mean over runs, sample standard deviation (n - 1), min and max of the runs' figures"


def spread(values: list[float | None]) -> dict:
    """{mean, sd, min, max, runs} of one figure over runs; sd is the sample standard deviation (n - 1), None
    for one run; runs without the figure (a source of empty replies has no paper view) are left out."""
    known = [value for value in values if value is not None]
    if not known:
        return {"mean": None, "sd": None, "min": None, "max": None, "runs": values}
    return {
        "mean": round(statistics.mean(known), 2),
        "sd": round(statistics.stdev(known), 2) if len(known) > 1 else None,
        "min": min(known),
        "max": max(known),
        "runs": values,
    }


def paper_average(sources: dict) -> float | None:
    """The paper's row averaged over the sources asked, when the paper has a figure for each (its Avg column
    when all seven are)."""
    figures = [figures["paper_table1"] for figures in sources.values()]
    return round(statistics.mean(figures), 2) if figures and None not in figures else None


def build_spread_report(summaries: list[dict], runs: list[dict], settings: dict, paper_row: str) -> dict:
    """summaries: each run's report (report.build_report), in the order of runs (their per-run settings)."""
    sources = {}
    for source in summaries[0]["sources"]:
        per_run = [summary["sources"][source] for summary in summaries]
        sources[source] = {
            "n": per_run[0]["n"],
            **{key: spread([figures[key] for figures in per_run]) for key in SPREAD_OF},
            "paper_table1": report.paper_figure(source, paper_row),
        }
    average = {key: spread([summary["average_over_sources"][key] for summary in summaries]) for key in SPREAD_OF}
    return {
        "model": settings.get("model_name"),
        "settings": settings,
        "paper_row": paper_row,
        "runs": runs,
        "statistic": STATISTIC,
        "sources": sources,
        "average_over_sources": {**average, "paper_table1": paper_average(sources)},
    }


# (column title, figure) of the table; each figure gets mean, sd and min-max.
COLUMNS = [("paper view", "paper_accuracy"), ("honest first", "honest_first_match_accuracy")]
NOTES = (
    "accuracy in %, {runs} runs (seeds {seeds}): the mean over runs, sd = sample standard deviation (n - 1), "
    "min-max of the runs. Each run is a full pass with its own server seed and its own order of GPQA's options, "
    "so the paper view's mean on GPQA is the paper's figure (averaged over 5 runs) when 5 runs are asked. "
    "paper view and honest: as in each run's report. Last row: each run's average over sources, then its spread."
)


def _number(value):
    return "n/a" if value is None else f"{value:.1f}"


def _cells(figure):
    low_high = "n/a" if figure["min"] is None else f"{figure['min']:.1f}-{figure['max']:.1f}"
    return [_number(figure["mean"]), _number(figure["sd"]), low_high]


def markdown_table(summary: dict) -> str:
    seeds = ", ".join(str(run["seed"]) for run in summary["runs"])
    header = [f"{title}: {part}" for title, _ in COLUMNS for part in ("mean", "sd", "min-max")]
    lines = [
        f"Model: `{summary['model']}`; " + NOTES.format(runs=len(summary["runs"]), seeds=seeds),
        "",
        "| source | n | " + " | ".join(header) + f" | paper: {summary['paper_row']} |",
        "|---" * (len(header) + 3) + "|",
    ]
    rows = [(source, str(figures["n"]), figures) for source, figures in summary["sources"].items()]
    rows.append(("**average over sources**", "", summary["average_over_sources"]))
    for label, n, figures in rows:
        cells = [cell for _, key in COLUMNS for cell in _cells(figures[key])]
        lines.append(f"| {label} | {n} | " + " | ".join(cells) + f" | {_number(figures['paper_table1'])} |")
    return "\n".join(lines) + "\n"


def spread_chart(summary: dict, path: str) -> None:
    """Bars: the mean over runs with +-1 sd, each run a dot; the paper's figure beside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {**summary["sources"], "average": summary["average_over_sources"]}
    labels = list(rows)
    series = [(f"ours, {title}", key) for title, key in COLUMNS]
    width = 0.8 / (len(series) + 1)
    figure, axes = plt.subplots(figsize=(max(6, 1.3 * len(labels)), 4))
    for offset, (label, key) in enumerate(series):
        spots = [i + offset * width for i in range(len(labels))]
        means = [rows[name][key]["mean"] or 0.0 for name in labels]
        errors = [rows[name][key]["sd"] or 0.0 for name in labels]
        axes.bar(spots, means, width, yerr=errors, capsize=3, label=f"{label} (mean +- sd; dots: runs)")
        for spot, name in zip(spots, labels):
            values = [value for value in rows[name][key]["runs"] if value is not None]
            axes.plot([spot] * len(values), values, ".", color="black", markersize=3, zorder=3)
    paper = [rows[name]["paper_table1"] or 0.0 for name in labels]
    axes.bar(
        [i + len(series) * width for i in range(len(labels))], paper, width, label=f"paper: {summary['paper_row']}"
    )
    model = os.path.basename(os.path.normpath(summary["model"] or "model"))
    report.save_chart(figure, axes, labels, width, f"{model}: {len(summary['runs'])} runs", path)


def write_spread_reports(summary: dict, prefix: str) -> None:
    report.write_reports(summary, prefix, markdown_table, spread_chart)
