"""One rule for the answer layout: SFT writes it, and the RL reward, the evaluation report and
inference.py judge a reply well-formed or malformed alike (huatuo_o1/answer_format.py)."""

import io

import pytest
import torch

from huatuo_o1 import answer_format
from huatuo_o1.chat import SectionPrinter
from huatuo_o1.evaluation import scoring
from huatuo_o1.rl.reward import RLReward, trl_reward_functions
from huatuo_o1.verifier import PAPER_REWARD, VerifierReward

OPTIONS = {"A": "Pneumonia", "B": "Asthma", "C": "Croup", "D": "Gout"}

# (reply, well-formed?)
REPLIES = [
    ("## Thinking\n\nFever and cough.\n\n## Final Response\n\nPneumonia.", True),
    ("## Thinking\nshort\n## Final Response\n\nThe answer is A.", True),  # a blank line is needed only after Final
    ("## Final Response\n\nA.\n\n## Thinking\n\nwhy", True),  # one of each, in any order
    ("## Thinking\n\nx\n\n## Final Response\n\n", True),  # an empty final response is still the layout
    # the disagreement this rule settles: one newline after the heading (evaluation used to count it well-formed)
    ("## Thinking\n\nFever and cough.\n\n## Final Response\nPneumonia.", False),
    ("## Thinking\n\nFever and cough.\n\n## Final Response Pneumonia.", False),
    ("Fever and cough.\n\n## Final Response\n\nPneumonia.", False),  # no thinking
    ("## Thinking\n\nFever and cough, so pneumonia", False),  # cut before the final response
    ("## Thinking\n\nA\n\n## Thinking\n\nB\n\n## Final Response\n\nC", False),  # two thinking sections
    ("## Thinking\n\nA\n\n## Final Response\n\nB\n\n## Final Response\n\nC", False),  # two final responses
    ("### Thinking\n\nA\n\n### Final Response\n\nB", True),  # "### Thinking" contains "## Thinking" (substring rule)
    ("# Thinking\n\nA\n\n# Final Response\n\nB", False),
    ("## thinking\n\nA\n\n## final response\n\nB", False),  # case matters
    ("The answer is A.", False),
    ("", False),
]


class Tokenizer:
    eos_token = "</s>"


def reward_says(replies):
    """The RL reward's verdict, from the texts it would show the verifier (no model needed for the gate)."""
    reward = VerifierReward(torch.nn.Linear(1, 1), Tokenizer(), template="{response}|{reference}|{eos_token}")
    _, well_formed = reward.inputs(replies, ["Pneumonia"] * len(replies))
    return well_formed.tolist()


def trl_reward_says(replies):
    """The format column RLOO / GRPO log (completions as trl passes conversational ones)."""
    format_ok = trl_reward_functions(RLReward("rule", PAPER_REWARD), [])[0][1]
    return [bool(x) for x in format_ok(None, [[{"role": "assistant", "content": r}] for r in replies])]


def evaluation_says(replies):
    """format_ok of the evaluation's per-item verdict (the report's format rate counts it)."""
    item = {"options": OPTIONS, "answer_idx": "A"}
    return [scoring.score_item(item, scoring.clean_reply(r))["format_ok"] for r in replies]


def inference_says(replies):
    """inference.py's verdict on the streamed reply, fed in chunks that split the headings."""
    verdicts = []
    for reply in replies:
        printer = SectionPrinter(io.StringIO())
        for start in range(0, len(reply), 3):
            printer.feed(reply[start : start + 3])
        verdicts.append(printer.close()["well_formed"])
    return verdicts


def test_reward_evaluation_and_inference_classify_replies_alike():
    replies = [reply for reply, _ in REPLIES]
    expected = [ok for _, ok in REPLIES]
    assert [answer_format.is_well_formed(r) for r in replies] == expected
    assert reward_says(replies) == expected
    assert trl_reward_says(replies) == expected
    assert evaluation_says(replies) == expected
    assert inference_says(replies) == expected


def test_the_report_counts_the_format_rate_with_the_same_rule():
    records = [{"options": OPTIONS, "answer_idx": "A"} for _ in REPLIES]
    verdicts = [scoring.score_item(item, reply) for item, (reply, _) in zip(records, REPLIES)]
    share = round(100.0 * sum(ok for _, ok in REPLIES) / len(REPLIES), 2)
    assert scoring.summarize(verdicts)["format_rate"] == share


@pytest.mark.parametrize(
    "cot, response",
    [("Fever and cough.\nHmm, pneumonia.", "Pneumonia."), ("\n spaced \n", "  Answer with spaces.\n\n")],
)
def test_sft_writes_what_the_reward_reads(cot, response):
    turn = answer_format.assistant_turn(cot, response)
    assert turn == f"## Thinking\n\n{cot}\n\n## Final Response\n\n{response}"  # the stored texts, untouched
    assert answer_format.is_well_formed(turn)
    assert answer_format.final_answer(turn) == response.strip()
    parts = answer_format.split_reply(turn)
    assert (parts.thinking, parts.final_response, parts.unlabelled) == (cot.strip(), response.strip(), "")


def test_the_paper_scorer_reads_after_the_same_marker():
    assert scoring.PAPER_FINAL_MARK == answer_format.FINAL_MARK == "## Final Response\n\n"
    # the original scorer's rule 1 (the last marker), kept as it was: it reads malformed replies too
    assert scoring.paper_final_part("x\n\n## Final Response\n\nA\n\n## Final Response\n\nB") == "B"
    assert scoring.paper_final_part("## Final Response\nB") == "## Final Response\nB"
