"""Reading a model's reply to a multiple-choice question: the one place that turns replies into letters.

Two views of every reply, both reported:

paper view  -- the original evaluation's scorer, rule for rule, quirks included (rules P1-P5 below,
               docs/eval.md explains them), so that our figures compare with the paper's Table 1. An
               empty reply is dropped: it is neither right nor wrong and not in the denominator. Each
               reply gives a first and a last letter; the reported accuracy is the better of
               first-match and last-match accuracy.
honest view -- what the reply says (rules H1-H5). It finds the final response in any layout (H1: after
               "## Final Response" however typeset; else after another model's own end of thinking or
               answer heading; else the whole reply, unless it stopped in its "## Thinking") and reads
               it after NFKC (full-width "Ｂ", "（B）", "答案：B" read as their ASCII forms). A bare
               letter is an answer only where people write answers ("The answer is B", "Answer: (B)",
               "option B", "**B**", a line "B. Measles", "答案是B", "选B"); letters that belong to words
               and names ("B cell", "Hepatitis B", "L-myc", "vitamin A", "B超", "A型") are not answers,
               there the option's text decides; only the item's own letters count;
               a reply that names no option is "no answer found" and wrong, and so is a blank reply.
               First-match and last-match accuracy are reported separately.

Replies are cleaned once, as the original did, before either view reads them (clean_reply).
"""

import difflib
import re
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass

from huatuo_o1.answer_format import (
    FINAL_MARK,
    FINAL_RESPONSE_LINE,
    LAYOUTS,
    THINKING_ONLY,
    heading_line,
    is_well_formed,
    reply_layout,
)

CJK = "\u4e00-\u9fff"  # the ideograph range the original's letter rule names


@dataclass
class Extraction:
    """The first and last option letter a view reads in a reply, and the rule that found them.

    rule: paper view -- "answer_is", "letter", "option_text", "similarity", or "dropped" (empty reply);
          honest view -- "answer_statement", "letter", "option_text", "none" (no option named),
          "options_listed" (the reply repeats the option list), "unfinished" (a "## Thinking" reply
          that never reached its final response), or "blank".
    """

    first: str | None
    last: str | None
    rule: str


def clean_reply(raw: str | None) -> str:
    """The reply as the original scored it: every "</s>" removed, then one leading space."""
    reply = (raw or "").replace("</s>", "")
    return reply[1:] if reply.startswith(" ") else reply


# ---------------------------------------------------------------------------------------------
# Paper view: the original scorer (Python `re` semantics throughout).

PAPER_FINAL_MARK = FINAL_MARK  # P1 reads after the heading and its blank line, as the original scorer did
PAPER_ALL_LETTERS = "ABCDEFGHIJKLMN"
PAPER_ANSWER_IS = re.compile(r"answer is\s*?([A-N])")  # P2: A-N whatever the option count; case-sensitive
# P3, left context: alternatives in the original's order (the order decides what a match consumes).
PAPER_LEFT_CONTEXT = "|".join([f"[{CJK}]", "is ", "是", "项", r"\*", r"\W", " ", r"\(", "为", "^", "'", '"', "#"])
PAPER_RIGHT_CONTEXT = rf"\W|[{CJK}]|$"


def paper_final_part(reply: str) -> str:
    """P1: the text after the last "## Final Response\\n\\n", or the whole reply."""
    return reply.split(PAPER_FINAL_MARK)[-1]


def paper_answer_is(text: str) -> list[str]:
    """P2: letters of every "answer is" + whitespace + capital A-N ("answer is Lumbar" gives L)."""
    return [match.group(1) for match in PAPER_ANSWER_IS.finditer(text)]


def paper_standalone_letters(text: str, option_count: int) -> list[str]:
    """P3: letters among the first option_count of A-N, between a left and a right context.

    Each match consumes both contexts, so in "B/C" or "B C" only B is found; an "A " is the article.
    """
    letters = PAPER_ALL_LETTERS[:option_count]
    pattern = rf"(?:{PAPER_LEFT_CONTEXT})(?![aA] )([{letters}])(?:{PAPER_RIGHT_CONTEXT})"
    return [match.group(1) for match in re.finditer(pattern, text)]


