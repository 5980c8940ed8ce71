"""Stage A: turn multiple-choice medical exam items into open-ended problems with checkable answers.

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

import re
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from llm_jobs import (
    ApiArguments, ItemStore, JobArguments, Teacher, load_prompts, parse_json_object, parse_json_object_as_original,
    public_settings, render, run_items, summarise, task_name_of, write_outputs,
)
from pipeline_io import InputError, load_records

FILTER_VERDICTS = ("Pass", "Too Simple", "Ambiguous Answer", "Not Reformulatable")
PROMPTS = {
    "filter": ["question_with_options", "answer"],
    "reformat": ["question_with_options", "answer"],
}


@dataclass
class ConstructArguments:
    filter_data: bool = field(default=False, metadata={"help": "Ask the LLM to judge each item first and drop all but Pass."})
    num_process: int = field(default=10, metadata={"help": "Requests in flight at once."})


def question_with_options(item):
    return item["question"] + "\n" + "\n".join(f"{letter}. {text}" for letter, text in item["options"].items())


def parse_verdict(reply):
    """The filter label the reply ends on (the last one it names)."""
    found = [(m.start(), label) for label in FILTER_VERDICTS for m in re.finditer(rf"\b{label}\b", reply, re.IGNORECASE)]
    if not found:
        raise ValueError(f"none of {FILTER_VERDICTS} in the reply")
    return max(found)[1]


def parse_problem(reply):
    """The two texts exactly as the JSON holds them (the original did not strip them either)."""
    problem = parse_json_object(reply)
    question, answer = problem.get("Open-ended Verifiable Question"), problem.get("Ground-True Answer")
    if not (isinstance(question, str) and question.strip() and isinstance(answer, str) and answer.strip()):
        raise ValueError("the JSON lacks a non-empty 'Open-ended Verifiable Question' or 'Ground-True Answer'")
    return question, answer


# --reply_parsing original: the original's tests, kept to reproduce its data (see docs/fidelity.md).
def parse_verdict_as_original(reply):
    """Pass when "pass" occurs anywhere in the reply, in any case ("does not pass" passes too)."""
    return "Pass" if "pass" in reply.lower() else "Not Pass"


def parse_problem_as_original(reply):
    """Exactly two keys, both text (empty text allowed)."""
    problem = parse_json_object_as_original(reply)
    question, answer = problem.get("Open-ended Verifiable Question"), problem.get("Ground-True Answer")
    if len(problem) != 2 or not (isinstance(question, str) and isinstance(answer, str)):
        raise ValueError("the JSON must hold exactly the two keys, both text")
    return question, answer


PARSERS = {"strict": (parse_verdict, parse_problem), "original": (parse_verdict_as_original, parse_problem_as_original)}


def check_items(rows, path):
    for index, row in enumerate(rows):
        if not isinstance(row["options"], dict) or not row["options"]:
            raise InputError(f"{path}: row {index} has 'options' of type {type(row['options']).__name__}, expected a non-empty object letter -> text")
        if not isinstance(row["question"], str) or not row["question"].strip():
            raise InputError(f"{path}: row {index} has an empty or non-text 'question'")


def main():
    parser = HfArgumentParser((ConstructArguments, JobArguments, ApiArguments))
    args, job, api = parser.parse_args_into_dataclasses()
    if not job.data_path:
        parser.error("--data_path is required")
    try:
        rows = load_records(job.data_path, required_fields=("question", "options", "answer"))
        check_items(rows, job.data_path)
        prompts = load_prompts(PROMPTS, job.language, job.prompt_dir)
        teacher = Teacher(api, concurrency=args.num_process)
    except InputError as error:
        sys.exit(f"error: {error}")
    items = rows[: job.limit_num]
    read_verdict, read_problem = PARSERS[api.reply_parsing]
    print(f"loaded {len(rows)} items from {job.data_path}; processing {len(items)}", flush=True)

    def construct(record, trace, key):
        text = question_with_options(record)
        if args.filter_data:
            verdict = teacher.ask("filter", render(prompts["filter"], question_with_options=text, answer=record["answer"]),
                                  read_verdict, trace)
            record["filter_verdict"] = verdict
            if verdict != "Pass":
                return "filtered"
        question, answer = teacher.ask(
            "reformat", render(prompts["reformat"], question_with_options=text, answer=record["answer"]), read_problem, trace
        )
        record["Open-ended Verifiable Question"], record["Ground-True Answer"] = question, answer
        return "verifiable"

    task = task_name_of(job.data_path) + ("_zh" if job.language == "zh" else "")
    store = ItemStore(f"{job.output_dir}/{task}")
    work_settings = {"filter_data": args.filter_data, "language": job.language, "reply_parsing": api.reply_parsing,
                     "max_tokens": api.max_tokens}
    entries, this_run = run_items(construct, items, store, work_settings, teacher, "construct")

    audit_keys = ("outcome", "failure_reason", "llm_log", "filter_verdict")
    verifiable = [
        {k: v for k, v in entry["record"].items() if k not in audit_keys} for entry in entries if entry["outcome"] == "verifiable"
    ]
    output_path = job.output_path or f"{task}_final_{len(verifiable)}.json"
    settings = public_settings(args, job, api)
    summary = summarise("construct_verifiable_medical_problems", entries, this_run, {"progress_dir": store.folder}, settings)
    write_outputs(output_path, verifiable, entries, summary)


if __name__ == "__main__":
    main()
