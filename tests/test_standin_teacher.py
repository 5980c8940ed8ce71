"""The stand-in teacher, exercised through the real openai client."""

import json

import openai
import pytest
from openai import OpenAI

from huatuo_o1.serving import stop_pid
from tests.standin_teacher import WRONG_GUESS_MARK

ITEMS = [
    {
        "question": "A 60-year-old smoker has painless hematuria. Most likely diagnosis?",
        "options": {"A": "Renal stone", "B": "Bladder cancer", "C": "Cystitis", "D": "Prostatitis"},
        "answer_idx": "B",
        "answer": "Bladder cancer",
        "standin_rounds_to_correct": 1,
    },
    {
        "question": "Which of the following is NOT a cause of microcytic anemia?",
        "options": {"A": "Iron deficiency", "B": "Thalassemia", "C": "Folate deficiency", "D": "Sideroblastic anemia"},
        "answer_idx": "C",
        "answer": "Folate deficiency",
    },
]


def chat(client, text):
    reply = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": text}])
    return reply.choices[0].message.content, reply


@pytest.fixture
def teacher(start_teacher):
    return start_teacher(answer_key=ITEMS)


def test_replies_follow_the_spec_formats(teacher):
    client = OpenAI(base_url=teacher.base_url, api_key="sk-test", max_retries=0)
    q = ITEMS[0]["question"]

    verdict, _ = chat(client, f"Judge: Pass, Too Simple, Ambiguous Answer or Not Reformulatable?\n{q}")
    assert verdict.endswith("Pass")
    verdict, _ = chat(
        client, f"Judge: Pass, Too Simple, Ambiguous Answer or Not Reformulatable?\n{ITEMS[1]['question']}"
    )
    assert verdict.endswith("Ambiguous Answer")

    text, reply = chat(client, f"Rewrite with keys Open-ended Verifiable Question and Ground-True Answer.\n{q}")
    assert json.loads(text) == {"Open-ended Verifiable Question": q, "Ground-True Answer": "Bladder cancer"}
    assert reply.usage.completion_tokens == len(text) // 4 and reply.usage.prompt_tokens > 0

    # Round 0: a wrong guess (this item needs one fix); round 1, with the wrong guess in the prompt: right.
    text, _ = chat(client, f"Reason with Inner Thinking, Final Conclusion, Verification.\n{q}")
    cot = json.loads(text)["CoT"]
    assert [a["action"] for a in cot[-3:]] == ["Inner Thinking", "Final Conclusion", "Verification"]
    assert cot[-2]["content"] == "The answer is Renal stone." and WRONG_GUESS_MARK in cot[0]["title"]
    verdict, _ = chat(
        client, f"Does this match? Answer True or False.\n{cot[-2]['content']}\nReference: Bladder cancer"
    )
    assert verdict == "False"
    verdict, _ = chat(
        client, "Does this match? Answer True or False.\nThe answer is renal  stone.\nReference: Folate deficiency"
    )
    assert verdict == "True"  # only the wrong options of the item whose reference is shown count
    text, _ = chat(client, f"Continue with Inner Thinking, Final Conclusion.\n{q}\n{json.dumps(cot)}")
    fixed = json.loads(text)["CoT"]
    assert fixed[0]["action"] == "Verification" and fixed[-2]["content"] == "The answer is Bladder cancer."
    verdict, _ = chat(
        client, f"Does this match? Answer True or False.\n{fixed[-2]['content']}\nReference: Bladder cancer"
    )
    assert verdict == "True"

    text, _ = chat(client, f"Rewrite as NaturalReasoning.\n{q}")
    assert "\n" in json.loads(text)["NaturalReasoning"]

    text, _ = chat(client, f"Write the final answer for the user.\n{q}")
    assert "Bladder cancer" in text

    stats = teacher.stats()
    assert stats["total"] == 10
    assert stats["by_kind"] == {"cot": 2, "filter": 2, "natural": 1, "reformat": 1, "response": 1, "verify": 3}
    assert stats["by_outcome"] == {"ok": 10}
    # Every call that quoted a question is attributed to it; the verification prompts quote none.
    assert [call["question"] is None for call in stats["calls"]] == [False] * 4 + [
        True,
        True,
        False,
        True,
        False,
        False,
    ]


