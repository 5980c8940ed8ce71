"""train_verifier.py / score_verifier.py: data reading, learning a synthetic task, pad handling, drop-in for RL."""

import ast
import json
import os
import shutil
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from huatuo_o1 import models as model_loading
from huatuo_o1 import training
from huatuo_o1 import verifier_training as vt
from huatuo_o1.records import InputError
from huatuo_o1.rl import loading
from huatuo_o1.serving import free_port
from huatuo_o1.verifier import VerifierReward, verifier_input
from tests.damage import DAMAGES, damage
from tests.rl_helpers import write_problems
from tests.scripts import record_calls, reset_accelerate, run_ok, run_script
from tests.verifier_helpers import SHORT_TEMPLATE, as_search_records, synthetic_verdicts, write_json


def train_verifier(argv):
    """train_verifier.py as a user runs it (in this process); its verifier_summary.json."""
    run_ok("train_verifier.py", argv)
    reset_accelerate()
    with open(os.path.join(argv[argv.index("--output_dir") + 1], "verifier_summary.json")) as f:
        return json.load(f)


pytestmark = pytest.mark.usefixtures("one_thread_fresh_accelerate")


def data_args(path, **fields):
    defaults = dict(
        response_field="response",
        reference_field="reference_answer",
        verdict_field="verdict",
        records_field="verifications",
    )
    return SimpleNamespace(data_path=str(path), **{**defaults, **fields})


# ---- data ---------------------------------------------------------------------------------------
def test_search_records_are_flattened_and_verdict_spellings_parsed(tmp_path):
    records = [
        {
            "Open-ended Verifiable Question": "Q0",
            "verifications": [
                {"response": "Croup", "reference_answer": "Croup", "verdict": True},
                {"response": "Asthma", "reference_answer": "Croup", "verdict": "False"},
            ],
        },
        {"Open-ended Verifiable Question": "Q1", "verifications": []},  # nothing verified yet
        {
            "Open-ended Verifiable Question": "Q2",
            "verifications": [
                {"response": "Gout", "reference_answer": "Gout", "verdict": " true "},
                {"response": "?", "reference_answer": "Gout", "verdict": None},
            ],
        },  # verdict missing: skipped
    ]
    examples, skipped = vt.read_examples(data_args(write_json(tmp_path / "records.json", records)))
    assert [(e["response"], e["label"], e["group"]) for e in examples] == [
        ("Croup", 1, 0),
        ("Asthma", 0, 0),
        ("Gout", 1, 2),
    ]
    assert skipped == 1


