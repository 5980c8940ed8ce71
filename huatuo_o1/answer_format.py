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
- heading_line / reply_layout: the headings however a model typesets them ("### final response:",
  "**Thinking**"), and which of the two a reply has (full, final_only, thinking_only, neither): the
  evaluation's honest view reads replies by them and its report counts them.
"""

import re
from dataclasses import dataclass

THINKING = "## Thinking"
FINAL_RESPONSE = "## Final Response"
# The final response starts after its heading and a blank line: a reply without the blank line is malformed.
FINAL_MARK = FINAL_RESPONSE + "\n\n"
HEADINGS = (THINKING, FINAL_RESPONSE)

# The layouts a reply can have, by which of the two headings it holds (heading_line's reading of them).
FULL, FINAL_ONLY, THINKING_ONLY, NEITHER = "full", "final_only", "thinking_only", "neither"
LAYOUTS = (FULL, FINAL_ONLY, THINKING_ONLY, NEITHER)


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


def heading_line(*headings: str) -> re.Pattern:
    """A line holding only one of the headings, however typeset: '#' of any level or none, bold, a colon
    (also the full-width "："), any case. heading_line(FINAL_RESPONSE) matches "### final response:"."""
    words = "|".join(re.escape(heading.lstrip("#").strip()) for heading in headings)
    bold_open, bold_close, colon = r"(\*\*)?", r"(?(1)\*\*)", r"[ \t]*[:：]?[ \t]*"  # "**Final Response**"
    return re.compile(
        rf"^[ \t]*(?:#{{1,6}}[ \t]*)?{bold_open}[ \t]*(?:{words}){colon}{bold_close}{colon}$", re.M | re.I
    )


THINKING_LINE = heading_line(THINKING)
FINAL_RESPONSE_LINE = heading_line(FINAL_RESPONSE)


def reply_layout(reply: str) -> str:
    """Which headings a reply holds, each as a line of its own however typeset (heading_line): one of LAYOUTS."""
    thinking, final = THINKING_LINE.search(reply) is not None, FINAL_RESPONSE_LINE.search(reply) is not None
    if thinking:
        return FULL if final else THINKING_ONLY
    return FINAL_ONLY if final else NEITHER
