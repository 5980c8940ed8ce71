"""The answer layout HuatuoGPT-o1 is trained to write: the one place that knows its headings.

    ## Thinking

    {Complex_CoT}

    ## Final Response

    {Response}

- assistant_turn: the SFT target text (the stored texts used exactly as they are).
- is_well_formed: exactly one "## Thinking" and exactly one "## Final Response\\n\\n" (the heading and
  its blank line): the RL reward's rule, and the one the evaluation report's format rate and
  inference.py use too.
- final_answer: the stripped text after "## Final Response\\n\\n" of a well-formed reply, else None.
- split_reply: a reply's thinking and final response, for showing them apart (inference.py).
"""

from dataclasses import dataclass

THINKING = "## Thinking"
FINAL_RESPONSE = "## Final Response"
# The final response starts after its heading and a blank line: a reply without the blank line is malformed.
FINAL_MARK = FINAL_RESPONSE + "\n\n"
HEADINGS = (THINKING, FINAL_RESPONSE)


def assistant_turn(complex_cot: str, response: str) -> str:
    """The SFT target of one row."""
    return f"{THINKING}\n\n{complex_cot}\n\n{FINAL_MARK}{response}"


def is_well_formed(reply: str) -> bool:
    """Exactly one "## Thinking" and exactly one "## Final Response" followed by a blank line."""
    return reply.count(THINKING) == 1 and reply.count(FINAL_MARK) == 1


def final_answer(reply: str) -> str | None:
    """The stripped text after "## Final Response\\n\\n", or None when the reply is not well-formed."""
    if not is_well_formed(reply):
        return None
    return reply.split(FINAL_MARK, 1)[1].strip()


@dataclass
class ReplyParts:
    """A reply cut at its headings: text under "## Thinking", under "## Final Response", and before either."""

    thinking: str
    final_response: str
    unlabelled: str
    well_formed: bool


def split_reply(reply: str) -> ReplyParts:
    """Each heading starts its section (a repeated heading continues it); every part stripped."""
    parts = {None: "", THINKING: "", FINAL_RESPONSE: ""}
    section, rest = None, reply
    while True:
        found = [(rest.find(h), h) for h in HEADINGS if h in rest]
        if not found:
            parts[section] += rest
            break
        index, heading = min(found)
        parts[section] += rest[:index]
        section, rest = heading, rest[index + len(heading) :]
    return ReplyParts(
        parts[THINKING].strip(), parts[FINAL_RESPONSE].strip(), parts[None].strip(), is_well_formed(reply)
    )
