"""prepare_eval_data.py on small local files shaped like the public datasets' rows; offline hub ids fail clearly."""

import json

import pytest

from tests.scripts import run_script

MEDQA_ROW = {
    "question": "Which antibody causes Graves disease?",
    "answer": "TSH receptor antibody",
    "options": {"A": "Anti-TPO", "B": "TSH receptor antibody", "C": "Anti-centromere", "D": "Anti-Smith"},
    "meta_info": "step1",
    "answer_idx": "B",
    "metamap_phrases": ["antibody"],
}
MEDMCQA_ROW = {
    "id": "m1",
    "question": "Scurvy is caused by deficiency of:",
    "opa": "Vitamin A",
    "opb": "Vitamin B1",
    "opc": "Vitamin C",
    "opd": "Vitamin D",
    "cop": 2,
    "choice_type": "single",
    "exp": "",
    "subject_name": "Biochemistry",
    "topic_name": "",
}
PUBMEDQA_ROWS = [
    {
        "pubid": 111,
        "question": "Does walking lower blood pressure?",
        "context": {"contexts": ["Trial of 400 adults.", "BP fell 6 mmHg."], "labels": ["METHODS", "RESULTS"]},
        "long_answer": "Yes.",
        "final_decision": "yes",
    },
    {
        "pubid": 222,
        "question": "Does the supplement prevent asthma?",
        "context": {"contexts": ["No difference."], "labels": ["RESULTS"]},
        "long_answer": "No.",
        "final_decision": "no",
    },
]
MMLU_PRO_ROWS = [
    {
        "question_id": 1,
        "question": "Which organ makes insulin?",
        "options": [
            "Liver",
            "Spleen",
            "Gallbladder",
            "Kidney",
            "Pancreas",
            "Stomach",
            "Adrenal",
            "Thyroid",
            "Pituitary",
            "Colon",
        ],
        "answer": "E",
        "answer_index": 4,
        "cot_content": "",
        "category": "health",
        "src": "x",
    },
    {
        "question_id": 2,
        "question": "Which molecule carries amino acids?",
        "options": ["mRNA", "tRNA", "rRNA"],
        "answer": "B",
        "answer_index": 1,
        "cot_content": "",
        "category": "biology",
        "src": "y",
    },
    {
        "question_id": 3,
        "question": "What is 2+2?",
        "options": ["3", "4"],
        "answer": "B",
        "answer_index": 1,
        "cot_content": "",
        "category": "math",
        "src": "z",
    },
]
GPQA_ROWS = [
    {
        "Question": "Carrier parents: chance of an affected child?",
        "Correct Answer": "1 in 4",
        "Incorrect Answer 1": "1 in 2",
        "Incorrect Answer 2": "3 in 4",
        "Incorrect Answer 3": "1 in 8",
        "Subdomain": "Genetics",
        "High-level domain": "Biology",
    },
    {
        "Question": "Which enzyme joins Okazaki fragments?",
        "Correct Answer": "DNA ligase",
        "Incorrect Answer 1": "Primase",
        "Incorrect Answer 2": "Helicase",
        "Incorrect Answer 3": "Gyrase",
        "Subdomain": "Molecular Biology",
        "High-level domain": "Biology",
    },
    {
        "Question": "Quantum question",
        "Correct Answer": "x",
        "Incorrect Answer 1": "y",
        "Incorrect Answer 2": "z",
        "Incorrect Answer 3": "w",
        "Subdomain": "Quantum Mechanics",
        "High-level domain": "Physics",
    },
]


def write(tmp_path, name, rows, jsonl=False):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in rows) if jsonl else json.dumps(rows))
    return str(path)


def run_prepare(repo_root, *argv):
    """evaluation/prepare_eval_data.py run whole, in this process (from repo_root)."""
    return run_script("evaluation/prepare_eval_data.py", argv, cwd=repo_root)