def paper_option_text(text: str, options: dict) -> tuple[str, str] | None:
    """P4: (first, last) from option texts found anywhere in the lower-cased text, or None.

    last = the option whose last occurrence starts furthest right; first = the option whose FIRST
    occurrence starts furthest right (the original's quirk). Equal positions: the option listed first.
    """
    lowered = text.lower()
    first_spots, last_spots = [], []
    for letter, option in options.items():
        needle = str(option).lower()
        if needle in lowered:
            first_spots.append((lowered.find(needle), letter))
            last_spots.append((lowered.rfind(needle), letter))
    if not first_spots:
        return None
    rightmost = lambda spots: max(spots, key=lambda spot: spot[0])[1]  # noqa: E731  max keeps the first of equals
    return rightmost(first_spots), rightmost(last_spots)


def paper_most_similar(text: str, options: dict) -> str | None:
    """P5: the option whose text is most similar to the reply (option first, reply second); ties: the later option."""
    lowered = text.lower()
    best_letter, best_ratio = None, -1.0
    for letter, option in options.items():
        ratio = difflib.SequenceMatcher(None, str(option).lower(), lowered).ratio()
        if ratio >= best_ratio:
            best_letter, best_ratio = letter, ratio
    return best_letter


def paper_extract(reply: str, options: dict) -> Extraction:
    """The original scorer's reading of a cleaned reply (P1-P5); an empty reply is dropped."""
    if reply == "":
        return Extraction(None, None, "dropped")
    text = paper_final_part(reply)
    letters = paper_answer_is(text)
    if letters:
        return Extraction(letters[0], letters[-1], "answer_is")
    letters = paper_standalone_letters(text, len(options))
    if letters:
        return Extraction(letters[0], letters[-1], "letter")
    found = paper_option_text(text, options)
    if found:
        return Extraction(found[0], found[1], "option_text")
    guess = paper_most_similar(text, options)
    return Extraction(guess, guess, "similarity")


# ---------------------------------------------------------------------------------------------
# Honest view: what the reply says.


# Other models' own layouts, read where a reply has no "## Final Response": a closed <think> block (what
# follows it is the answer), or a heading of their own over the answer ("## Answer", "**Final Answer:**",
# "## 最终答案", or a line opening with "Final answer:").
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
OWN_ANSWER_HEADING = heading_line("Answer", "Final Answer", "Conclusion", "答案", "最终答案", "最终回答", "结论")
OWN_FINAL_ANSWER_LABEL = re.compile(r"^[ \t]*(?:\*\*)?(?:final answer|最终答案)(?:\*\*)?[ \t]*[:：]", re.M | re.I)

# Lower-case words that may follow a letter that is an answer ("B because ...", "B is correct");
# any other lower-case word makes the letter part of a name ("B cell", "A patient", "E coli").
WORDS_AFTER_AN_ANSWER_LETTER = frozenset(
    "because since as is was and or but which that given due for in with here then so would should "
    "could seems appears fits best remains makes explains describes matches reflects represents "
    "corresponds indicates accounts aligns rather not instead too also being has looks does may might can".split()
)

# Text that states an answer just before a letter. (?i:...) keeps the letter itself case-sensitive.
ANSWER_PHRASE = (
    r"(?:(?i:\banswer\b(?:\s+(?:is|would\s+be|will\s+be|should\s+be|must\s+be|here\s+is))?"
    r"|\bcorrect\s+(?:option|choice|response|letter)\s+is"
    r"|\b(?:I|we)(?:\s+would|'d|’d)?\s+(?:choose|select|pick|go\s+with|go\s+for|opt\s+for|say))"
    r"|(?:正确答案|最终答案|答案|正确选项)(?:是|为|应为|应该是|选)?|应选|选择|选)"
)
DECORATION = r"[\s*_:：=\-–—(\[（【\"'“]*"  # "answer: (B)", "answer is **B**", "答案：【B】"
OPTION_WORD = r"(?:(?i:\b(?:options?|choices?))\s*|选项\s*)"
YES_NO_MAYBE = frozenset({"yes", "no", "maybe"})  # PubMedQA's options: words people also use in passing
# Chinese words a letter forms with the characters after it, as "B cell" in English: "B超" (ultrasound),
# "A型" (type A), "B族维生素", "A群链球菌", "B细胞", "C反应蛋白", "C肽", "A级": there the letter is no answer.
CJK_AFTER_A_LETTER_IN_A_NAME = ("超", "型", "族", "群", "类", "级", "细胞", "淋巴", "反应蛋白", "蛋白", "肽", "因子")


