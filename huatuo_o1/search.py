"""Search's own logic: the teacher's reasoning traces and verdicts, and the search for one item.

search_for_complex_reasoning_path.py runs search_item on every item through huatuo_o1/llm_jobs.py.
"""

import copy
import json
import random
import re

from huatuo_o1.records import (
    GROUND_TRUTH,
    OPEN_QUESTION,
    REFERENCE_ANSWER,
    SFT_COT,
    SFT_QUESTION,
    SFT_RESPONSE,
    VERDICT,
    VERIFICATIONS,
    VERIFIED_RESPONSE,
)
from huatuo_o1.teacher import ItemTrace, Teacher
from huatuo_o1.teacher_prompts import parse_json_object, parse_json_object_as_original, render

# strategy name (as in response_type Re_CoT_<name>) -> its template
STRATEGIES = {
    "Backtracking": "strategy_backtracking",
    "Exploring New Paths": "strategy_exploring_new_paths",
    "Verification": "strategy_verification",
    "Correction": "strategy_correction",
}
# template name -> the placeholders it must contain
PROMPTS = {
    "reason": ["question"],
    **{template: ["question", "reasoning"] for template in STRATEGIES.values()},
    "label_hint": ["question", "reasoning", "reference_answer"],
    "verify": ["conclusion", "reference_answer"],
    "natural": ["reasoning", "question"],
    "final_response": ["thinking", "question"],
}
TRACE_END = ["Inner Thinking", "Final Conclusion", "Verification"]


def parse_trace(reply: str) -> list[dict]:
    """A CoT list whose last three actions are Inner Thinking, Final Conclusion, Verification."""
    cot = parse_json_object(reply).get("CoT")
    if not isinstance(cot, list) or len(cot) < 3:
        raise ValueError("'CoT' is not a list of at least three actions")
    for action in cot:
        if not (
            isinstance(action, dict) and isinstance(action.get("content"), str) and action.get("action") in TRACE_END
        ):
            raise ValueError(f"malformed action {str(action)[:80]}")
    if [a["action"] for a in cot[-3:]] != TRACE_END:
        raise ValueError("the trace does not end with Inner Thinking, Final Conclusion, Verification")
    return cot


def parse_true_false(reply: str) -> bool:
    """The verdict: the reply's first word if it is True/False, else the only one of the two it uses."""
    words = [w.lower() for w in re.findall(r"\b(true|false)\b", reply, re.IGNORECASE)]
    first = re.match(r"\W*(true|false)\b", reply, re.IGNORECASE)
    if first:
        return first.group(1).lower() == "true"
    if len(set(words)) != 1:
        raise ValueError(f"expected True or False, got {reply[:60]!r}")
    return words[0] == "true"


def parse_natural(reply: str) -> str:
    """The thinking exactly as the JSON holds it (becomes Complex_CoT; the original did not strip it)."""
    thinking = parse_json_object(reply).get("NaturalReasoning")
    if not isinstance(thinking, str) or "\n" not in thinking.strip():
        raise ValueError("'NaturalReasoning' must be text with line breaks")
    return thinking


def parse_response(reply: str) -> str:
    """The reply exactly as sent (becomes Response; the original did not strip it)."""
    if not reply.strip():
        raise ValueError("empty reply")
    return reply


# --reply_parsing original: the original's tests, kept to reproduce its data (see docs/fidelity.md).
def parse_trace_as_original(reply: str) -> list[dict]:
    """Only the last three actions are checked (Inner Thinking, Final Conclusion, Verification)."""
    try:
        cot = parse_json_object_as_original(reply)["CoT"]
        if not isinstance(cot, list) or [a["action"] for a in cot[-3:]] != TRACE_END:
            raise ValueError("the trace does not end with Inner Thinking, Final Conclusion, Verification")
    except (KeyError, TypeError, IndexError) as error:
        raise ValueError(f"malformed trace: {error!r}") from None
    return cot


def parse_true_false_as_original(reply: str) -> bool:
    """True when "true" occurs anywhere in the reply, in any case ("not true" is True too)."""
    return "true" in reply.lower()


def parse_natural_as_original(reply: str) -> str:
    thinking = parse_json_object_as_original(reply).get("NaturalReasoning")
    if not isinstance(thinking, str) or "\n" not in thinking:
        raise ValueError("'NaturalReasoning' must be text with a line break (after raw newlines were deleted)")
    return thinking


