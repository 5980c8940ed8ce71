"""Speed of the 64-character contamination check at the paper's sizes, through prepare_training_data.py's code.

Synthetic data (pseudo-words of 2-10 letters, so that two texts share 64 characters only where we
put the same text in both), at the sizes of the real sets:
  evaluation: MedQA test 1,273 (vignettes ~110 words, 4 options), MedMCQA validation 4,183 (~15 words,
  4 options), PubMedQA 1,000 (context + question ~240 words, yes/no/maybe), MMLU-Pro health 818 and
  biology 717 (~50 words, 10 options), GPQA genetics and molecular biology 100 each (~80 words, 4 options);
  training: 40,000 verifiable problems, half MedQA-like (open-ended question ~100 words plus the original
  question and options), half MedMCQA-like (~35 + ~15 words), plus 5,000 MMLU-Pro-like general items.
One item in 100 carries a stretch of up to 80-300 characters copied from an evaluation question (in
upper case, spaces doubled), and one in 5 MedQA-like texts (training and evaluation) ends with a
71-character stock question sentence.

Prints the time to index the evaluation set and to check the training items (items per second), wall
clock and CPU time (on a shared machine the CPU time is the figure that does not depend on the load),
then the whole prepare_training_data.py run (a fresh process: imports, load, check, split, write),
with the paper's rule (every window counts) and with --stock_phrase_threshold 5.

Usage:
    python bench/decontamination.py [--items 40000] [--general 5000] [--seed 0]
"""

import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

from huatuo_o1 import cli
from huatuo_o1.decontamination import EvalIndex, eval_texts
from huatuo_o1.recipe import decontaminate, load_items
from huatuo_o1.records import GROUND_TRUTH as ANSWER
from huatuo_o1.records import OPEN_QUESTION as QUESTION
from huatuo_o1.records import read_json

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STOCK = "Which of the following is the most appropriate next step in management?"
LETTERS = "ABCDEFGHIJ"
# (source, items, question words, option count, option words)
EVAL_SETS = [
    ("MedQA_USLME_test", 1273, 110, 4, 3),
    ("MedMCQA_validation", 4183, 15, 4, 3),
    ("PubMedQA", 1000, 240, 3, 1),
    ("MMLU-Pro_Health", 818, 50, 10, 5),
    ("MMLU-Pro_Biology", 717, 50, 10, 5),
    ("GPQA_Genetics", 100, 80, 4, 10),
    ("GPQA_Molecular_Biology", 100, 80, 4, 10),
]


class Words:
    def __init__(self, rng):
        self.rng = rng
        self.vocabulary = [
            "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 10))) for _ in range(20000)
        ]

    def __call__(self, n):
        return " ".join(self.rng.choices(self.vocabulary, k=max(1, int(self.rng.gauss(n, n / 4)))))


def evaluation_set(words, rng):
    data = {}
    for source, count, question_words, n_options, option_words in EVAL_SETS:
        items = []
        for _ in range(count):
            question = words(question_words) + (
                "" if source != "MedQA_USLME_test" or rng.random() > 0.2 else " " + STOCK
            )
            options = {LETTERS[i]: words(option_words) for i in range(n_options)}
            items.append({"question": question, "options": options, "answer_idx": "A"})
        data[source] = items
    return data


def training_rows(words, rng, n_items, n_general, eval_data):
    eval_questions = [item["question"] for items in eval_data.values() for item in items]
    medical, planted = [], 0
    for i in range(n_items):
        long_one = i % 2 == 0
        question = words(110 if long_one else 15) + (" " + STOCK if long_one and rng.random() < 0.2 else "")
        open_ended = words(100 if long_one else 35)
        if rng.random() < 0.01:  # a leaked evaluation stretch, case and spacing changed
            source = rng.choice(eval_questions)
            begin = rng.randrange(max(1, len(source) - 300))
            stretch = source[begin : begin + rng.randint(80, 300)]  # shorter when the question is
            open_ended += " " + stretch.upper().replace(" ", "  ")
            planted += len(stretch) >= 64  # shorter copies are below the rule
        medical.append(
            {
                "question": question,
                "options": {LETTERS[k]: words(3) for k in range(4)},
                "answer_idx": "A",
                "answer": "x",
                QUESTION: open_ended,
                ANSWER: words(4),
                "source": "MedQA_train" if long_one else "MedMCQA_train",
            }
        )
    general = [
        {
            "question": words(50),
            "options": {LETTERS[k]: words(5) for k in range(10)},
            "answer_idx": "A",
            "answer": "x",
            QUESTION: words(50),
            ANSWER: words(3),
            "source": "MMLU-Pro_math",
        }
        for _ in range(n_general)
    ]
    return medical, general, planted