def honest_answer_part(reply: str) -> str | None:
    """H1: where a reply of any layout answers; None when it stopped in its thinking.

    The text after the last "## Final Response" heading (answer_format.heading_line: any '#', bold, colon,
    case); else after the last "</think>"; else from the last answer heading of the model's own; else, when
    the reply opened a "## Thinking" or a "<think>" and never left it, None (cut short, e.g. by
    --max_new_tokens); else the whole reply (no layout at all).
    """
    headings = list(FINAL_RESPONSE_LINE.finditer(reply))
    if headings:
        return reply[headings[-1].end() :]
    if THINK_CLOSE in reply:
        return reply[reply.rindex(THINK_CLOSE) + len(THINK_CLOSE) :]
    own = [m.start() for pattern in (OWN_ANSWER_HEADING, OWN_FINAL_ANSWER_LABEL) for m in pattern.finditer(reply)]
    if own:
        return reply[max(own) :]  # the heading stays in: "## Answer\nB" reads as an answer statement
    if reply_layout(reply) == THINKING_ONLY or THINK_OPEN in reply:
        return None
    return reply


def _fold(text):
    """Lower case and one kind of dash (same length as the text)."""
    return re.sub(r"[‐‑‒–—]", "-", text.lower())


def _folded_single_spaced(text):
    """Lower case, one kind of dash, single spaces: so option texts are found however they are typeset."""
    return re.sub(r"\s+", " ", _fold(text))


def _option_needle(option):
    return _folded_single_spaced(str(option)).strip(" .")


def letter_stands_alone(text: str, end: int, options: dict, after_option_word: bool = False) -> bool:
    """H-follow: whether the letter ending at `end` is a letter and not the start of a word or name.

    After "option"/"choice" a letter is a letter whatever word follows ("option B looks right"),
    unless an option's text starts there ("option B cells" when "B cells" is an option).
    """
    after = text[end:]
    if re.match(r"[A-Za-z0-9]|[-‐‑][A-Za-z0-9]|['’]s\b", after) or after.startswith(CJK_AFTER_A_LETTER_IN_A_NAME):
        return False  # "Lumbar", "B12", "L-myc", "B-cell", "B's", "B超", "A型"
    if _inside_option_text(text, end - 1, options):
        return False  # "B cells", "vitamin A", "A stop codon": part of an option's own text
    word = re.match(r"[ \t]+([a-z]+)", after)
    if word and word.group(1) not in WORDS_AFTER_AN_ANSWER_LETTER and not after_option_word:
        return False  # "B cell", "A patient"
    abbreviation = re.match(r"\.[ \t]+(?=[a-z])", after)
    if abbreviation:  # "E. coli", "C. difficile" -- unless the option's own text follows ("B. measles")
        rest = _folded_single_spaced(after[abbreviation.end() : abbreviation.end() + 300])
        return any(rest.startswith(_option_needle(option)) for option in options.values() if _option_needle(option))
    return True


def _inside_option_text(text, at, options):
    """Whether the character at `at` lies in a mention of one of the options' texts (whole words)."""
    low = max(0, at - 100)
    window = _fold(text[low : at + 100])
    for option in options.values():
        needle = _fold(str(option)).strip(" .")
        if len(needle) < 2:
            continue
        for match in re.finditer(rf"(?<![a-z0-9]){re.escape(needle)}(?![a-z0-9])", window):
            if match.start() <= at - low < match.end():
                return True
    return False


def _letters_after(pattern, text, options, after_option_word=False):
    """(position, letter) for every match of pattern + one of the item's letters standing alone."""
    letters = "".join(re.escape(letter) for letter in options if len(letter) == 1)
    found = []
    for match in re.finditer(pattern.replace("{letter}", f"([{letters}])"), text, re.M):
        if letter_stands_alone(text, match.end(1), options, after_option_word):
            found.append((match.start(1), match.group(1)))
    return found


