"""Ask a served model every multiple-choice question of an eval file, score the replies, write a report.

The model runs behind any OpenAI-compatible server (SGLang or vLLM on GPUs, `transformers serve`
on a CPU machine; see evaluation/serve.py). Prompts go out concurrently, one prompt per request,
which every server accepts. Finished replies are appended to a `.partial.jsonl` file as they
arrive, so an interrupted run picks up where it stopped when started again with the same flags.

Usage (the paper's command, with a server on port 30000):
    python evaluation/eval.py --model_name FreedomIntelligence/HuatuoGPT-o1-8B \
        --eval_file evaluation/data/eval_data.json --port 30000 [--strict_prompt]

Any server, chat endpoint (the server applies the chat template):
    python evaluation/eval.py --model_name MODEL --eval_file FILE --base_url http://host:port/v1 \
        --request_mode chat

Start, evaluate and stop in one command: `bash evaluation/run_eval.sh MODEL_DIR [flags of this script]`.

The text sent is the paper's (see docs/eval.md): the paper's prompt wording, the chat template
rendered as the original client rendered it; replies are cleaned as the original cleaned them
(every "</s>" removed, then one leading space) before scoring. Where we deliberately differ (one
BOS token, not two; --max_tokens; one prompt per request) docs/fidelity.md says so.

Writes to --output_dir: <name>.json (every item with its prompt, reply and verdicts),
<name>_report.json (accuracy per source, both scoring views, format_rate), <name>_report.md
(beside the paper's Table 1) and <name>_report.png (bar chart). <name> is
<model folder>_<task>_<eval file>[_strict]_<key>, the key a short hash of the resolved model and the
settings, so two models or settings never share a file (docs/eval.md).

Repeated runs, and their spread (mean, sample standard deviation, min-max per source):
    python evaluation/eval.py ... --seeds 1 2 3 4 5        # or --n_runs 5: the seeds --seed, --seed + 1, ...
Each run is a full pass with its own server seed and its own order of GPQA's options, and writes the files
of a single run with those flags; the set adds <set>_runs.json (its runs) and <set>_runs_report.{json,md,png}.
Greedy decoding (--temperature 0) is one run: more seeds are refused.

No API key is sent unless --api_key or EVAL_API_KEY gives one (OPENAI_API_KEY is never read); the key
is redacted from every message and file.
"""

import json
import os
import sys
import time

from tqdm import tqdm

from huatuo_o1 import cli
from huatuo_o1.cli import redact
from huatuo_o1.evaluation import report, scoring, spread
from huatuo_o1.evaluation.client import (
    MAX_THREADS,
    EvalArguments,
    PromptBuilder,
    ask,
    check_arguments,
    load_eval_items,
    make_client,
    open_partial,
    output_stem,
    read_partial,
    read_results,
    settings_of,
)
from huatuo_o1.evaluation.runs import items_for_run, run_arguments, run_key, set_stem, shared_settings, write_index
from huatuo_o1.outputs import check_outputs
from huatuo_o1.records import write_json_atomic
from huatuo_o1.worker_threads import Workers


