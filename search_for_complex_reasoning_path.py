"""Stage B: search a complex reasoning path for each verifiable problem, verified against its answer.

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

import copy
import json
import random
import re
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from llm_jobs import (
    ApiArguments, ItemStore, JobArguments, Teacher, load_prompts, parse_json_object, parse_json_object_as_original,
    public_settings, render, run_items, summarise, task_name_of, write_outputs,
)
from pipeline_io import InputError, load_records

QUESTION, ANSWER = "Open-ended Verifiable Question", "Ground-True Answer"
# strategy name (as in response_type Re_CoT_<name>) -> its template
STRATEGIES = {
    "Backtracking": "strategy_backtracking",
    "Exploring New Paths": "strategy_exploring_new_paths",
    "Verification": "strategy_verification",
    "Correction": "strategy_correction",
}
PROMPTS = {
    "reason": ["question"],
    **{template: ["question", "reasoning"] for template in STRATEGIES.values()},
    "label_hint": ["question", "reasoning", "reference_answer"],
    "verify": ["conclusion", "reference_answer"],
    "natural": ["reasoning", "question"],
    "final_response": ["thinking", "question"],
}


@dataclass
class SearchArguments:
    efficient_search: bool = field(
        default=True, metadata={"help": "After a failed search, one round that shows the reference answer (True/False/1/0)."}
    )
    max_search_attempts: int = field(default=1, metadata={"help": "Attempts, each restarting from the first trace."})
    max_search_depth: int = field(default=2, metadata={"help": "Strategy rounds per attempt."})
    num_process: int = field(default=5, metadata={"help": "Requests in flight at once."})
    seed: int = field(default=42, metadata={"help": "Strategy choices are drawn from Random(seed, item), so reruns repeat them."})


def parse_trace(reply):
    """A CoT list whose last three actions are Inner Thinking, Final Conclusion, Verification."""
    cot = parse_json_object(reply).get("CoT")
    if not isinstance(cot, list) or len(cot) < 3:
        raise ValueError("'CoT' is not a list of at least three actions")
    for action in cot:
        if not (isinstance(action, dict) and isinstance(action.get("content"), str)
                and action.get("action") in ("Inner Thinking", "Final Conclusion", "Verification")):
            raise ValueError(f"malformed action {str(action)[:80]}")
    if [a["action"] for a in cot[-3:]] != ["Inner Thinking", "Final Conclusion", "Verification"]:
        raise ValueError("the trace does not end with Inner Thinking, Final Conclusion, Verification")
    return cot


def parse_true_false(reply):
    """The verdict: the reply's first word if it is True/False, else the only one of the two it uses."""
    words = [w.lower() for w in re.findall(r"\b(true|false)\b", reply, re.IGNORECASE)]
    first = re.match(r"\W*(true|false)\b", reply, re.IGNORECASE)
    if first:
        return first.group(1).lower() == "true"
    if len(set(words)) != 1:
        raise ValueError(f"expected True or False, got {reply[:60]!r}")
    return words[0] == "true"


def parse_natural(reply):
    """The thinking exactly as the JSON holds it (becomes Complex_CoT; the original did not strip it)."""
    thinking = parse_json_object(reply).get("NaturalReasoning")
    if not isinstance(thinking, str) or "\n" not in thinking.strip():
        raise ValueError("'NaturalReasoning' must be text with line breaks")
    return thinking


def parse_response(reply):
    """The reply exactly as sent (becomes Response; the original did not strip it)."""
    if not reply.strip():
        raise ValueError("empty reply")
    return reply


# --reply_parsing original: the original's tests, kept to reproduce its data (see docs/fidelity.md).
def parse_trace_as_original(reply):
    """Only the last three actions are checked (Inner Thinking, Final Conclusion, Verification)."""
    try:
        cot = parse_json_object_as_original(reply)["CoT"]
        if not isinstance(cot, list) or [a["action"] for a in cot[-3:]] != ["Inner Thinking", "Final Conclusion", "Verification"]:
            raise ValueError("the trace does not end with Inner Thinking, Final Conclusion, Verification")
    except (KeyError, TypeError, IndexError) as error:
        raise ValueError(f"malformed trace: {error!r}") from None
    return cot


def parse_true_false_as_original(reply):
    """True when "true" occurs anywhere in the reply, in any case ("not true" is True too)."""
    return "true" in reply.lower()


def parse_natural_as_original(reply):
    thinking = parse_json_object_as_original(reply).get("NaturalReasoning")
    if not isinstance(thinking, str) or "\n" not in thinking:
        raise ValueError("'NaturalReasoning' must be text with a line break (after raw newlines were deleted)")
    return thinking


def parse_response_as_original(reply):
    return reply


PARSERS = {
    "strict": {"trace": parse_trace, "verdict": parse_true_false, "natural": parse_natural, "response": parse_response},
    "original": {"trace": parse_trace_as_original, "verdict": parse_true_false_as_original,
                 "natural": parse_natural_as_original, "response": parse_response_as_original},
}


