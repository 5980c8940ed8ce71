"""Score (response, reference) pairs with a trained verifier, for inspection.

Reads the same inputs as train_verifier.py (search records or flat rows; a verdict is optional)
and writes each pair with the verifier's p(correct), its prediction (p > threshold), the string-match
baseline and, with --full_responses, the RL reward. When verdicts are present it prints how often
the verifier and the baseline agree with them.

    python score_verifier.py --verifier_path ckpts/medical_verifier --data_path pairs.json --output_path scored.json

--full_responses treats each response as a whole policy answer ("## Thinking ... ## Final Response
...") and scores it exactly as RL_stage2.py does (format gate, final answer, reward 1.0 / 0.1 / 0.0).
"""

import os
from dataclasses import dataclass, field

from huatuo_o1 import cli
from huatuo_o1.outputs import check_outputs
from huatuo_o1.records import InputError, write_json_atomic
from huatuo_o1.verifier import VerifierReward, load_verifier, verifier_input
from huatuo_o1.verifier_training import VerdictData, read_examples, scores, string_match


@dataclass
class ScoreArguments:
    verifier_path: str = field(
        metadata={"help": "A 2-label verifier folder (e.g. train_verifier.py's output) or hub id."}
    )
    output_path: str = field(default=None, metadata={"help": "Default: <data_path without extension>_scored.json."})
    verifier_template: str = field(
        default=None, metadata={"help": "Verifier input template (default huatuo_o1/templates/verifier_input.txt)."}
    )
    threshold: float = field(default=0.4)
    batch_size: int = field(default=8)
    full_responses: bool = field(
        default=False, metadata={"help": "Responses are whole policy answers: apply RL's format gate."}
    )


def main(argv=None):
    args, data = cli.parse((ScoreArguments, VerdictData), argv)
    if not data.data_path:
        raise InputError("--data_path is required: the (response, reference) pairs to score")
    if args.batch_size <= 0:
        raise InputError(f"--batch_size must be a positive number of pairs, not {args.batch_size}")
    if not 0 <= args.threshold <= 1:
        raise InputError(f"--threshold is a probability, 0 to 1, not {args.threshold}")
    output_path = args.output_path or os.path.splitext(data.data_path)[0] + "_scored.json"
    check_outputs(
        [("--output_path", output_path, False)], {"--data_path": data.data_path, "--verifier_path": args.verifier_path}
    )

    # Load: the pairs, and the verifier as shipped, as RL_stage2.py uses it (tokenizer and config untouched).
    examples, _ = read_examples(data, need_verdict=False)
    if not examples:
        raise InputError(f"--data_path {data.data_path}: no (response, reference) pairs to score; nothing written")
    model, tokenizer = load_verifier(args.verifier_path, flag="--verifier_path")
    reward = VerifierReward(
        model, tokenizer, template=args.verifier_template, batch_size=args.batch_size, threshold=args.threshold
    )

    # Score.
    responses, references = [e["response"] for e in examples], [e["reference"] for e in examples]
    if args.full_responses:
        out = reward(responses, references)
        p, rewards = out.p_correct, out.rewards.tolist()
    else:
        p = reward.p_correct(
            [verifier_input(r, ref, tokenizer.eos_token, reward.template) for r, ref in zip(responses, references)]
        )
        rewards = None
    rows = []
    for i, (e, x) in enumerate(zip(examples, p.tolist())):
        row = {
            "response": e["response"],
            "reference_answer": e["reference"],
            "p_correct": round(x, 4),
            "predicted": x > args.threshold,
            "string_match": string_match(e["response"], e["reference"]),
        }
        if e["label"] is not None:
            row["verdict"] = bool(e["label"])
        if rewards is not None:
            row["reward"] = rewards[i]
        rows.append(row)

    # Save.
    write_json_atomic(output_path, rows)
    judged = [r for r in rows if "verdict" in r]
    summary = {"n": len(rows), "n_predicted_correct": sum(r["predicted"] for r in rows), "output_path": output_path}
    if judged:
        labels = [r["verdict"] for r in judged]
        summary["verifier_vs_verdicts"] = scores([r["predicted"] for r in judged], labels)
        summary["string_match_vs_verdicts"] = scores([r["string_match"] for r in judged], labels)
    print(summary)
    return summary


if __name__ == "__main__":
    cli.run(main)
