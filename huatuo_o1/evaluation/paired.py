"""Two models on the same questions, question by question: each one's accuracy, the difference with a paired
bootstrap interval, McNemar's exact test, and the questions one got that the other missed.

The unit is the question. Each model's score on a question is its correctness averaged over its runs
(0 or 1 with one run; k/R with R runs), so several runs per model sharpen each question's score instead of
counting a question R times. Then, per source and averaged over sources:
- accuracy: the mean score, in % (the average over sources: the mean of the sources' accuracies);
- difference: B - A in points, with a 95% percentile interval from a paired bootstrap that resamples
  questions (with replacement, both models' scores of a question together; the average over sources
  resamples within each source, then averages), seeded;
- a_only / b_only: questions where A's score is above B's / below it; with one run these are McNemar's
  discordant pairs (right for one model, wrong for the other);
- mcnemar_p: McNemar's exact test, two-sided: the binomial test of a_only against b_only at one half (with
  several runs, the sign test on the per-question differences, of which McNemar's is the one-run case).
  The average over sources counts every question once, over all sources.
"""

import math
import os

import numpy as np

from huatuo_o1.records import write_json_atomic

# How a reply counts as right: (view, verdict key) of scoring.score_item's verdict. The paper view's dropped
# (empty) replies count as wrong here: a paired comparison needs a verdict for every question.
VIEWS = {
    "honest_first": ("honest", "first_correct"),
    "honest_last": ("honest", "last_correct"),
    "paper_first": ("paper", "first_correct"),
    "paper_last": ("paper", "last_correct"),
}
LEVEL = 0.95
INDICES_PER_DRAW = 2_000_000  # question indices drawn at once by the bootstrap (16 MB)


def mcnemar_exact_p(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: twice the smaller binomial tail of the discordant pairs at one half
    (capped at 1); 1 when there are none."""
    discordant = a_only + b_only
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, k) for k in range(min(a_only, b_only) + 1))
    return min(1.0, 2 * tail / 2**discordant)


def bootstrap_means(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """The mean of `resamples` resamples of values (each of len(values) draws with replacement)."""
    means = np.empty(resamples)
    chunk = max(1, INDICES_PER_DRAW // len(values))
    for start in range(0, resamples, chunk):
        stop = min(start + chunk, resamples)
        picks = rng.integers(0, len(values), size=(stop - start, len(values)))
        means[start:stop] = values[picks].mean(axis=1)
    return means


def percentile_interval(replicates: np.ndarray) -> list[float]:
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return [round(float(low), 2), round(float(high), 2)]


def per_question_scores(runs: list[list[dict]], view: str) -> dict[str, dict[str, float]]:
    """{source: {question id: correctness averaged over the runs}} of one model (records with a verdict)."""
    verdict_view, key = VIEWS[view]
    scores = {}
    for records in runs:
        for record in records:
            right = float(record["verdict"][verdict_view][key])
            scores.setdefault(record["source"], {}).setdefault(record["id"], []).append(right)
    return {source: {qid: sum(v) / len(v) for qid, v in by_id.items()} for source, by_id in scores.items()}


def _figures(a_mean: float, b_mean: float, replicates: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict:
    """The figures of one row: mean scores (shares), the bootstrap's differences (shares), and the scores of
    the questions that the counts and the test take."""
    counts = {"a_only": int((a > b).sum()), "b_only": int((b > a).sum())}
    return {
        "n": len(a),
        "a_accuracy": round(100 * a_mean, 2),
        "b_accuracy": round(100 * b_mean, 2),
        "difference": round(100 * (b_mean - a_mean), 2),
        "ci95": percentile_interval(100 * replicates),
        **counts,
        "ties": len(a) - counts["a_only"] - counts["b_only"],
        "mcnemar_p": mcnemar_exact_p(counts["a_only"], counts["b_only"]),
    }


def compare_scores(a_scores: dict, b_scores: dict, resamples: int, seed: int) -> dict:
    """Per source and averaged over sources: accuracies, B - A with its bootstrap interval, the counts and
    McNemar's p. a_scores, b_scores: per_question_scores of the two models, over the same questions."""
    rng = np.random.default_rng(seed)
    sources, pairs, replicates = {}, [], []
    for source in a_scores:
        ids = sorted(a_scores[source])
        a = np.array([a_scores[source][qid] for qid in ids])
        b = np.array([b_scores[source][qid] for qid in ids])
        replicates.append(bootstrap_means(b - a, resamples, rng))
        sources[source] = _figures(float(a.mean()), float(b.mean()), replicates[-1], a, b)
        pairs.append((a, b))
    # The average over sources weighs each source the same, as the report does (the bootstrap resamples
    # within each source, then averages); the counts and the test take every question once.
    average = _figures(
        float(np.mean([a.mean() for a, _ in pairs])),
        float(np.mean([b.mean() for _, b in pairs])),
        np.mean(replicates, axis=0),
        np.concatenate([a for a, _ in pairs]),
        np.concatenate([b for _, b in pairs]),
    )
    return {"sources": sources, "average_over_sources": average}


def markdown_table(comparison: dict) -> str:
    lines = [
        f"A = `{comparison['a']}`, B = `{comparison['b']}`; {comparison['runs']} run(s) each, view "
        f"{comparison['view']}; accuracy in %, difference = B - A in points with its 95% paired bootstrap "
        f"interval ({comparison['resamples']} resamples of the questions, seed {comparison['bootstrap_seed']}); "
        "A only / B only = questions A got right and B missed / the reverse (with several runs: right more often); "
        "p = McNemar's exact test.",
        "",
        "| source | n | A | B | B - A | 95% interval | A only | B only | p |",
        "|---" * 9 + "|",
    ]
    rows = [*comparison["sources"].items(), ("**average over sources**", comparison["average_over_sources"])]
    for label, f in rows:
        lines.append(
            f"| {label} | {f['n']} | {f['a_accuracy']:.1f} | {f['b_accuracy']:.1f} | {f['difference']:+.1f} | "
            f"[{f['ci95'][0]:+.1f}, {f['ci95'][1]:+.1f}] | {f['a_only']} | {f['b_only']} | {f['mcnemar_p']:.3g} |"
        )
    return "\n".join(lines) + "\n"


def difference_chart(comparison: dict, path: str) -> None:
    """Each source's B - A (a dot) with its 95% interval (a bar), the average last; a line at no difference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {**comparison["sources"], "average over sources": comparison["average_over_sources"]}
    labels = list(rows)[::-1]  # top to bottom in table order
    differences = [rows[label]["difference"] for label in labels]
    below = [rows[label]["difference"] - rows[label]["ci95"][0] for label in labels]
    above = [rows[label]["ci95"][1] - rows[label]["difference"] for label in labels]
    figure, axes = plt.subplots(figsize=(7, 0.45 * len(labels) + 1.5))
    axes.errorbar(differences, range(len(labels)), xerr=[below, above], fmt="o", capsize=4)
    axes.axvline(0, color="grey", linewidth=1)
    axes.set_yticks(range(len(labels)))
    axes.set_yticklabels(labels, fontsize=8)
    axes.set_xlabel("accuracy difference, B - A (points), with 95% paired bootstrap interval")
    axes.set_title(f"A: {os.path.basename(comparison['a'])}\nB: {os.path.basename(comparison['b'])}", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_comparison(comparison: dict, prefix: str) -> None:
    write_json_atomic(prefix + ".json", comparison)
    difference_chart(comparison, prefix + ".png")
