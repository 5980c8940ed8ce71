"""Turn a model's free-text reply to a multiple-choice question into an option letter, two ways.

paper view  -- the rules of the original evaluation, so our numbers compare with the paper's
               Table 1: look after the last "## Final Response", then "answer is X", then a
               standalone letter A..N (an "A " starting a phrase is taken for the article), then
               an option's text found in the reply, then the most similar option text. The first
               and the last match are both scored and the better accuracy is reported.
honest view -- the same search order with three corrections: only letters the item actually
               has count (with 4 options "E" is no answer), the words "A" and "I" followed by a
               lowercase word are English, not letters ("I think..." is not option I), answer
               phrases in Chinese count. The similarity fallback is never used: a reply where
               nothing was found is "no answer found" and wrong. First and last match are
               reported separately, not the better of the two.
Both views count an empty reply as wrong (the original dropped empty replies from the count).
"""

import difflib
import re

FINAL_RESPONSE_MARK = "## Final Response\n\n"
ALL_LETTERS = "ABCDEFGHIJKLMN"  # the original's letter range, whatever the option count

# "answer is C", "answer is (C)", "answer is **C**", "answer is: C", "Answer: C".
ANSWER_PHRASE_PAPER = r"answer is[\s:*(\[]*([{letters}])(?![A-Za-z0-9])"
ANSWER_PHRASE_HONEST = (
    r"(?:answer(?: is|:)|correct (?:option|choice|answer) is|答案(?:是|为|应为|选)?[:：]?|选择?)"
    r"[\s:：*(\[（]*(?:option |选项)?([{letters}])(?![A-Za-z0-9])"
)


def thinking_format_ok(output):
    """True when the reply has exactly one "## Thinking" and exactly one "## Final Response"."""
    return output.count("## Thinking") == 1 and output.count("## Final Response") == 1


def answer_part(output):
    """The text after the last "## Final Response" heading, or the whole reply if there is none."""
    if FINAL_RESPONSE_MARK in output:
        return output.rsplit(FINAL_RESPONSE_MARK, 1)[1]
    return output


def _letter_matches_paper(text, letters):
    # Bounded by non-word characters (unicode: CJK characters count as word characters).
    pattern = rf"(?<!\w)([{letters}])(?!\w)"
    found = []
    for match in re.finditer(pattern, text):
        if match.group(1) == "A" and text[match.end() : match.end() + 1] == " ":
            continue  # "A patient ..." is the article
        found.append((match.start(), match.group(1)))
    return found


def _letter_matches_honest(text, letters):
    # Bounded by anything but ASCII letters/digits, so "选B。" counts; English words excluded.
    pattern = rf"(?<![A-Za-z0-9])([{letters}])(?![A-Za-z0-9])"
    found = []
    for match in re.finditer(pattern, text):
        if match.group(1) in "AI" and re.match(r"\s+[a-z]", text[match.end() :]):
            continue  # "A patient ...", "I think ..."
        found.append((match.start(), match.group(1)))
    return found


def _option_text_matches(text, options, whole_words):
    """(position, letter) of the first and last place each option's text occurs (case-insensitive).

    whole_words (honest view): the text must not sit inside a longer word, so the PubMedQA option
    "no" is not found in "not" or "know".
    """
    lowered = text.lower()
    found = []
    for letter, option_text in options.items():
        needle = str(option_text).strip().lower()
        if not needle:
            continue
        if whole_words:
            spots = [m.start() for m in re.finditer(rf"(?<![a-z0-9]){re.escape(needle)}(?![a-z0-9])", lowered)]
        else:
            spots = [m.start() for m in re.finditer(re.escape(needle), lowered)]
        if spots:
            found += [(spots[0], letter), (spots[-1], letter)]
    return sorted(found)


def _most_similar_option(text, options):
    def similarity(letter):
        return difflib.SequenceMatcher(None, text.lower(), str(options[letter]).lower()).ratio()

    return max(options, key=similarity)


def extract_answers(output, options, view):
    """(first, last, how): the first and last option letter the reply names, and which rule found them.

    how is one of "answer_phrase", "letter", "option_text", "similarity" (paper view only),
    "none" (nothing found, honest view) or "empty".
    """
    if not output or not output.strip():
        return None, None, "empty"
    text = answer_part(output)
    if view == "paper":
        letters, phrase, letter_rule = ALL_LETTERS, ANSWER_PHRASE_PAPER, _letter_matches_paper
        flags = 0
    elif view == "honest":
        letters = "".join(sorted(options))
        phrase, letter_rule, flags = ANSWER_PHRASE_HONEST, _letter_matches_honest, re.IGNORECASE
    else:
        raise ValueError(f"unknown view {view!r}: use 'paper' or 'honest'")

    # The answer phrase is matched case-insensitively in the honest view only, but the letter
    # itself must stay uppercase there too ("the answer is a ..." names no option).
    phrase_hits = [
        (m.start(), m.group(1))
        for m in re.finditer(phrase.format(letters=letters), text, flags)
        if m.group(1) in letters
    ]
    for rule, hits in (
        ("answer_phrase", phrase_hits),
        ("letter", letter_rule(text, letters)),
        ("option_text", _option_text_matches(text, options, whole_words=view == "honest")),
    ):
        if hits:
            return hits[0][1], hits[-1][1], rule
    if view == "paper":
        guess = _most_similar_option(text, options)
        return guess, guess, "similarity"
    return None, None, "none"


def score_item(item, output):
    """Per-item verdicts for both views; item has 'options' (dict) and 'answer_idx' (letter)."""
    gold = item["answer_idx"]
    verdict = {"format_ok": thinking_format_ok(output or "")}
    for view in ("paper", "honest"):
        first, last, how = extract_answers(output, item["options"], view)
        verdict[view] = {
            "first": first,
            "last": last,
            "rule": how,
            "first_correct": first == gold,
            "last_correct": last == gold,
        }
    return verdict


def summarize(verdicts):
    """Accuracy figures (percent) for one list of per-item verdicts."""
    n = len(verdicts)

    def percent(count):
        return round(100.0 * count / n, 2) if n else 0.0

    paper_first = percent(sum(v["paper"]["first_correct"] for v in verdicts))
    paper_last = percent(sum(v["paper"]["last_correct"] for v in verdicts))
    return {
        "n": n,
        "paper_accuracy": max(paper_first, paper_last),
        "paper_first_match_accuracy": paper_first,
        "paper_last_match_accuracy": paper_last,
        "paper_similarity_fallback_rate": percent(sum(v["paper"]["rule"] == "similarity" for v in verdicts)),
        "first_match_accuracy": percent(sum(v["honest"]["first_correct"] for v in verdicts)),
        "last_match_accuracy": percent(sum(v["honest"]["last_correct"] for v in verdicts)),
        "no_answer_found_rate": percent(sum(v["honest"]["rule"] == "none" for v in verdicts)),
        "empty_output_rate": percent(sum(v["honest"]["rule"] == "empty" for v in verdicts)),
        "format_rate": percent(sum(v["format_ok"] for v in verdicts)),
    }
