"""Small verifiable-problem files for the RL tests."""

import json

PROBLEMS = [
    ("A 60-year-old smoker has painless hematuria. What is the most likely diagnosis?", "Bladder cancer"),
    ("Which drug is first line for hypertension in a patient with diabetes?", "ACE inhibitor"),
    ("A child has a barking cough and inspiratory stridor. What is the diagnosis?", "Croup"),
    ("What is the antidote for acetaminophen overdose?", "N-acetylcysteine"),
    ("A patient has chest pain and ST elevation in II, III and aVF. Which artery is blocked?", "Right coronary artery"),
    ("Which vitamin deficiency causes scurvy?", "Vitamin C"),
    ("What organism causes most community-acquired pneumonia?", "Streptococcus pneumoniae"),
    ("Which electrolyte disturbance gives peaked T waves?", "Hyperkalemia"),
    ("What is the first line treatment of anaphylaxis?", "Intramuscular epinephrine"),
    ("Which hormone is low in primary hypothyroidism?", "Thyroxine"),
]


def write_problems(path, n=10, extra_rows=()):
    rows = [{"Open-ended Verifiable Question": q, "Ground-True Answer": a} for q, a in (PROBLEMS * 3)[:n]]
    rows.extend(extra_rows)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(rows, f)
    return str(path)
