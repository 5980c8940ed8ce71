"""The figures of a set of runs at several thinking budgets (eval.py --think_budget 128 256 512 [--seeds ...]):
per budget, the spread over its runs (huatuo_o1.evaluation.spread) and how long the replies thought; accuracy
against the budget as JSON, a markdown table and a chart.

write_set_reports gives any set of runs its report: this one when its runs have several budgets, the spread's
otherwise. evaluation/eval.py writes it after the runs, evaluation/report.py rebuilds it from a set's index.
"""

import os

from huatuo_o1.evaluation import report, spread

THINKING_SPREAD = ("mean_thinking_tokens", "cut_rate", "extended_rate")


def build_budget_report(summaries: list[dict], runs: list[dict], settings: dict, paper_row: str) -> dict:
    """summaries: each run's report (with its "thinking" figures), in the order of runs (their per-run settings)."""
    budgets = []
    for budget in sorted({run["think_budget"] for run in runs}):
        members = [index for index, run in enumerate(runs) if run["think_budget"] == budget]
        group = [summaries[index] for index in members]
        group_spread = spread.build_spread_report(group, [runs[index] for index in members], settings, paper_row)
        budgets.append(
            {
                "think_budget": budget,
                "runs": group_spread["runs"],
                "thinking": {key: spread.spread([s["thinking"][key] for s in group]) for key in THINKING_SPREAD},
                "sources": group_spread["sources"],
                "average_over_sources": group_spread["average_over_sources"],
            }
        )
    return {
        "model": settings.get("model_name"),
        "settings": settings,
        "paper_row": paper_row,
        "runs": runs,
        "statistic": spread.STATISTIC,
        "budgets": budgets,
    }


def _figure(figure: dict) -> str:
    if figure["mean"] is None:
        return "n/a"
    return f"{figure['mean']:.1f}" + ("" if figure["sd"] is None else f" +- {figure['sd']:.1f}")


NOTES = (
    "accuracy in % at each thinking budget (tokens of the model's tokenizer; docs/eval.md): the mean over the "
    "budget's runs (seeds {seeds}), +- the sample standard deviation (n - 1) where there are several; thinking = "
    "a reply's thinking tokens on average, cut = replies cut at the budget (%). Each source's cell: paper view / "
    "honest first match (means)."
)


def markdown_table(summary: dict) -> str:
    seeds = ", ".join(sorted({str(run["seed"]) for run in summary["runs"]}, key=int))
    sources = list(summary["budgets"][0]["sources"])
    lines = [
        f"Model: `{summary['model']}`; " + NOTES.format(seeds=seeds),
        "",
        "| budget | runs | thinking | cut | average: paper view | average: honest first | "
        + " | ".join(sources)
        + " |",
        "|---" * (len(sources) + 6) + "|",
    ]
    for row in summary["budgets"]:
        average = row["average_over_sources"]
        cells = [
            str(row["think_budget"]),
            str(len(row["runs"])),
            _figure(row["thinking"]["mean_thinking_tokens"]),
            _figure(row["thinking"]["cut_rate"]),
            _figure(average["paper_accuracy"]),
            _figure(average["honest_first_match_accuracy"]),
        ]
        for source in sources:
            figures = row["sources"][source]
            means = [figures[key]["mean"] for key in ("paper_accuracy", "honest_first_match_accuracy")]
            cells.append(" / ".join("n/a" if mean is None else f"{mean:.1f}" for mean in means))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def budget_chart(summary: dict, path: str) -> None:
    """Accuracy averaged over sources against the budget (a log scale): the mean over runs +- 1 sd, each run a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["budgets"]
    budgets = [row["think_budget"] for row in rows]
    figure, axes = plt.subplots(figsize=(6, 4))
    for label, key in spread.COLUMNS:
        figures = [row["average_over_sources"][key] for row in rows]
        means = [figure["mean"] if figure["mean"] is not None else float("nan") for figure in figures]
        errors = [figure["sd"] or 0.0 for figure in figures]
        line = axes.errorbar(budgets, means, yerr=errors, marker="o", capsize=3, label=f"{label} (mean +- sd)")
        for budget, figure_of_budget in zip(budgets, figures):
            values = [value for value in figure_of_budget["runs"] if value is not None]
            axes.plot([budget] * len(values), values, ".", color=line[0].get_color(), markersize=4)
    axes.set_xscale("log", base=2)
    axes.set_xticks(budgets, [str(budget) for budget in budgets])
    axes.set_xlabel("thinking budget (tokens)")
    axes.set_ylabel("accuracy (%), average over sources")
    axes.set_ylim(0, 100)
    model = os.path.basename(os.path.normpath(summary["model"] or "model"))
    axes.set_title(f"{model}: accuracy against the thinking budget")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_set_reports(summaries: list[dict], runs: list[dict], settings: dict, paper_row: str, prefix: str) -> str:
    """prefix.{json,md,png} of a set of runs: the budget report when its runs have several budgets, the spread's
    otherwise. Returns the markdown table."""
    if len({run.get("think_budget") for run in runs}) > 1:
        summary = build_budget_report(summaries, runs, settings, paper_row)
        report.write_reports(summary, prefix, markdown_table, budget_chart)
        return markdown_table(summary)
    summary = spread.build_spread_report(summaries, runs, settings, paper_row)
    spread.write_spread_reports(summary, prefix)
    return spread.markdown_table(summary)
