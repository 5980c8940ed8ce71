"""Search: find a complex reasoning path for each verifiable problem, verified against its answer.

Input: items with `Open-ended Verifiable Question` and `Ground-True Answer` (others are skipped).
Per item a teacher LLM
  1. reasons as a JSON list of actions (Inner Thinking..., Final Conclusion, Verification); a second
     call checks the Final Conclusion against the reference answer ("True"/"False");
  2. while wrong: up to --max_search_attempts attempts, each of up to --max_search_depth rounds, it
     continues its trace with a random strategy (Backtracking, Exploring New Paths, Verification,
     Correction; no Backtracking in an attempt's first round), declaring the last conclusion wrong;
     each attempt restarts from the first trace and the failed one goes to `prior_fail_try`;
  3. if still wrong and --efficient_search: one round that shows it the reference answer (Label_CoT);
  4. once verified: rewrites the trace as natural thinking (-> Complex_CoT) and writes the final
     answer (-> Response), both kept exactly as the teacher wrote them.
Outputs: <input name>_CoT_search_<N>.json (the SFT data: exactly Question, Complex_CoT, Response),
<...>_records.json (every item: Long_CoT, verify, response_type, prior_fail_try, all verifications
with their reference answers, every query and reply) and <...>_summary.json. Progress: one file per
item under <output_dir>/<input name>_CoT_search/ (a rerun skips finished items, retries failed ones).

Usage (the key from OPENAI_API_KEY, or --api_key):
    python search_for_complex_reasoning_path.py --data_path data/demo_data.json --efficient_search True \
        --max_search_attempts 1 --max_search_depth 2 --model_name gpt-4o [--api_url ...] [--seed 42]
"""

from dataclasses import dataclass, field

from huatuo_o1 import cli, outputs
from huatuo_o1.item_store import task_store
from huatuo_o1.llm_jobs import JobArguments, run_items
from huatuo_o1.records import GROUND_TRUTH, OPEN_QUESTION, SFT_FIELDS, InputError, load_records
from huatuo_o1.search import PROMPTS, has_problem, search_item
from huatuo_o1.teacher import ApiArguments, Teacher
from huatuo_o1.teacher_prompts import load_prompts


@dataclass
class SearchArguments:
    efficient_search: bool = field(
        default=True,
        metadata={"help": "After a failed search, one round that shows the reference answer (True/False/1/0)."},
    )
    max_search_attempts: int = field(default=1, metadata={"help": "Attempts, each restarting from the first trace."})
    max_search_depth: int = field(default=2, metadata={"help": "Strategy rounds per attempt."})
    num_process: int = field(default=5, metadata={"help": "Requests in flight at once."})
    seed: int = field(
        default=42, metadata={"help": "Strategy choices are drawn from Random(seed, item), so reruns repeat them."}
    )

    def __post_init__(self):
        cli.check_ranges(self, at_least_1=("num_process",), at_least_0=("max_search_attempts", "max_search_depth"))


def main():
    args, job, api = cli.parse((SearchArguments, JobArguments, ApiArguments))
    outputs.check_output_paths(job)  # before any request: the outputs can be written and none is the input

    # Load.
    rows = load_records(job.data_path)
    usable = [row for row in rows if has_problem(row)]
    if not usable:
        raise InputError(
            f"{job.data_path}: no row has both '{OPEN_QUESTION}' and '{GROUND_TRUTH}' as non-empty text; "
            "make them with construct_verifiable_medical_problems.py and pass its *_final_<N>.json file"
        )
    prompts = load_prompts(PROMPTS, job.language, job.prompt_dir)
    teacher = Teacher(api, concurrency=args.num_process)
    items = usable[: job.limit_num]
    print(
        f"loaded {len(rows)} items from {job.data_path}: {len(usable)} verifiable "
        f"({len(rows) - len(usable)} skipped); processing {len(items)}",
        flush=True,
    )

    # Do: each item's search; finished items are kept on disk as they finish.
    def search(record, trace, key):
        return search_item(
            record,
            trace,
            key,
            teacher=teacher,
            prompts=prompts,
            reply_parsing=api.reply_parsing,
            seed=args.seed,
            max_search_attempts=args.max_search_attempts,
            max_search_depth=args.max_search_depth,
            efficient_search=args.efficient_search,
        )

    work_settings = {
        "efficient_search": args.efficient_search,
        "max_search_attempts": args.max_search_attempts,
        "max_search_depth": args.max_search_depth,
        "seed": args.seed,
        "language": job.language,
        "reply_parsing": api.reply_parsing,
        "max_tokens": api.max_tokens,
    }
    # holds the progress folder's lock: a second run on it refuses to start
    task, store = task_store(job, "_CoT_search")
    with store:
        entries, this_run = run_items(search, items, store, work_settings, teacher, "search")

        # Save: the SFT data (exactly its three fields), every record, a summary.
        sft_rows = [
            {key: entry["record"][key] for key in SFT_FIELDS}
            for entry in entries
            if entry["outcome"].startswith("verified")
        ]
        output_path = job.output_path or f"{task}_{len(sft_rows)}.json"
        summary = outputs.summarise(
            "search_for_complex_reasoning_path",
            entries,
            this_run,
            {"progress_dir": store.folder},
            outputs.public_settings(args, job, api),
            skipped=len(rows) - len(usable),
        )
        outputs.write_outputs(output_path, sft_rows, entries, summary)


if __name__ == "__main__":
    cli.run(main)