def main_bench():
    parser = cli.argument_parser(__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=40000)
    parser.add_argument("--general", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    words = Words(rng)
    eval_data = evaluation_set(words, rng)
    medical, general, planted = training_rows(words, rng, args.items, args.general, eval_data)
    with tempfile.TemporaryDirectory() as folder:
        paths = {name: os.path.join(folder, f"{name}.json") for name in ("eval", "medical", "general")}
        for name, obj in (("eval", eval_data), ("medical", medical), ("general", general)):
            with open(paths[name], "w", encoding="utf-8") as f:
                json.dump(obj, f)
        chars = sum(
            len(r[QUESTION]) + len(r["question"]) + sum(map(len, r["options"].values())) for r in medical + general
        )
        print(
            f"evaluation: {sum(len(v) for v in eval_data.values())} questions; training: {len(medical)} medical + "
            f"{len(general)} general items, {chars / 1e6:.1f}M characters in the checked fields; "
            f"{planted} items with a planted copy of 64 characters or more"
        )

        started, cpu = time.perf_counter(), time.process_time()
        texts = eval_texts([paths["eval"]], 64)
        index = EvalIndex(texts)
        index_seconds, index_cpu = time.perf_counter() - started, time.process_time() - cpu
        fields = [QUESTION, ANSWER, "question", "options"]
        items = load_items([paths["medical"]], "medical", (QUESTION, ANSWER), fields)
        items += load_items([paths["general"]], "general", (QUESTION, ANSWER), fields)
        started, cpu = time.perf_counter(), time.process_time()
        report = decontaminate(items, index, fields)
        check_seconds, check_cpu = time.perf_counter() - started, time.process_time() - cpu
        print(
            f"index: {len(texts)} evaluation texts, {index.windows_indexed / 1e6:.2f}M windows "
            f"in {index_seconds:.2f} s ({index_cpu:.2f} s of CPU)"
        )
        print(
            f"check: {len(items)} items in {check_seconds:.2f} s = {len(items) / check_seconds:,.0f} items/s "
            f"({check_cpu:.2f} s of CPU = {len(items) / check_cpu:,.0f} items per CPU second); "
            f"found {report['contaminated_items']} (planted leaks + items ending with the stock sentence)"
        )

        for threshold in (0, 5):
            started, children = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run(
                [sys.executable, os.path.join(REPO_ROOT, "prepare_training_data.py"), "--data_path", paths["medical"],
                 "--general_data_path", paths["general"], "--eval_file", paths["eval"], "--search_size", "0.5",
                 "--rl_size", "0.5", "--closed_set_size", "0.1", "--general_size", "1.0",
                 "--stock_phrase_threshold", str(threshold), "--output_dir", os.path.join(folder, f"out{threshold}")],
                check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            seconds = time.perf_counter() - started
            now = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu_seconds = now.ru_utime + now.ru_stime - children.ru_utime - children.ru_stime
            summary = read_json(os.path.join(folder, f"out{threshold}", "summary.json"))
            print(
                f"whole run, --stock_phrase_threshold {threshold}: {seconds:.2f} s ({cpu_seconds:.2f} s of CPU), "
                f"{summary['decontamination']['contaminated_items']} contaminated "
                f"(planted copies >= 64 characters: {planted})"
            )


if __name__ == "__main__":
    main_bench()