def trace_as_text(cot):
    """"### <title, or the action name>" blocks with their content, blank lines between, the whole
    stripped; the Final Conclusion shows as "Conclusion" (the original's rendering)."""
    blocks = []
    for action in cot:
        heading = action["title"] if "title" in action else action["action"].replace("Final Conclusion", "Conclusion")
        blocks.append(f"### {heading}\n{action['content']}\n")
    return "\n".join(blocks).strip()


def has_problem(row):
    return all(isinstance(row.get(key), str) and row[key].strip() for key in (QUESTION, ANSWER))


def main():
    parser = HfArgumentParser((SearchArguments, JobArguments, ApiArguments))
    args, job, api = parser.parse_args_into_dataclasses()
    if not job.data_path:
        parser.error("--data_path is required")
    try:
        rows = load_records(job.data_path)
        usable = [row for row in rows if has_problem(row)]
        if not usable:
            raise InputError(
                f"{job.data_path}: no row has both '{QUESTION}' and '{ANSWER}' as non-empty text; "
                "make them with construct_verifiable_medical_problems.py and pass its *_final_<N>.json file"
            )
        prompts = load_prompts(PROMPTS, job.language, job.prompt_dir)
        teacher = Teacher(api, concurrency=args.num_process)
    except InputError as error:
        sys.exit(f"error: {error}")
    items = usable[: job.limit_num]
    read = PARSERS[api.reply_parsing]
    print(f"loaded {len(rows)} items from {job.data_path}: {len(usable)} verifiable "
          f"({len(rows) - len(usable)} skipped); processing {len(items)}", flush=True)

    def search(record, trace, key):
        question, reference = record[QUESTION], record[ANSWER]
        rng = random.Random(f"{args.seed}-{key}")
        record["verifications"] = []  # every verdict of every attempt: verifier training data

        def verify(state):
            conclusion = state["Long_CoT"][-2]["content"]
            prompt = render(prompts["verify"], conclusion=conclusion, reference_answer=reference)
            verdict = teacher.ask("verify", prompt, read["verdict"], trace)
            record["verifications"].append({"response": conclusion, "reference_answer": reference, "verdict": verdict})
            state["verify"].append(verdict)
            record.update(state)  # kept up to date, so a failed item still shows how far it got
            return verdict

        def continue_trace(state, step, template, response_type, **values):
            reasoning = json.dumps(state["Long_CoT"][:-1], ensure_ascii=False, indent=2)
            new_actions = teacher.ask(step, render(template, question=question, reasoning=reasoning, **values), read["trace"], trace)
            state["Long_CoT"] = state["Long_CoT"][:-1] + new_actions  # the new actions replace the last Verification
            state["response_type"].append(response_type)
            record.update(state)

        first = teacher.ask("reason", render(prompts["reason"], question=question), read["trace"], trace)
        initial = {"Long_CoT": first, "verify": [], "response_type": ["Init_CoT"]}
        verify(initial)
        state, prior_fail_try = copy.deepcopy(initial), []
        record["prior_fail_try"] = prior_fail_try
        for attempt in range(args.max_search_attempts):
            if attempt > 0:
                prior_fail_try.append(state)
                state = copy.deepcopy(initial)
            for depth in range(args.max_search_depth):
                if state["verify"][-1]:
                    break
                allowed = [name for name in STRATEGIES if depth > 0 or name != "Backtracking"]
                strategy = rng.choice(allowed)
                continue_trace(state, f"strategy {strategy}", prompts[STRATEGIES[strategy]], f"Re_CoT_{strategy}")
                verify(state)
            if state["verify"][-1]:
                break
        if not state["verify"][-1] and args.efficient_search:
            continue_trace(state, "label hint", prompts["label_hint"], "Label_CoT", reference_answer=reference)
            state["verify"].append(True)  # the answer was shown: counts as verified, not checked
        record.update(state)
        if not state["verify"][-1]:
            return "unverified"

        thinking = teacher.ask("natural", render(prompts["natural"], reasoning=trace_as_text(state["Long_CoT"]), question=question),
                               read["natural"], trace)
        response = teacher.ask("final response", render(prompts["final_response"], thinking=thinking, question=question),
                               read["response"], trace)
        record.update({"Question": question, "Complex_CoT": thinking, "Response": response})
        return "verified" if "Label_CoT" not in state["response_type"] else "verified_with_label"

    task = task_name_of(job.data_path) + "_CoT_search" + ("_zh" if job.language == "zh" else "")
    store = ItemStore(f"{job.output_dir}/{task}")
    work_settings = {"efficient_search": args.efficient_search, "max_search_attempts": args.max_search_attempts,
                     "max_search_depth": args.max_search_depth, "seed": args.seed, "language": job.language,
                     "reply_parsing": api.reply_parsing, "max_tokens": api.max_tokens}
    entries, this_run = run_items(search, items, store, work_settings, teacher, "search")

    sft_rows = [
        {key: entry["record"][key] for key in ("Question", "Complex_CoT", "Response")}
        for entry in entries if entry["outcome"].startswith("verified")
    ]
    output_path = job.output_path or f"{task}_{len(sft_rows)}.json"
    summary = summarise("search_for_complex_reasoning_path", entries, this_run, {"progress_dir": store.folder},
                        public_settings(args, job, api), skipped=len(rows) - len(usable))
    write_outputs(output_path, sft_rows, entries, summary)


if __name__ == "__main__":
    main()