def parse_response_as_original(reply: str) -> str:
    return reply


PARSERS = {
    "strict": {
        "trace": parse_trace,
        "verdict": parse_true_false,
        "natural": parse_natural,
        "response": parse_response,
    },
    "original": {
        "trace": parse_trace_as_original,
        "verdict": parse_true_false_as_original,
        "natural": parse_natural_as_original,
        "response": parse_response_as_original,
    },
}


def trace_as_text(cot: list[dict]) -> str:
    """ "### <title, or the action name>" blocks with their content, blank lines between, the whole
    stripped; the Final Conclusion shows as "Conclusion" (the original's rendering)."""
    blocks = []
    for action in cot:
        heading = action["title"] if "title" in action else action["action"].replace("Final Conclusion", "Conclusion")
        blocks.append(f"### {heading}\n{action['content']}\n")
    return "\n".join(blocks).strip()


def has_problem(row: dict) -> bool:
    return all(isinstance(row.get(key), str) and row[key].strip() for key in (OPEN_QUESTION, GROUND_TRUTH))


def search_item(
    record: dict,
    trace: ItemTrace,
    key: str,
    *,
    teacher: Teacher,
    prompts: dict,
    reply_parsing: str,
    seed: int,
    max_search_attempts: int,
    max_search_depth: int,
    efficient_search: bool,
) -> str:
    """Search one item's reasoning path (results go into record); returns the outcome."""
    read = PARSERS[reply_parsing]
    question, reference = record[OPEN_QUESTION], record[GROUND_TRUTH]
    rng = random.Random(f"{seed}-{key}")
    record[VERIFICATIONS] = []  # every verdict of every attempt: verifier training data

    def verify(state):
        conclusion = state["Long_CoT"][-2]["content"]
        prompt = render(prompts["verify"], conclusion=conclusion, reference_answer=reference)
        verdict = teacher.ask("verify", prompt, read["verdict"], trace)
        record[VERIFICATIONS].append({VERIFIED_RESPONSE: conclusion, REFERENCE_ANSWER: reference, VERDICT: verdict})
        state["verify"].append(verdict)
        record.update(state)  # kept up to date, so a failed item still shows how far it got
        return verdict

    def continue_trace(state, step, template, response_type, **values):
        reasoning = json.dumps(state["Long_CoT"][:-1], ensure_ascii=False, indent=2)
        new_actions = teacher.ask(
            step, render(template, question=question, reasoning=reasoning, **values), read["trace"], trace
        )
        state["Long_CoT"] = state["Long_CoT"][:-1] + new_actions  # the new actions replace the last Verification
        state["response_type"].append(response_type)
        record.update(state)

    first = teacher.ask("reason", render(prompts["reason"], question=question), read["trace"], trace)
    initial = {"Long_CoT": first, "verify": [], "response_type": ["Init_CoT"]}
    verify(initial)
    state, prior_fail_try = copy.deepcopy(initial), []
    record["prior_fail_try"] = prior_fail_try
    for attempt in range(max_search_attempts):
        if attempt > 0:
            prior_fail_try.append(state)
            state = copy.deepcopy(initial)
        for depth in range(max_search_depth):
            if state["verify"][-1]:
                break
            allowed = [name for name in STRATEGIES if depth > 0 or name != "Backtracking"]
            strategy = rng.choice(allowed)
            continue_trace(state, f"strategy {strategy}", prompts[STRATEGIES[strategy]], f"Re_CoT_{strategy}")
            verify(state)
        if state["verify"][-1]:
            break
    if not state["verify"][-1] and efficient_search:
        continue_trace(state, "label hint", prompts["label_hint"], "Label_CoT", reference_answer=reference)
        state["verify"].append(True)  # the answer was shown: counts as verified, not checked
    record.update(state)
    if not state["verify"][-1]:
        return "unverified"

    thinking = teacher.ask(
        "natural",
        render(prompts["natural"], reasoning=trace_as_text(state["Long_CoT"]), question=question),
        read["natural"],
        trace,
    )
    response = teacher.ask(
        "final response",
        render(prompts["final_response"], thinking=thinking, question=question),
        read["response"],
        trace,
    )
    record.update({SFT_QUESTION: question, SFT_COT: thinking, SFT_RESPONSE: response})
    return "verified" if "Label_CoT" not in state["response_type"] else "verified_with_label"
