"""Helpers for the data-stage tests: exam items for the stand-in teacher and a way to run the scripts."""

import json
import os

from tests.scripts import run_script

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONSTRUCT = os.path.join(REPO_ROOT, "construct_verifiable_medical_problems.py")
SEARCH = os.path.join(REPO_ROOT, "search_for_complex_reasoning_path.py")
SECRET_KEY = "sk-test-SECRET-4f9a1c"

# Small settings: few client retries, several workers. The timeout stays generous (a busy CI machine
# must not turn a slow reply into a retry); the fault tests set a short one.
FAST = ["--model_name", "gpt-4o", "--max_retries", "2", "--timeout", "20", "--num_process", "8"]

TOPICS = [
    (
        "painless hematuria in a long-time smoker",
        ["Bladder carcinoma", "Renal calculus", "Acute cystitis", "Prostatitis"],
    ),
    (
        "barking cough with inspiratory stridor in a toddler",
        ["Parainfluenza virus", "Respiratory syncytial virus", "Adenovirus", "Rhinovirus"],
    ),
    (
        "heat intolerance, weight loss and proptosis",
        ["Graves disease", "Toxic adenoma", "Subacute thyroiditis", "Factitious thyrotoxicosis"],
    ),
    (
        "crushing chest pain with ST elevation in leads II, III and aVF",
        [
            "Right coronary artery",
            "Left anterior descending artery",
            "Left circumflex artery",
            "Left main coronary artery",
        ],
    ),
    (
        "ascending weakness two weeks after diarrhoea",
        ["Guillain-Barre syndrome", "Myasthenia gravis", "Botulism", "Transverse myelitis"],
    ),
]


def make_items(n, rounds=None, **extra):
    """n distinct multiple-choice items; rounds: standin_rounds_to_correct for each (list) or all (int)."""
    items = []
    for i in range(n):
        finding, options = TOPICS[i % len(TOPICS)]
        item = {
            "question": (
                f"Case {i:03d}: a patient aged {20 + i % 60} presents with {finding}. What is the most likely answer?"
            ),
            "options": dict(zip("ABCD", options)),
            "answer_idx": "A",
            "answer": options[0],
        }
        if rounds is not None:
            item["standin_rounds_to_correct"] = rounds[i] if isinstance(rounds, list) else rounds
        item.update(extra)
        items.append(item)
    return items


def as_problems(items):
    """Verifiable problems made directly (what construct would produce against the stand-in)."""
    return [
        dict(item, **{"Open-ended Verifiable Question": item["question"], "Ground-True Answer": item["answer"]})
        for item in items
    ]


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)
    return str(path)


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def run(script, args, teacher=None, env_key=SECRET_KEY, check=True, timeout=300, **kwargs):
    """Run a data stage with these command-line args, asking this teacher with this API key (tests/scripts.py's
    run_script: in this process, or in a subprocess as the user would)."""
    argv = (["--api_url", teacher.base_url] if teacher else []) + list(args)
    return run_script(script, argv, env={"OPENAI_API_KEY": env_key or None}, check=check, timeout=timeout, **kwargs)


def outputs_of(tmp_path, name):
    """(main, records, summary) paths for --output_path tmp_path/name.json."""
    stem = os.path.join(str(tmp_path), name)
    return f"{stem}.json", f"{stem}_records.json", f"{stem}_summary.json"