def main(args):
    check_arguments(args)
    runs = run_arguments(args)
    items = load_eval_items(args.eval_file, args.max_items_per_source)
    build_prompt = PromptBuilder(args)
    if args.max_tokens > 0:
        over = sum(build_prompt.count(build_prompt.user_prompt(item)) > args.max_tokens for item in items)
        if over:
            print(
                f"warning: {over} prompts exceed --max_tokens {args.max_tokens} even with the question cut away "
                "(the instruction and options are never cut)",
                file=sys.stderr,
            )
    inputs = {"--eval_file": args.eval_file, "--model_name": args.model_name}
    check_outputs([("--output_dir", args.output_dir, True)], inputs)
    os.makedirs(args.output_dir, exist_ok=True)

    # Each run a full pass with its own files (resumable on its own); with several, then their spread.
    run_settings = [settings_of(run) for run in runs]
    summaries, results_paths, seconds = [], [], []
    for number, (run, settings) in enumerate(zip(runs, run_settings), start=1):
        if len(runs) > 1:
            print(f"run {number}/{len(runs)}: seed {run.seed}, GPQA options shuffled with seed {run.gpqa_option_seed}")
        started = time.monotonic()
        summary = evaluate(run, settings, items_for_run(items, run), build_prompt, show_table=len(runs) == 1)
        if summary is None:
            return 1
        summaries.append(summary)
        results_paths.append(os.path.join(args.output_dir, output_stem(run, settings)) + ".json")
        seconds.append(time.monotonic() - started)
    if len(runs) == 1:
        return 0
    stem = os.path.join(args.output_dir, set_stem(args, run_settings))
    write_index(stem + ".json", run_settings, results_paths, seconds)
    runs_report = spread.build_spread_report(
        summaries, [run_key(s) for s in run_settings], shared_settings(run_settings[0]), args.paper_row
    )
    spread.write_spread_reports(runs_report, stem + "_report")
    print(spread.markdown_table(runs_report))
    print(f"wrote {stem}.json and {stem}_report.{{json,md,png}}")
    return 0


def evaluate(args, settings, items, build_prompt, show_table):
    """One run: ask what its files do not hold yet, score, write its results and report. Returns the report,
    or None when requests failed (their items are left for a rerun)."""
    # Where the answers go; answers of an earlier run with the same settings (a finished one's results, an
    # interrupted one's partial file) are kept and not asked again.
    items = [{**item, "prompt": build_prompt(item)} for item in items]
    stem = os.path.join(args.output_dir, output_stem(args, settings))
    partial_path = stem + ".partial.jsonl"
    ids = {item["id"] for item in items}
    finished = read_results(stem + ".json", ids)
    done = {**finished, **read_partial(partial_path, settings)}
    pending = [item for item in items if item["id"] not in done]
    print(f"{len(items)} items, {len(done)} already answered (resumed), {len(pending)} to ask")

    failures = []
    if pending:
        client = make_client(args)
        workers = Workers(lambda item: ask(client, args, item["prompt"]), pending, min(args.batch_size, MAX_THREADS))
        with open_partial(partial_path, settings) as partial:
            progress = tqdm(workers, total=len(pending), desc="questions")
            try:
                for item, answer in progress:
                    if isinstance(answer, BaseException):  # after the client's own retries: leave it for a rerun
                        failures.append(redact(f"{item['id']}: {type(answer).__name__}: {answer}", args.api_key))
                        continue
                    done[item["id"]] = {"id": item["id"], **answer}
                    partial.write(json.dumps(done[item["id"]], ensure_ascii=False) + "\n")
                    partial.flush()
            except KeyboardInterrupt:
                # Every finished reply is already on disk; the requests in flight end with the process, unsaved.
                workers.stop.set()
                progress.close()
                raise KeyboardInterrupt(f"{len(done)} answers kept in {partial_path}; rerun to continue") from None
    if failures:
        print(
            f"{len(failures)} requests failed (first: {failures[0]}). Answers so far are kept in "
            f"{partial_path}; run the same command again to ask only the missing ones.",
            file=sys.stderr,
        )
        return None

    results = []
    for item in items:
        answer = done[item["id"]]
        results.append({**item, **answer, "verdict": scoring.score_item(item, answer["output"])})
    summary = report.build_report(results, settings, args.paper_row)
    write_json_atomic(stem + ".json", results)
    report.write_reports(summary, stem + "_report")
    if os.path.exists(partial_path):
        os.remove(partial_path)
    if show_table:
        print(report.markdown_table(summary))
    else:
        average = summary["average_over_sources"]
        print(
            f"averaged over sources: paper view {average['paper_accuracy']}, "
            f"honest first match {average['honest_first_match_accuracy']}"
        )
    print(f"wrote {stem}.json and {stem}_report.{{json,md,png}}")
    return summary


if __name__ == "__main__":
    cli.run(lambda: main(cli.parse((EvalArguments,))[0]))