def honest_answer_statements(text: str, options: dict) -> list[tuple[int, str]]:
    """H2: letters the reply states as its answer: "The answer is B", "Answer: (B)", "B is correct", "答案是B"."""
    return sorted(
        _letters_after(ANSWER_PHRASE + DECORATION + OPTION_WORD + "?" + r"[(（]?{letter}", text, options)
        + _letters_after(
            r"(?:^|[.!?。;,]\s*|[*(（]|(?i:\b(?:while|whereas|and|but|so|thus|hence|therefore)\s+))\s*{letter}[)）]?"
            r"\s+is\s+(?:the\s+)?(?:correct|right|best|answer)\b",
            text,
            options,
        )
    )


def honest_label_lines(text: str, options: dict) -> list[tuple[int, str]]:
    """Lines that start with a letter as a label: "B. Measles", "(B) Measles", "- **B)** ...", "B"."""
    return _letters_after(r"^[ \t]*(?:[-*>•][ \t]*)*(?:\*\*)?[(（]?{letter}(?=[)）.]|\*\*|[ \t]*$)", text, options)


def honest_letter_mentions(text: str, options: dict) -> list[tuple[int, str]]:
    """H4: letters named as options anywhere: label lines, "option B", "B项", "**B**", "(B)", "... is B."."""
    found = honest_label_lines(text, options)
    found += _letters_after(OPTION_WORD + r"[(（]?{letter}", text, options, after_option_word=True)
    found += _letters_after(r"{letter}\s*(?:项|选项)", text, options)
    found += _letters_after(r"\*\*\s*[(（]?{letter}(?=[)）.:：]?\s*\*\*|[)）.:：]\s)", text, options)
    found += _letters_after(r"[(（]{letter}[)）]", text, options)
    found += _letters_after(
        r"(?i:\b(?:is|be|was)\b)\s+[(（]?{letter}(?=[)）]?(?:[ \t]*$|[.,;!?。](?:\s|$)|\s+[-–—(]))", text, options
    )
    return sorted(set(found))


def honest_option_mentions(text: str, options: dict) -> list[tuple[int, str]]:
    """H5: (position, letter) of each place an option's text is named, as a whole word or phrase.

    A mention inside a longer option's mention does not count ("Vitamin A" inside "Vitamin A
    toxicity"). yes/no/maybe count only where they are the reply's answer: opening a sentence, a
    clause or a line and followed by punctuation ("No, ...", "so, yes."), after an answer phrase, or
    in bold -- not in "no significant difference".
    """
    normal = _folded_single_spaced(text)
    spans = []
    for letter, option in options.items():
        needle = _option_needle(option)
        if not needle:
            continue
        for match in re.finditer(rf"(?<![a-z0-9]){_word_endings_free(needle)}(?![a-z0-9])", normal):
            if needle in YES_NO_MAYBE and not _stated_as_answer(normal, match.start(), match.end()):
                continue
            spans.append((match.start(), match.end(), letter))
    inside_longer = lambda s: any(o[0] <= s[0] and s[1] <= o[1] and o[1] - o[0] > s[1] - s[0] for o in spans)  # noqa: E731
    return sorted((start, letter) for start, end, letter in spans if not inside_longer((start, end, letter)))


def _word_endings_free(needle):
    """Pattern for an option's text whose words of 3+ letters may end in -s/-es/-d/-ed or lose a final s:
    "discharged with analgesics" names "Discharge with analgesics", "B cell" names "B cells"."""
    if needle in YES_NO_MAYBE:
        return re.escape(needle)
    parts = re.split(r"([a-z]{3,})", needle)  # odd places: the words
    return "".join(
        re.escape(part.removesuffix("s")) + "(?:s|es|d|ed)?" if i % 2 else re.escape(part)
        for i, part in enumerate(parts)
    )