def test_flat_rows_with_other_field_names(tmp_path):
    rows = [
        {"answer": "ACE inhibitor", "gold": "ACE inhibitor", "ok": 1},
        {"answer": "Beta blocker", "gold": "ACE inhibitor", "ok": 0},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    examples, _ = vt.read_examples(
        data_args(path, response_field="answer", reference_field="gold", verdict_field="ok")
    )
    assert [(e["response"], e["reference"], e["label"], e["group"]) for e in examples] == [
        ("ACE inhibitor", "ACE inhibitor", 1, 0),
        ("Beta blocker", "ACE inhibitor", 0, 1),
    ]


def test_bad_rows_are_named(tmp_path):
    records = [
        {"verifications": [{"response": "a", "reference_answer": "b", "verdict": True}]},
        {
            "verifications": [
                {"response": "a", "reference_answer": "b", "verdict": True},
                {"response": "a", "verdict": True},
            ]
        },
    ]
    with pytest.raises(InputError, match=r"row 1, verifications\[1\] lacks the field 'reference_answer'"):
        vt.read_examples(data_args(write_json(tmp_path / "r.json", records)))
    with pytest.raises(InputError, match=r"row 0: verdict 'maybe' is not true/false"):
        vt.read_examples(
            data_args(
                write_json(tmp_path / "f.json", [{"response": "a", "reference_answer": "b", "verdict": "maybe"}])
            )
        )


def test_split_keeps_each_record_on_one_side():
    examples = [{"group": g, "label": 1} for g in range(20) for _ in range(3)]
    train, held_out = vt.split_by_record(examples, eval_fraction=0.2, max_eval_samples=100, seed=0)
    assert len(held_out) == 12 and len(train) == 48
    assert not {e["group"] for e in train} & {e["group"] for e in held_out}
    train, held_out = vt.split_by_record(examples[:3], eval_fraction=0.5, max_eval_samples=100, seed=0)
    assert (len(train), len(held_out)) == (1, 2)  # a single record: its examples are split one by one


def test_string_match_baseline():
    assert vt.string_match("The diagnosis is Community-acquired pneumonia.", "community acquired pneumonia")
    assert not vt.string_match("Pneumonitis", "pneumonia")
    assert not vt.string_match("STEMI", "ST")  # whole words only
    assert not vt.string_match("anything", "  ")
    assert vt.scores([True, True, False, False], [True, False, False, True]) == {
        "accuracy": 0.5,
        "precision": 0.5,
        "recall": 0.5,
    }


# ---- learning -----------------------------------------------------------------------------------
def test_tiny_verifier_learns_the_synthetic_task(tiny_models, tmp_path):
    rows = synthetic_verdicts(3000, seed=0)
    data = write_json(tmp_path / "records.json", as_search_records(rows, per_record=3))
    template = tmp_path / "short.txt"
    template.write_text(SHORT_TEMPLATE)
    out = str(tmp_path / "verifier")
    summary = train_verifier(
        [
            "--model_path",
            tiny_models["tiny-verifier"],
            "--data_path",
            data,
            "--output_dir",
            out,
            "--verifier_template",
            str(template),
            "--max_steps",
            "1000",
            "--learning_rate",
            "1e-3",
            "--train_bsz_per_gpu",
            "16",
            "--eval_fraction",
            "0.1",
            "--max_eval_samples",
            "200",
            "--seed",
            "1",
            "--logging_steps",
            "50",
        ]
    )
    assert summary["n_train"] + summary["n_held_out"] == 3000 and 195 <= summary["n_held_out"] <= 201
    before, after = summary["heldout_before"], summary["heldout"]
    chance = max(summary["held_out_share_correct"], 1 - summary["held_out_share_correct"])
    assert before["accuracy"] <= chance + 0.05  # the random head says "correct" to everything or nearly
    # Bounds from the spread over 6 data/training seeds (1000 steps, lr 1e-3): accuracy 0.83-0.97,
    # precision 0.76-0.94, recall 0.97-1.00, gain over chance 0.26-0.53. The figures move with the
    # machine's floating-point paths, so each bound keeps a margin of at least 0.07 below the worst seed.
    assert (
        after["accuracy"] >= 0.75
        and after["accuracy"] >= chance + 0.15
        and after["accuracy"] >= before["accuracy"] + 0.15
    )
    assert after["precision"] >= 0.65 and after["recall"] >= 0.85
    assert summary["baseline"]["accuracy"] == 1.0  # here the reference is in the response iff correct
    assert (
        summary["verifier_vs_baseline_agreement"] == after["accuracy"]
    )  # so agreeing with it = agreeing with the verdicts
    assert summary["last_loss"] < summary["first_loss"] - 0.2
    throughput = summary["throughput"]  # padded batches of 16: more tokens processed than real
    assert 0 < throughput["after_first_step"]["seconds"] < throughput["seconds"]
    assert 0 < throughput["real_tokens_per_second"] < throughput["processed_tokens_per_second"]

    # the saved folder, scored through RL's reward code with the same template, gives the held-out predictions
    predictions = json.load(open(os.path.join(out, "heldout_predictions.json")))
    model = AutoModelForSequenceClassification.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    reward = VerifierReward(model.eval(), tokenizer, template=str(template), batch_size=7)
    p = reward.p_correct(
        [
            verifier_input(r["response"], r["reference_answer"], tokenizer.eos_token, reward.template)
            for r in predictions
        ]
    )
    assert torch.allclose(p, torch.tensor([r["p_correct"] for r in predictions]), atol=1e-3)
    accuracy = sum((x > 0.4) == r["verdict"] for x, r in zip(p.tolist(), predictions)) / len(predictions)
    assert abs(accuracy - after["accuracy"]) < 1e-4  # the summary rounds to 4 places
    assert not [name for name in os.listdir(out) if name.startswith("checkpoint-")]  # finished: no resume state left


# ---- pad token ----------------------------------------------------------------------------------
def verifier_padding_with_eos(tiny_models, folder):
    """A copy of the tiny verifier whose tokenizer (and config) pad with eos, like SmolLM2's."""
    shutil.copytree(tiny_models["tiny-verifier"], folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(folder)
    config_path = os.path.join(folder, "config.json")
    config = json.load(open(config_path))
    config["pad_token_id"] = tokenizer.eos_token_id
    json.dump(config, open(config_path, "w"))
    return str(folder)


def logits_at(model, input_ids, position):
    """The classifier's logits read at one position, by hand."""
    hidden = model.model(input_ids=torch.tensor([input_ids])).last_hidden_state
    return model.score(hidden[0, position])


@pytest.mark.parametrize("pad_in_vocab", [True, False])
def test_eos_padding_tokenizer_gets_a_distinct_pad_and_scores_at_the_eos(
    tiny_models, tmp_path, monkeypatch, pad_in_vocab
):
    backbone = verifier_padding_with_eos(tiny_models, tmp_path / "backbone")
    if not pad_in_vocab:  # no reusable special token: a new one is added and the embeddings grow
        monkeypatch.setattr(model_loading, "PAD_CANDIDATES", [])
    data = write_json(tmp_path / "rows.json", synthetic_verdicts(24, seed=3))
    out = str(tmp_path / "verifier")
    train_verifier(
        [
            "--model_path",
            backbone,
            "--data_path",
            data,
            "--output_dir",
            out,
            "--max_steps",
            "2",
            "--train_bsz_per_gpu",
            "4",
            "--eval_fraction",
            "0.25",
            "--eval_before_training",
            "False",
        ]
    )
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    original = AutoTokenizer.from_pretrained(backbone)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id and model.config.pad_token_id == tokenizer.pad_token_id
    if pad_in_vocab:
        assert tokenizer.pad_token == "<|end_of_text|>" and len(tokenizer) == len(original)
    else:
        assert tokenizer.pad_token == "<|pad|>" and len(tokenizer) == len(original) + 1
    assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer)

    short = verifier_input("ACE", "ACE", tokenizer.eos_token)
    long = verifier_input("The answer is an ACE inhibitor such as lisinopril.", "ACE", tokenizer.eos_token)
    ids = tokenizer(short, add_special_tokens=False)["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id
    with torch.no_grad():
        batch = tokenizer([short, long], add_special_tokens=False, padding=True, return_tensors="pt")
        assert batch["input_ids"][0, -1] == tokenizer.pad_token_id  # the short one is padded
        batched = model(**batch).logits[0]
        alone = model(input_ids=torch.tensor([ids])).logits[0]
        at_eos = logits_at(model, ids, len(ids) - 1)
        before_eos = logits_at(model, ids, len(ids) - 2)
    assert torch.allclose(batched, alone, atol=1e-5) and torch.allclose(alone, at_eos, atol=1e-5)
    assert not torch.allclose(alone, before_eos, atol=1e-3)


# ---- drop-in for RL and scoring -----------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_verifier(tiny_models, tmp_path_factory):
    """A tiny verifier trained briefly with the real template (RL's default)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("quick_verifier")
    data = write_json(folder / "records.json", as_search_records(synthetic_verdicts(60, seed=5)))
    summary = train_verifier(
        [
            "--model_path",
            tiny_models["tiny-verifier"],
            "--data_path",
            data,
            "--output_dir",
            str(folder / "verifier"),
            "--max_steps",
            "5",
            "--train_bsz_per_gpu",
            "4",
            "--learning_rate",
            "1e-3",
            "--max_length",
            "256",
            "--eval_before_training",
            "False",
        ]
    )
    torch.set_num_threads(threads)
    return summary["output_dir"]


def test_trained_verifier_drops_into_rl_stage2(tiny_models, quick_verifier, tmp_path, monkeypatch):
    seen = {}
    real_load_models = loading.load_models

    def keep_models(*args):
        models = real_load_models(*args)
        seen["verifier"], seen["verifier_tokenizer"] = models.verifier, models.verifier_tokenizer
        return models

    class KeptReward(VerifierReward):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen["reward"] = self

    # the script imports these when it runs
    monkeypatch.setattr(loading, "load_models", keep_models)
    monkeypatch.setattr("huatuo_o1.rl.reward.VerifierReward", KeptReward)  # what builds the run's reward
    out = str(tmp_path / "rl")
    run_ok(
        "RL_stage2.py",
        [
            "--model_name_or_path",
            tiny_models["tiny-qwen2"],
            "--reward_model_path",
            quick_verifier,
            "--value_model_path",
            tiny_models["tiny-value"],
            "--dataset_name",
            write_problems(tmp_path / "problems.json", 5),
            "--output_dir",
            out,
            "--response_length",
            "8",
            "--per_device_train_batch_size",
            "2",
            "--gradient_accumulation_steps",
            "1",
            "--total_episodes",
            "4",
            "--num_ppo_epochs",
            "1",
            "--local_rollout_forward_batch_size",
            "2",
            "--bf16",
            "False",
            "--report_to",
            "none",
            "--save_strategy",
            "no",
            "--eval_strategy",
            "no",
            "--seed",
            "1",
        ],
    )
    summary = json.load(open(os.path.join(out, "rl_summary.json")))
    assert summary["updates"] == 2

    # RL loaded our weights and our tokenizer's pad token as they are, and reads the same text we trained on
    saved = AutoModelForSequenceClassification.from_pretrained(quick_verifier)
    assert all(torch.equal(v, saved.state_dict()[k]) for k, v in seen["verifier"].state_dict().items())
    ours = AutoTokenizer.from_pretrained(quick_verifier)
    assert seen["verifier_tokenizer"].pad_token_id == ours.pad_token_id != ours.eos_token_id
    reward = seen["reward"]
    out_rl = reward(["## Thinking\n\nChest pain.\n\n## Final Response\n\nACE", "no layout"], ["ACE", "ACE"])
    expected = torch.softmax(
        saved(
            **ours(verifier_input("ACE", "ACE", ours.eos_token), add_special_tokens=False, return_tensors="pt")
        ).logits,
        -1,
    )[0, 1]
    assert torch.allclose(out_rl.p_correct[0], expected, atol=1e-5)
    assert out_rl.rewards[0].item() == (1.0 if expected > 0.4 else 0.1) and out_rl.rewards[1].item() == 0.0


def test_score_verifier_matches_training_predictions(quick_verifier, tmp_path, capsys):
    predictions = json.load(open(os.path.join(quick_verifier, "heldout_predictions.json")))
    pairs = write_json(
        tmp_path / "pairs.json",
        [
            {"response": r["response"], "reference_answer": r["reference_answer"], "verdict": str(r["verdict"])}
            for r in predictions
        ],
    )
    result = run_ok("score_verifier.py", ["--verifier_path", quick_verifier, "--data_path", pairs])
    summary = ast.literal_eval(result.stdout.strip().splitlines()[-1])  # the summary it prints (a Python dict)
    scored = json.load(open(tmp_path / "pairs_scored.json"))
    assert [s["p_correct"] for s in scored] == pytest.approx([r["p_correct"] for r in predictions], abs=2e-4)
    assert [s["verdict"] for s in scored] == [r["verdict"] for r in predictions]
    assert summary["n"] == len(predictions) and summary["verifier_vs_verdicts"]["accuracy"] == pytest.approx(
        sum(s["predicted"] == s["verdict"] for s in scored) / len(scored), abs=1e-4
    )

    whole = write_json(
        tmp_path / "whole.json",
        [
            {"response": "## Thinking\n\nHmm.\n\n## Final Response\n\nACE", "reference_answer": "ACE"},
            {"response": "ACE", "reference_answer": "ACE"},
        ],
    )
    run_ok(
        "score_verifier.py",
        [
            "--verifier_path",
            quick_verifier,
            "--data_path",
            whole,
            "--full_responses",
            "True",
            "--output_path",
            str(tmp_path / "whole_scored.json"),
        ],
    )
    scored = json.load(open(tmp_path / "whole_scored.json"))
    assert scored[0]["reward"] in (1.0, 0.1) and scored[1]["reward"] == 0.0 and "verdict" not in scored[0]


def test_rerun_resumes_after_the_last_finished_epoch(tiny_models, tmp_path, monkeypatch):
    data = write_json(tmp_path / "rows.json", synthetic_verdicts(40, seed=7))
    out = str(tmp_path / "verifier")
    argv = [
        "--model_path",
        tiny_models["tiny-verifier"],
        "--data_path",
        data,
        "--output_dir",
        out,
        "--n_epochs",
        "3",
        "--train_bsz_per_gpu",
        "6",
        "--logging_steps",
        "1",
        "--max_length",
        "200",
        "--eval_before_training",
        "False",
    ]
    real_save = training.Checkpoints.save

    def crash_after_first_epoch(self, *args, **kwargs):
        path = real_save(self, *args, **kwargs)
        raise KeyboardInterrupt(f"simulated crash after saving {path}")

    monkeypatch.setattr(training.Checkpoints, "save", crash_after_first_epoch)
    stopped = run_script("train_verifier.py", argv)
    assert stopped.returncode == 130 and "interrupted: simulated crash after saving" in stopped.stderr
    # the toolkit's layout: checkpoint-<step>/ with the model, trainer_state.json and training_state/
    state = json.load(open(os.path.join(out, "checkpoint-6", training.TRAINER_STATE)))
    assert state["epoch"] == 1 and state["step"] == 6  # 36 train rows / 6 per step
    assert os.path.isdir(os.path.join(out, "checkpoint-6", training.TRAINING_STATE))
    assert os.path.isfile(os.path.join(out, "checkpoint-6", "config.json"))
    monkeypatch.setattr(training.Checkpoints, "save", real_save)
    reset_accelerate()
    loads = record_calls(monkeypatch, training.Checkpoints, "load")
    summary = train_verifier(argv)
    assert [call[1] for call in loads] == [os.path.join(out, "checkpoint-6")]  # resumed through the toolkit
    log = json.load(open(os.path.join(out, "train_log.json")))
    assert summary["steps"] == 18 and [entry["step"] for entry in log] == list(range(1, 19))
    assert [entry["epoch"] for entry in log] == [0] * 6 + [1] * 6 + [2] * 6


def test_a_finished_verifier_is_kept_and_a_rerun_with_other_data_refused(tiny_models, tmp_path):
    first = write_json(tmp_path / "a.json", synthetic_verdicts(24, seed=1))
    other = write_json(tmp_path / "b.json", synthetic_verdicts(24, seed=2))
    out = str(tmp_path / "verifier")

    def train(data, *extra):
        argv = ["--model_path", tiny_models["tiny-verifier"], "--data_path", data, "--output_dir", out]
        argv += ["--n_epochs", "1", "--max_length", "64", "--eval_before_training", "False", *extra]
        try:
            return run_script("train_verifier.py", argv)
        finally:
            reset_accelerate()

    assert train(first).returncode == 0
    weights = open(os.path.join(out, "model.safetensors"), "rb").read()
    result = train(other)  # before: trained afresh over the finished verifier, exit 0
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith(f"error: {out} holds a verifier run made with other inputs (the data)")
    assert "--resume False" in lines[0] and "another --output_dir" in lines[0]
    result = train(first)
    assert result.returncode == 0 and "holds a verifier trained on these inputs: nothing to do" in result.stdout
    assert open(os.path.join(out, "model.safetensors"), "rb").read() == weights
    assert train(other, "--resume", "False").returncode == 0
    assert json.load(open(os.path.join(out, "verifier_summary.json")))["data_path"] == other


@pytest.fixture(scope="module")
def verifier_runs(tiny_models, tmp_path_factory):
    """A verifier run stopped after its first epoch (checkpoint-4 in its folder) and the same run finished (the
    checkpoint removed, the verifier and its summary in the folder); and the command line over the copy at {out}."""
    folder = tmp_path_factory.mktemp("verifier_runs")
    data = write_json(folder / "rows.json", synthetic_verdicts(30, seed=4))
    argv = ["--model_path", tiny_models["tiny-verifier"], "--data_path", data, "--output_dir", "{out}"]
    argv += ["--n_epochs", "2", "--train_bsz_per_gpu", "6", "--max_length", "64", "--eval_before_training", "False"]
    real_save = training.Checkpoints.save

    def crash_after_saving(self, *args, **kwargs):
        raise KeyboardInterrupt(f"simulated crash after saving {real_save(self, *args, **kwargs)}")

    run = str(folder / "run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training.Checkpoints, "save", crash_after_saving)
        assert run_script("train_verifier.py", [a.format(out=run) for a in argv]).returncode == 130
    reset_accelerate()
    shutil.copytree(run, str(folder / "interrupted"))
    train_verifier([a.format(out=run) for a in argv])
    torch.set_num_threads(threads)
    return {"interrupted": str(folder / "interrupted"), "finished": run, "argv": argv}


def rerun_verifier(verifier_runs, which, tmp_path):
    """A copy of one of verifier_runs, and train_verifier.py run again over it with the same inputs."""
    out = str(tmp_path / which)
    shutil.copytree(verifier_runs[which], out)

    def rerun():
        try:
            return run_script("train_verifier.py", [a.format(out=out) for a in verifier_runs["argv"]])
        finally:
            reset_accelerate()

    return out, rerun


def one_error_line(result):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return lines[0]


def test_the_trained_verifier_manifest_covers_the_model_and_the_summary_a_rerun_reads(verifier_runs):
    with open(os.path.join(verifier_runs["finished"], "manifest.json")) as f:
        listed = {entry["path"]: entry["part"] for entry in json.load(f)["files"]}
    assert listed["model.safetensors"] == listed["config.json"] == listed["tokenizer.json"] == "model"
    assert listed["verifier_summary.json"] == "run"  # "nothing to do" reads its inputs
    assert "heldout_predictions.json" not in listed and not any(p.startswith("checkpoint-") for p in listed)


@pytest.mark.parametrize("how", DAMAGES)
def test_a_trained_verifier_with_a_damaged_file_is_never_taken_as_trained_nor_loaded(verifier_runs, tmp_path, how):
    out, rerun = rerun_verifier(verifier_runs, "finished", tmp_path)
    assert rerun().returncode == 0  # as it is: nothing to do
    weights = os.path.join(out, "model.safetensors")
    reason = damage(weights, how)
    before = {name: open(os.path.join(out, name), "rb").read() for name in os.listdir(out) if name.endswith(".json")}
    # before: "holds a verifier trained on these inputs: nothing to do", exit 0
    assert one_error_line(rerun()) == (
        f"error: {weights} does not match its manifest {reason}; {out} holds a finished run whose files are damaged: "
        "pass --resume False to train again"
    )
    after = {name: open(os.path.join(out, name), "rb").read() for name in os.listdir(out) if name.endswith(".json")}
    assert after == before
    pairs = write_json(tmp_path / "pairs.json", synthetic_verdicts(3, seed=9))
    scored = run_script("score_verifier.py", ["--verifier_path", out, "--data_path", pairs])
    assert one_error_line(scored).startswith(f"error: --verifier_path {out}: {weights} does not match its manifest")


@pytest.mark.parametrize("how", DAMAGES)
def test_an_interrupted_verifier_whose_checkpoint_is_damaged_stops_naming_the_file(verifier_runs, tmp_path, how):
    out, rerun = rerun_verifier(verifier_runs, "interrupted", tmp_path)
    (checkpoint,) = [os.path.join(out, n) for n in os.listdir(out) if n.startswith("checkpoint-")]  # keeps one
    weights = os.path.join(checkpoint, "model.safetensors")
    reason = damage(weights, how)
    assert one_error_line(rerun()) == (
        f"error: {weights} does not match its manifest {reason}; no checkpoint of {out} matches its manifest: pass "
        "--resume False to start afresh (the checkpoints are removed)"
    )
    result = run_script(
        "train_verifier.py", [a.format(out=out) for a in verifier_runs["argv"]] + ["--resume", "False"]
    )
    reset_accelerate()
    assert result.returncode == 0 and os.path.isfile(os.path.join(out, "verifier_summary.json"))


ZERO3_CPU_CONFIG = """
compute_environment: LOCAL_MACHINE
distributed_type: DEEPSPEED
deepspeed_config:
  zero_stage: 3
  zero3_init_flag: true
  zero3_save_16bit_model: true
  offload_optimizer_device: none
  offload_param_device: none
  gradient_accumulation_steps: 8
mixed_precision: 'no'
machine_rank: 0
num_machines: 1
num_processes: 2
rdzv_backend: static
same_network: true
main_training_function: main
"""


@pytest.mark.multiprocess
def test_zero3_two_processes(tiny_models, tmp_path, repo_root):
    """accelerate + DeepSpeed ZeRO-3 on CPU (gloo): sharded training, gathered save, our batch shape and schedule."""
    import subprocess
    import sys

    config = tmp_path / "zero3_cpu.yaml"
    config.write_text(ZERO3_CPU_CONFIG)
    backbone = verifier_padding_with_eos(tiny_models, tmp_path / "backbone")
    data = write_json(tmp_path / "records.json", as_search_records(synthetic_verdicts(60, seed=4)))
    out = tmp_path / "verifier"
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    result = subprocess.run(
        [
            accelerate,
            "launch",
            "--config_file",
            str(config),
            "--num_processes",
            "2",
            "--main_process_port",  # not the default 29500: another run on this machine may hold it
            str(free_port()),
            "train_verifier.py",
            "--model_path",
            backbone,
            "--data_path",
            data,
            "--output_dir",
            str(out),
            "--train_bsz_per_gpu",
            "4",
            "--gradient_accumulation_steps",
            "2",
            "--n_epochs",
            "2",
            "--max_length",
            "256",
            "--logging_steps",
            "1",
            "--warmup_rates",
            "0.25",
            "--learning_rate",
            "1e-4",
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.load(open(out / "verifier_summary.json"))
    # 60 rows in 20 records -> 54 train / 6 held out; 54 / (4 per process x 2 processes x 2 accumulated)
    # -> 4 steps per epoch
    assert (summary["n_train"], summary["n_held_out"], summary["steps"]) == (54, 6, 8)
    lrs = [entry["lr"] for entry in json.load(open(out / "train_log.json"))]
    assert (
        lrs[1] == pytest.approx(1e-4) and lrs[-1] == pytest.approx(0.0) and lrs[0] < lrs[1]
    )  # 2 warmup steps, cosine to 0
    trained = AutoModelForSequenceClassification.from_pretrained(str(out))
    initial = AutoModelForSequenceClassification.from_pretrained(backbone)
    changed = [k for k, v in trained.state_dict().items() if not torch.equal(v, initial.state_dict()[k])]
    assert len(changed) == len(initial.state_dict())  # every tensor trained, none left as an empty ZeRO-3 shard
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.pad_token_id != tokenizer.eos_token_id == initial.config.pad_token_id
    assert trained.config.pad_token_id == tokenizer.pad_token_id


def test_parameter_groups_head_rate_and_no_decay(tiny_models):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_models["tiny-verifier"])
    args = SimpleNamespace(weight_decay=0.1, learning_rate=1e-5, head_learning_rate=1e-3)
    groups = vt.parameter_groups(model, args.weight_decay, args.learning_rate, args.head_learning_rate)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sum(len(g["params"]) for g in groups) == len(names)
    for group in groups:
        for p in group["params"]:
            assert (group["lr"] == 1e-3) == names[id(p)].startswith("score.")
            assert (group["weight_decay"] == 0.1) == (p.ndim >= 2)
    args.head_learning_rate = None
    assert {
        g["lr"] for g in vt.parameter_groups(model, args.weight_decay, args.learning_rate, args.head_learning_rate)
    } == {1e-5}