def test_label_hint_makes_the_answer_right_at_once(start_teacher):
    items = [dict(ITEMS[0], standin_rounds_to_correct=-1)]
    teacher = start_teacher(answer_key=items)
    client = OpenAI(base_url=teacher.base_url, api_key="k", max_retries=0)
    q = items[0]["question"]
    text, _ = chat(client, f"Inner Thinking then Final Conclusion.\n{q}")
    assert json.loads(text)["CoT"][-2]["content"] == "The answer is Renal stone."
    text, _ = chat(client, f"Inner Thinking then Final Conclusion. The reference answer is Bladder cancer.\n{q}")
    assert json.loads(text)["CoT"][-2]["content"] == "The answer is Bladder cancer."


@pytest.mark.parametrize(
    "fault, error",
    [("429", openai.RateLimitError), ("500", openai.InternalServerError), ("timeout", openai.APITimeoutError)],
)
def test_injected_http_faults_raise_the_clients_errors(start_teacher, fault, error):
    teacher = start_teacher(answer_key=ITEMS, fault_rate=1.0, faults=[fault], timeout_sleep_s=2)
    client = OpenAI(base_url=teacher.base_url, api_key="k", max_retries=0, timeout=0.5)
    with pytest.raises(error):
        chat(client, ITEMS[0]["question"])
    assert teacher.stats()["by_outcome"] == {fault: 1}


def test_client_retries_recover_from_429_and_every_attempt_is_counted(start_teacher):
    teacher = start_teacher(answer_key=ITEMS, fault_rate=1.0, faults=["429"])
    client = OpenAI(base_url=teacher.base_url, api_key="k", max_retries=3)
    with pytest.raises(openai.RateLimitError):
        chat(client, "hello")
    assert teacher.stats()["by_outcome"] == {"429": 4}  # the first try and three retries
    teacher.configure(fault_rate=0.0)
    text, _ = chat(client, "hello")
    assert teacher.stats()["total"] == 5 and text


def test_malformed_and_wrapped_json(start_teacher):
    teacher = start_teacher(answer_key=ITEMS, fault_rate=1.0, faults=["malformed"])
    client = OpenAI(base_url=teacher.base_url, api_key="k", max_retries=0)
    q = ITEMS[0]["question"]
    text, _ = chat(client, f"keys: Ground-True Answer\n{q}")
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert chat(client, f"True or False?\n{q}")[0] == "Maybe."

    teacher.configure(fault_rate=0.0, wrap="prose")
    text, _ = chat(client, f"keys: Ground-True Answer\n{q}")
    assert text.startswith("Sure") and "```json\n{" in text
    inner = text.split("```json\n", 1)[1].split("\n```", 1)[0]
    assert json.loads(inner)["Ground-True Answer"] == "Bladder cancer"
    assert teacher.stats()["by_outcome"] == {"malformed": 2, "ok": 1}


def test_fault_rate_is_roughly_honoured_and_reset_clears_counts(start_teacher):
    teacher = start_teacher(answer_key=ITEMS, fault_rate=0.3, faults=["500", "malformed"], seed=1)
    client = OpenAI(base_url=teacher.base_url, api_key="k", max_retries=0)
    for _ in range(100):
        try:
            chat(client, "True or False?")
        except openai.InternalServerError:
            pass
    outcomes = teacher.stats()["by_outcome"]
    assert sum(outcomes.values()) == 100
    assert 15 <= outcomes.get("500", 0) + outcomes.get("malformed", 0) <= 45
    teacher.reset()
    assert teacher.stats()["total"] == 0


def test_server_stops_by_pid(start_teacher):
    teacher = start_teacher()
    assert stop_pid(teacher.process.pid) is True
    assert teacher.process.poll() is not None
    assert stop_pid(teacher.process.pid) is False
