"""Construct's own logic: an exam item as text, the teacher's verdict and problem replies, one item's work.

construct_verifiable_medical_problems.py runs construct_item on every item through huatuo_o1/llm_jobs.py.
"""

import re

from huatuo_o1.records import ANSWER, GROUND_TRUTH, OPEN_QUESTION, OPTIONS, QUESTION, InputError
from huatuo_o1.teacher import ItemTrace, Teacher
from huatuo_o1.teacher_prompts import parse_json_object, parse_json_object_as_original, render

FILTER_VERDICTS = ("Pass", "Too Simple", "Ambiguous Answer", "Not Reformulatable")
# template name -> the placeholders it must contain
PROMPTS = {
    "filter": ["question_with_options", "answer"],
    "reformat": ["question_with_options", "answer"],
}


def option_line(letter: str, text: str) -> str:
    return f"{letter}. {text}"


def question_with_options(item: dict) -> str:
    return item[QUESTION] + "\n" + "\n".join(option_line(letter, text) for letter, text in item[OPTIONS].items())


def parse_verdict(reply: str) -> str:
    """The filter label the reply ends on (the last one it names)."""
    found = [
        (m.start(), label) for label in FILTER_VERDICTS for m in re.finditer(rf"\b{label}\b", reply, re.IGNORECASE)
    ]
    if not found:
        raise ValueError(f"none of {FILTER_VERDICTS} in the reply")
    return max(found)[1]


def parse_problem(reply: str) -> tuple[str, str]:
    """The two texts exactly as the JSON holds them (the original did not strip them either)."""
    problem = parse_json_object(reply)
    question, answer = problem.get(OPEN_QUESTION), problem.get(GROUND_TRUTH)
    if not (isinstance(question, str) and question.strip() and isinstance(answer, str) and answer.strip()):
        raise ValueError(f"the JSON lacks a non-empty '{OPEN_QUESTION}' or '{GROUND_TRUTH}'")
    return question, answer


# --reply_parsing original: the original's tests, kept to reproduce its data (see docs/fidelity.md).
def parse_verdict_as_original(reply: str) -> str:
    """Pass when "pass" occurs anywhere in the reply, in any case ("does not pass" passes too)."""
    return "Pass" if "pass" in reply.lower() else "Not Pass"


def parse_problem_as_original(reply: str) -> tuple[str, str]:
    """Exactly two keys, both text (empty text allowed)."""
    problem = parse_json_object_as_original(reply)
    question, answer = problem.get(OPEN_QUESTION), problem.get(GROUND_TRUTH)
    if len(problem) != 2 or not (isinstance(question, str) and isinstance(answer, str)):
        raise ValueError("the JSON must hold exactly the two keys, both text")
    return question, answer


PARSERS = {
    "strict": (parse_verdict, parse_problem),
    "original": (parse_verdict_as_original, parse_problem_as_original),
}


def check_items(rows: list[dict], path: str) -> None:
    for index, row in enumerate(rows):
        if not isinstance(row[OPTIONS], dict) or not row[OPTIONS]:
            raise InputError(
                f"{path}: row {index} has '{OPTIONS}' of type {type(row[OPTIONS]).__name__}, "
                "expected a non-empty object letter -> text"
            )
        if not isinstance(row[QUESTION], str) or not row[QUESTION].strip():
            raise InputError(f"{path}: row {index} has an empty or non-text '{QUESTION}'")


def construct_item(
    record: dict, trace: ItemTrace, teacher: Teacher, prompts: dict, filter_data: bool, reply_parsing: str
) -> str:
    """One item: judge it (with filter_data), then rewrite it; the results go into record. Returns the outcome."""
    read_verdict, read_problem = PARSERS[reply_parsing]
    text = question_with_options(record)
    if filter_data:
        verdict = teacher.ask(
            "filter", render(prompts["filter"], question_with_options=text, answer=record[ANSWER]), read_verdict, trace
        )
        record["filter_verdict"] = verdict
        if verdict != "Pass":
            return "filtered"
    question, answer = teacher.ask(
        "reformat", render(prompts["reformat"], question_with_options=text, answer=record[ANSWER]), read_problem, trace
    )
    record[OPEN_QUESTION], record[GROUND_TRUTH] = question, answer
    return "verifiable"