def _stated_as_answer(normal, start, end):
    before, after = normal[:start], normal[end:]
    if re.search(r"\*\*\s*$", before) and re.match(r"\s*[.,!]?\s*\*\*", after):
        return True  # **Yes**
    if re.search(ANSWER_PHRASE + DECORATION + r"$", before[-40:]):
        return True  # "the answer is no"
    opens = re.search(r"(?:^|[.!?:;,。，\n])[\s*]*$", before) is not None
    return opens and re.match(r"\s*(?:[,.!;:—-]|\*\*|$)", after) is not None  # "No, ...", "Maybe.", "..., yes:"


def honest_extract(reply: str, options: dict) -> Extraction:
    """What a cleaned reply says (H1-H5); the first and last option it names.

    Reply and options are read after NFKC, so full-width letters and punctuation ("答案：（Ｂ）") are the
    ASCII ones the rules look for.
    """
    reply = unicodedata.normalize("NFKC", reply)
    options = {letter: unicodedata.normalize("NFKC", str(text)) for letter, text in options.items()}
    if not reply.strip():
        return Extraction(None, None, "blank")
    text = honest_answer_part(reply)
    if text is None:
        return Extraction(None, None, "unfinished")
    found = honest_answer_statements(text, options)
    if found:
        return Extraction(found[0][1], found[-1][1], "answer_statement")
    if len({letter for _, letter in honest_label_lines(text, options)}) >= min(3, len(options)):
        return Extraction(None, None, "options_listed")  # H3: the reply repeats the choices instead of choosing
    found = honest_letter_mentions(text, options)
    if found:
        return Extraction(found[0][1], found[-1][1], "letter")
    found = honest_option_mentions(text, options)
    if found:
        return Extraction(found[0][1], found[-1][1], "option_text")
    return Extraction(None, None, "none")


# ---------------------------------------------------------------------------------------------
# Verdicts and figures.


def score_item(item: dict, reply: str | None) -> dict:
    """Both views' verdicts on one cleaned reply; item has 'options' (dict) and 'answer_idx' (letter)."""
    gold = str(item["answer_idx"]).lower()
    verdict = {"format_ok": is_well_formed(reply or ""), "layout": reply_layout(reply or "")}
    for view, extract in (("paper", paper_extract), ("honest", honest_extract)):
        found = extract(reply or "", item["options"])
        verdict[view] = {
            **asdict(found),
            "first_correct": found.first is not None and found.first.lower() == gold,
            "last_correct": found.last is not None and found.last.lower() == gold,
        }
    return verdict


def _percent(count, total):
    return round(100.0 * count / total, 2) if total else None


def summarize(verdicts: list[dict]) -> dict:
    """Accuracy figures (percent) for one list of per-item verdicts (e.g. one source)."""
    n = len(verdicts)
    scored = [v["paper"] for v in verdicts if v["paper"]["rule"] != "dropped"]
    paper_first = _percent(sum(p["first_correct"] for p in scored), len(scored))
    paper_last = _percent(sum(p["last_correct"] for p in scored), len(scored))
    honest = [v["honest"] for v in verdicts]
    return {
        "n": n,
        "paper_scored": len(scored),
        "paper_accuracy": None if paper_first is None else max(paper_first, paper_last),
        "paper_first_match_accuracy": paper_first,
        "paper_last_match_accuracy": paper_last,
        "paper_similarity_fallback_rate": _percent(sum(p["rule"] == "similarity" for p in scored), len(scored)),
        "honest_first_match_accuracy": _percent(sum(h["first_correct"] for h in honest), n),
        "honest_last_match_accuracy": _percent(sum(h["last_correct"] for h in honest), n),
        "honest_no_answer_rate": _percent(sum(h["first"] is None and h["rule"] != "blank" for h in honest), n),
        "blank_reply_rate": _percent(sum(h["rule"] == "blank" for h in honest), n),
        "format_rate": _percent(sum(v["format_ok"] for v in verdicts), n),
        "layout_counts": layout_counts(verdicts),
    }


def layout_counts(verdicts: list[dict]) -> dict:
    """How many replies have each layout (answer_format.LAYOUTS: full, final_only, thinking_only, neither)."""
    counts = Counter(v["layout"] for v in verdicts)
    return {layout: counts[layout] for layout in LAYOUTS}
