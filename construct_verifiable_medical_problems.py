"""Construct: turn multiple-choice medical exam items into open-ended problems with checkable answers.

For each item (`question`, `options`, `answer_idx`, `answer`) a teacher LLM
  1. (with --filter_data) judges it: "Pass", "Too Simple", "Ambiguous Answer" or "Not Reformulatable";
     anything but Pass is kept in the records with its verdict and left out of the output;
  2. rewrites it as JSON {"Open-ended Verifiable Question": ..., "Ground-True Answer": ...}.

Progress is one file per item under <output_dir>/<input name>/: a rerun skips finished items and
retries failed ones. Outputs: <input name>_final_<N>.json (the N verifiable problems: input fields
plus the two keys), <...>_records.json (every item with its verdicts, failures and the LLM exchanges)
and <...>_summary.json (counts by outcome, API calls, tokens).

Usage (the key from OPENAI_API_KEY, or --api_key):
    python construct_verifiable_medical_problems.py --data_path data/demo_data.json --filter_data \
        --model_name gpt-4o [--api_url http://host:port/v1] [--num_process 10] [--language zh]
"""

from dataclasses import dataclass, field

from huatuo_o1 import cli, outputs
from huatuo_o1.construct import PROMPTS, check_items, construct_item
from huatuo_o1.item_store import task_store
from huatuo_o1.llm_jobs import JobArguments, run_items
from huatuo_o1.records import ANSWER, OPTIONS, QUESTION, load_records
from huatuo_o1.teacher import ApiArguments, Teacher
from huatuo_o1.teacher_prompts import load_prompts


@dataclass
class ConstructArguments:
    filter_data: bool = field(
        default=False, metadata={"help": "Ask the LLM to judge each item first and drop all but Pass."}
    )
    num_process: int = field(default=10, metadata={"help": "Requests in flight at once."})

    def __post_init__(self):
        cli.check_ranges(self, at_least_1=("num_process",))


def main():
    args, job, api = cli.parse((ConstructArguments, JobArguments, ApiArguments))
    outputs.check_output_paths(job)  # before any request: the outputs can be written and none is the input

    # Load.
    rows = load_records(job.data_path, required_fields=(QUESTION, OPTIONS, ANSWER))
    check_items(rows, job.data_path)
    prompts = load_prompts(PROMPTS, job.language, job.prompt_dir)
    teacher = Teacher(api, concurrency=args.num_process)
    items = rows[: job.limit_num]
    print(f"loaded {len(rows)} items from {job.data_path}; processing {len(items)}", flush=True)

    # Do: each item judged (with --filter_data) and rewritten; finished items are kept on disk as they finish.
    def construct(record, trace, key):
        return construct_item(record, trace, teacher, prompts, args.filter_data, api.reply_parsing)

    work_settings = {
        "filter_data": args.filter_data,
        "language": job.language,
        "reply_parsing": api.reply_parsing,
        "max_tokens": api.max_tokens,
    }
    task, store = task_store(job)  # holds the progress folder's lock: a second run on it refuses to start
    with store:
        entries, this_run = run_items(construct, items, store, work_settings, teacher, "construct")

        # Save: the verifiable problems, every record, a summary.
        audit_keys = ("outcome", "failure_reason", "llm_log", "filter_verdict")
        verifiable = [
            {k: v for k, v in entry["record"].items() if k not in audit_keys}
            for entry in entries
            if entry["outcome"] == "verifiable"
        ]
        output_path = job.output_path or f"{task}_final_{len(verifiable)}.json"
        settings = outputs.public_settings(args, job, api)
        summary = outputs.summarise(
            "construct_verifiable_medical_problems", entries, this_run, {"progress_dir": store.folder}, settings
        )
        outputs.write_outputs(output_path, verifiable, entries, summary)


if __name__ == "__main__":
    cli.run(main)
