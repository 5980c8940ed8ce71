"""A synthetic verdict set a tiny classifier can learn: does the response name the reference answer?

References come from a small set of short answers; a correct response names its reference, a
wrong one names another answer of the set; the words around the answer vary (paraphrase noise),
so the classifier must compare the two answers rather than remember sentences.
"""

import json
import math
import random

import torch

# A short template for the learning test: the real one is ~150 tokens with the tiny tokenizer.
SHORT_TEMPLATE = "Response: {response}\nReference: {reference}\n{eos_token}"

# short answers the tiny byte-level tokenizer splits into few pieces, so a 2-layer model can compare them
ANSWERS = ["ACE", "ST", "ECG", "troponin", "aspirin", "insulin", "asthma", "gout"]
OPENINGS = [
    "The answer is",
    "Most likely",
    "I think it is",
    "This points to",
    "Diagnosis:",
    "Probably",
    "It is",
    "Answer:",
]
CLOSINGS = ["", ".", " in this patient.", ", given the history.", "!", " here."]


def synthetic_verdicts(n, seed=0, share_correct=0.5):
    """n flat rows {response, reference_answer, verdict}."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        reference = rng.choice(ANSWERS)
        correct = rng.random() < share_correct
        named = reference if correct else rng.choice([a for a in ANSWERS if a != reference])
        rows.append(
            {
                "response": f"{rng.choice(OPENINGS)} {named}{rng.choice(CLOSINGS)}",
                "reference_answer": reference,
                "verdict": correct,
            }
        )
    return rows


def as_search_records(rows, per_record=3):
    """The same verdicts in the search stage's layout: items holding a list of verifications."""
    return [
        {"Open-ended Verifiable Question": f"Question {i}?", "verifications": rows[i : i + per_record]}
        for i in range(0, len(rows), per_record)
    ]


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)
    return str(path)


def main():
    """Write the synthetic verdict set (as search records) and the short template, for the benches."""
    import argparse
    import os

    parser = argparse.ArgumentParser(description=main.__doc__, allow_abbrev=False)
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args()
    os.makedirs(args.output_dir, exist_ok=True)
    print(
        write_json(
            os.path.join(args.output_dir, "records.json"), as_search_records(synthetic_verdicts(args.rows, args.seed))
        )
    )
    with open(os.path.join(args.output_dir, "short_template.txt"), "w", encoding="utf-8") as f:
        f.write(SHORT_TEMPLATE)


class ControlledVerifier(torch.nn.Module):
    """Returns logits giving p(label 1) = p_by_text[decoded input]; records what it was shown."""

    def __init__(self, tokenizer, p_by_text, default_p=0.5):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.tokenizer, self.p_by_text, self.default_p = tokenizer, p_by_text, default_p
        self.seen = []

    def forward(self, input_ids, attention_mask=None):
        logits = []
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        for ids, mask in zip(input_ids, attention_mask):
            text = self.tokenizer.decode(ids[mask.bool()])
            self.seen.append(text)
            p = self.p_by_text.get(text, self.default_p)
            logits.append([0.0, math.log(p / (1 - p))])  # softmax([0, log(p/(1-p))])[1] == p
        return type("Out", (), {"logits": torch.tensor(logits)})()


if __name__ == "__main__":
    main()