def test_converters_on_local_rows(tmp_path, repo_root):
    ids = tmp_path / "test_ground_truth.json"
    ids.write_text(json.dumps({"111": "yes"}))
    out = tmp_path / "eval_data.json"
    done = run_prepare(
        repo_root,
        "--output",
        str(out),
        "--medqa",
        write(tmp_path, "medqa.jsonl", [MEDQA_ROW], jsonl=True),
        "--medmcqa",
        write(tmp_path, "medmcqa.json", [MEDMCQA_ROW]),
        "--pubmedqa",
        write(tmp_path, "pubmedqa.json", PUBMEDQA_ROWS),
        "--pubmedqa_test_ids",
        str(ids),
        "--mmlu_pro",
        write(tmp_path, "mmlu_pro.json", MMLU_PRO_ROWS),
        "--gpqa",
        write(tmp_path, "gpqa.json", GPQA_ROWS),
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert list(data) == [
        "MedQA_USLME_test",
        "MedMCQA_validation",
        "PubMedQA",
        "MMLU-Pro_Health",
        "MMLU-Pro_Biology",
        "GPQA_Genetics",
        "GPQA_Molecular_Biology",
    ]
    assert data["MedQA_USLME_test"] == [
        {
            "question": MEDQA_ROW["question"],
            "options": MEDQA_ROW["options"],
            "answer_idx": "B",
            "answer": "TSH receptor antibody",
        }
    ]
    medmcqa = data["MedMCQA_validation"][0]
    assert medmcqa["options"] == {"A": "Vitamin A", "B": "Vitamin B1", "C": "Vitamin C", "D": "Vitamin D"}
    assert (medmcqa["answer_idx"], medmcqa["answer"]) == ("C", "Vitamin C")
    assert len(data["PubMedQA"]) == 1  # only the PMID in the test-id file
    pubmed = data["PubMedQA"][0]
    assert pubmed["options"] == {"A": "yes", "B": "no", "C": "maybe"} and pubmed["answer_idx"] == "A"
    assert (
        pubmed["question"]
        == "Context: Trial of 400 adults. BP fell 6 mmHg.\nQuestion: Does walking lower blood pressure?"
    )
    health = data["MMLU-Pro_Health"]
    assert len(health) == 1 and len(health[0]["options"]) == 10 and health[0]["options"]["J"] == "Colon"
    assert (health[0]["answer_idx"], health[0]["answer"]) == ("E", "Pancreas")
    assert [i["answer"] for i in data["MMLU-Pro_Biology"]] == ["tRNA"]
    for source, correct in (("GPQA_Genetics", "1 in 4"), ("GPQA_Molecular_Biology", "DNA ligase")):
        (item,) = data[source]
        assert sorted(item["options"]) == ["A", "B", "C", "D"]
        assert item["options"][item["answer_idx"]] == correct == item["answer"]


def test_skip_and_bad_rows(tmp_path, repo_root):
    out = tmp_path / "eval_data.json"
    skip_rest = ["--medmcqa", "skip", "--pubmedqa", "skip", "--mmlu_pro", "skip", "--gpqa", "skip"]
    bad = write(tmp_path, "medqa.json", [MEDQA_ROW, {"question": "no options"}])
    done = run_prepare(repo_root, "--output", str(out), "--medqa", bad, *skip_rest)
    assert done.returncode != 0 and "medqa.json: row 1 does not look like this dataset's rows" in done.stderr
    assert not out.exists()


def test_offline_hub_id_fails_clearly(tmp_path, repo_root):
    done = run_prepare(
        repo_root,
        "--output",
        str(tmp_path / "e.json"),
        "--medqa",
        "GBaker/MedQA-USMLE-4-options",
        "--medmcqa",
        "skip",
        "--pubmedqa",
        "skip",
        "--mmlu_pro",
        "skip",
        "--gpqa",
        "skip",
    )
    assert done.returncode != 0
    assert "could not load the Hugging Face dataset 'GBaker/MedQA-USMLE-4-options'" in done.stderr


@pytest.mark.parametrize("path", ["evaluation/data/demo_eval_data.json"])
def test_demo_eval_file_is_well_formed(repo_root, path):
    from huatuo_o1.evaluation.client import load_eval_items

    items = load_eval_items(f"{repo_root}/{path}")
    sources = {i["source"] for i in items}
    assert sources == {
        "MedQA_USLME_test",
        "MedMCQA_validation",
        "PubMedQA",
        "MMLU-Pro_Health",
        "MMLU-Pro_Biology",
        "GPQA_Genetics",
        "GPQA_Molecular_Biology",
    }
    assert all(i["options"][i["answer_idx"]] == i["answer"] for i in items)
    assert {len(i["options"]) for i in items if i["source"].startswith("MMLU-Pro")} == {10}


MMLU_PRO_TRAINING_SIDE = MMLU_PRO_ROWS + [
    {
        "question_id": 4,
        "question": "Which sort is stable?",
        "options": ["Heap sort", "Merge sort", "Quick sort"],
        "answer": "B",
        "answer_index": 1,
        "cot_content": "",
        "category": "computer science",
        "src": "stemez-ComputerScience",
    },
    {
        "question_id": 5,
        "question": "Who described classical conditioning?",
        "options": ["Pavlov", "Skinner"],
        "answer": "A",
        "answer_index": 0,
        "cot_content": "",
        "category": "psychology",
        "src": "ori_mmlu-high_school_psychology",
    },
    {
        "question_id": 6,
        "question": "Which bone is the longest?",
        "options": ["Femur", "Tibia"],
        "answer": "A",
        "answer_index": 0,
        "cot_content": "",
        "category": "health",
        "src": "ori_mmlu-anatomy",
    },
]


def test_general_output_is_mmlu_pro_outside_the_medical_tracks(tmp_path, repo_root):
    general, narrower = tmp_path / "general.json", tmp_path / "general_narrower.json"
    done = run_prepare(
        repo_root,
        "--output",
        "skip",
        "--general_output",
        str(general),
        "--mmlu_pro",
        write(tmp_path, "mmlu_pro.jsonl", MMLU_PRO_TRAINING_SIDE, jsonl=True),
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(general.read_text())
    assert [r["question_id"] for r in rows] == [3, 4, 5]  # never health or biology, the evaluated tracks
    assert rows[1] == {
        "question": "Which sort is stable?",
        "options": {"A": "Heap sort", "B": "Merge sort", "C": "Quick sort"},
        "answer_idx": "B",
        "answer": "Merge sort",
        "question_id": 4,
        "source": "MMLU-Pro_computer_science",
        "category": "computer science",
        "src": "stemez-ComputerScience",
    }
    assert done.stdout.count("wrote ") == 1 and f"wrote {general}" in done.stdout  # --output skip: no evaluation file
    assert "MMLU-Pro_math: 1 items" in done.stdout
    done = run_prepare(
        repo_root,
        "--output",
        "skip",
        "--general_output",
        str(narrower),
        "--general_exclude",
        "psychology",
        "--mmlu_pro",
        write(tmp_path, "mmlu_pro.json", MMLU_PRO_TRAINING_SIDE),
    )
    assert done.returncode == 0, done.stderr
    assert [r["category"] for r in json.loads(narrower.read_text())] == ["math", "computer science"]
    done = run_prepare(repo_root, "--output", "skip", "--general_output", str(narrower), "--mmlu_pro", "skip")
    assert done.returncode != 0 and "--general_output needs --mmlu_pro" in done.stderr
    done = run_prepare(repo_root, "--output", "skip")
    assert done.returncode == 1 and done.stderr == (
        "error: --output skip and no --exam_output, --general_output or --zh_output: nothing to write\n"
    )


def test_exam_output_is_construct_input(tmp_path, repo_root):
    exams = tmp_path / "exams.json"
    done = run_prepare(
        repo_root,
        "--output",
        "skip",
        "--exam_output",
        str(exams),
        "--medqa",
        write(tmp_path, "medqa_train.jsonl", [MEDQA_ROW], jsonl=True),
        "--medmcqa",
        write(tmp_path, "medmcqa_train.json", [MEDMCQA_ROW]),
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(exams.read_text())
    assert [(r["source"], r["answer_idx"], r["answer"]) for r in rows] == [
        ("MedQA_USMLE_train", "B", "TSH receptor antibody"),
        ("MedMCQA_train", "C", "Vitamin C"),
    ]
    assert rows[1]["options"] == {"A": "Vitamin A", "B": "Vitamin B1", "C": "Vitamin C", "D": "Vitamin D"}


# The Chinese track: rows as the releases publish them (questions written for these tests).
MCMLE_ROWS = [
    {
        "question": "男，8岁。发热3天，口腔颊黏膜见灰白色小点，周围有红晕。最可能的诊断是",
        "options": {"A": "腮腺炎", "B": "麻疹", "C": "风疹", "D": "水痘", "E": "猩红热"},
        "answer": "麻疹",
        "meta_info": "卫生部",
        "answer_idx": "B",
    },
    {  # the hub's bigbio copy gives the options as a list of key/value pairs
        "question": "胰岛素由哪种细胞分泌？",
        "options": [{"key": "A", "value": "α细胞"}, {"key": "B", "value": "β细胞"}, {"key": "C", "value": "δ细胞"}],
        "answer": "β细胞",
        "meta_info": "卫生部",
        "answer_idx": "B",
    },
]
CMB_QUESTIONS = [
    {
        "id": 1,
        "exam_type": "医师考试",
        "exam_class": "执业医师",
        "exam_subject": "临床执业医师",
        "question": "坏血病是由于缺乏",
        "question_type": "单项选择题",
        "option": {"A": "维生素A", "B": "维生素B1", "C": "维生素C", "D": "维生素D"},
    },
    {
        "id": 2,
        "exam_type": "医师考试",
        "exam_class": "执业医师",
        "exam_subject": "临床执业医师",
        "question": "属于脂溶性维生素的是",
        "question_type": "多项选择题",
        "option": {"A": "维生素A", "B": "维生素C", "C": "维生素D", "D": "维生素B12"},
    },
]
CMB_ANSWERS = [
    {"id": 1, "question_type": "单项选择题", "answer": "C"},
    {"id": 2, "question_type": "多项选择题", "answer": "AC"},
]
CMEXAM_CSV = (
    "Question,Options,Answer,Explanation,Disease Group\n"
    '"甲状腺功能亢进症最常见的病因是","A Graves病\nB 毒性结节性甲状腺肿\nC 甲状腺炎",A,Graves病最常见。,内分泌\n'
    '"可引起低钾血症的是","A 呕吐\nB 腹泻\nC 输注葡萄糖和胰岛素\nD 急性肾衰竭",ABC,,代谢\n'
    '"答案缺失的题目","A 甲\nB 乙",,,\n'
)
CMMLU_CSV = {
    "clinical_knowledge": ",Question,A,B,C,D,Answer\n0,成人正常心率为每分钟,40-60次,60-100次,100-120次,120-140次,B\n",
    "virology": ",Question,A,B,C,D,Answer\n0,乙肝病毒的遗传物质是,DNA,RNA,蛋白质,脂质,A\n",
    "anatomy": ",Question,A,B,C,D,Answer\n0,人体最长的骨是,股骨,胫骨,肱骨,腓骨,A\n",
}


def chinese_files(tmp_path):
    cmmlu = tmp_path / "cmmlu_test"
    cmmlu.mkdir()
    for subject, text in CMMLU_CSV.items():
        (cmmlu / f"{subject}.csv").write_text(text, encoding="utf-8")
    cmexam = tmp_path / "test_with_annotations.csv"
    cmexam.write_text(CMEXAM_CSV, encoding="utf-8")
    return [
        "--medqa_mcmle",
        write(tmp_path, "mcmle_test.jsonl", MCMLE_ROWS, jsonl=True),
        "--cmb",
        write(tmp_path, "CMB-test-choice-question-merge.json", CMB_QUESTIONS),
        "--cmb_answers",
        write(tmp_path, "CMB-test-choice-answer.json", CMB_ANSWERS),
        "--cmexam",
        str(cmexam),
        "--cmmlu",
        str(cmmlu),
        "--cmmlu_subjects",
        "clinical_knowledge,virology",
    ]


def test_chinese_track_from_local_files(tmp_path, repo_root):
    out = tmp_path / "eval_data_zh.json"
    done = run_prepare(repo_root, "--output", "skip", "--zh_output", str(out), *chinese_files(tmp_path))
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text(encoding="utf-8"))
    assert list(data) == ["MedQA_MCMLE_test", "CMB_Exam_test", "CMExam_test", "CMMLU_Medical"]
    assert [(i["answer_idx"], i["answer"], len(i["options"])) for i in data["MedQA_MCMLE_test"]] == [
        ("B", "麻疹", 5),
        ("B", "β细胞", 3),
    ]
    # CMB: the answers joined by id; the multiple-answer question left out.
    assert data["CMB_Exam_test"] == [
        {
            "question": "坏血病是由于缺乏",
            "options": {"A": "维生素A", "B": "维生素B1", "C": "维生素C", "D": "维生素D"},
            "answer_idx": "C",
            "answer": "维生素C",
            "id": 1,
            "exam_class": "执业医师",
        }
    ]
    # CMExam: options read from their "A text" lines; "ABC" and the empty answer left out.
    assert data["CMExam_test"] == [
        {
            "question": "甲状腺功能亢进症最常见的病因是",
            "options": {"A": "Graves病", "B": "毒性结节性甲状腺肿", "C": "甲状腺炎"},
            "answer_idx": "A",
            "answer": "Graves病",
        }
    ]
    # CMMLU: only the subjects asked for, each item naming its subject.
    assert [(i["subject"], i["answer"]) for i in data["CMMLU_Medical"]] == [
        ("clinical_knowledge", "60-100次"),
        ("virology", "DNA"),
    ]
    assert "CMB_Exam_test: 1 questions left out" in done.stdout
    assert "CMExam_test: 2 questions left out" in done.stdout
    assert done.stdout.count("wrote ") == 1  # --output skip: no English file


def test_chinese_track_errors(tmp_path, repo_root):
    files = chinese_files(tmp_path)
    out = tmp_path / "zh.json"
    no_answers = [arg for arg in files if "answer" not in arg]  # drop --cmb_answers and its file
    done = run_prepare(repo_root, "--output", "skip", "--zh_output", str(out), *no_answers)
    assert done.returncode == 1 and "the rows carry no answers" in done.stderr and "--cmb_answers" in done.stderr
    done = run_prepare(repo_root, "--output", "skip", "--zh_output", str(out), *files, "--cmmlu_subjects", "nutrition")
    assert done.returncode == 1 and "nutrition.csv" in done.stderr
    skip_all = ["--medqa_mcmle", "skip", "--cmb", "skip", "--cmexam", "skip", "--cmmlu", "skip"]
    done = run_prepare(repo_root, "--output", "skip", "--zh_output", str(out), *skip_all)
    assert done.returncode == 1 and "every benchmark is 'skip' for --zh_output" in done.stderr
    assert not out.exists()
