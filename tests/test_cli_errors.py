"""Bad input to the data and training stages, as a careless user types it: one line, an exit status, nothing touched.

A table of (script, what is wrong, the flags that change, exit status, what the line must name). Every case runs
the script whole in this process (tests/scripts.py), from a folder of valid inputs, and asserts: the exit status
(2 for a flag argparse cannot read, 1 for any other bad input), exactly one line on stderr, starting with
"error:" and naming the culprit (and the fix or the close match where there is one), no traceback, and every
file of the folder byte for byte as it was, nothing created (the checks come before any work).

Then one test per silent failure of the data stages, against the stand-in teacher (tests/standin_teacher.py):
a rerun that would write fewer rows, or in which every item failed, keeps the old file; Ctrl-C (SIGINT to a real
process) stops within 3 s with one line and no request after it; a second run on one progress folder refuses to
start and leaves the first run's temporary files alone.
"""

# ruff: noqa: E501 (the table keeps one case per line)

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from huatuo_o1 import cli, records
from tests.damage import damage, seal
from tests.data_helpers import FAST, REPO_ROOT, SECRET_KEY, make_items, outputs_of, read_json, run, write_json
from tests.rl_helpers import rl_flags, write_problems
from tests.scripts import run_script
from tests.verifier_helpers import synthetic_verdicts

pytestmark = pytest.mark.usefixtures("one_thread_fresh_accelerate")

CONSTRUCT, SEARCH = "construct_verifiable_medical_problems.py", "search_for_complex_reasoning_path.py"
SFT, RL, VERIFIER = "SFT_stage1.py", "RL_stage2.py", "train_verifier.py"
DEAD_ENDPOINT = "http://127.0.0.1:9/v1"  # refuses connections: a run that gets past its checks fails fast
SFT_ROWS = [
    {"Question": f"Question {i}?", "Complex_CoT": f"Thinking {i}.", "Response": f"Answer {i}."} for i in range(4)
]


def base_argv(script, tiny_models):
    """Valid flags of each script over the files of the `workspace` fixture ({name} is filled in per test)."""
    if script in (CONSTRUCT, SEARCH):
        data = "{mcq}" if script == CONSTRUCT else "{problems}"
        return {
            "--data_path": data,
            "--output_path": "{out}/result.json",
            "--output_dir": "{out}/progress",
            "--api_url": DEAD_ENDPOINT,
            "--max_retries": "0",
        }
    if script == SFT:
        return {
            "--model_path": tiny_models["tiny-qwen2"],
            "--data_path": "{sft}",
            "--output_dir": "{out}/ckpts",
            "--log_dir": "{out}/logs",
            "--n_epochs": "1",
            "--train_bsz_per_gpu": "2",
            "--gradient_accumulation_steps": "1",
            "--max_seq_len": "512",
            "--gradient_checkpointing": "False",
        }
    if script == RL:
        flags = rl_flags(tiny_models, "{problems}", "{out}/rl", total_episodes=4)
        return dict(zip(flags[0::2], flags[1::2]))
    return {
        "--model_path": tiny_models["tiny-verifier"],
        "--data_path": "{verdicts}",
        "--output_dir": "{out}/verifier",
        "--max_length": "128",
        "--n_epochs": "1",
        "--eval_before_training": "False",
    }


DATA = (CONSTRUCT, SEARCH)
TRAINING = (SFT, RL, VERIFIER)
# (scripts, case, flags to set (None: leave the flag out), exit status, texts the error line must hold)
CASES = [
    # flags argparse cannot read: one line (not a usage block), the closest flag when there is one
    (DATA, "unknown flag, close to one", {"--limit_nun": "2"}, 2, ["unknown flag --limit_nun (did you mean --limit_num?)"]),
    (TRAINING, "unknown flag, close to one", {"--learnig_rate": "1e-5"}, 2, ["unknown flag --learnig_rate (did you mean --learning_rate?)"]),
    (DATA + TRAINING, "unknown flag, far from all", {"--frobnicate": "3"}, 2, ["unknown flag --frobnicate;", "--help` lists the flags"]),
    (DATA, "a value that is no number", {"--num_process": "many"}, 2, ["--num_process", "'many'"]),
    (TRAINING, "a value that is no number", {"--seed": "one"}, 2, ["--seed", "'one'"]),
    # sizes, epochs and limits that make no sense
    (DATA, "negative limit", {"--limit_num": "-1"}, 1, ["--limit_num must be at least 1 (got -1)"]),
    (DATA, "zero limit", {"--limit_num": "0"}, 1, ["--limit_num must be at least 1 (got 0)"]),
    (DATA, "no requests in flight", {"--num_process": "0"}, 1, ["--num_process must be at least 1 (got 0)"]),
    (DATA, "zero timeout", {"--timeout": "0"}, 1, ["--timeout must be above 0 (got 0.0)"]),
    (DATA, "no parse attempt", {"--parse_attempts": "0"}, 1, ["--parse_attempts must be at least 1 (got 0)"]),
    ((SEARCH,), "negative search depth", {"--max_search_depth": "-1"}, 1, ["--max_search_depth must be 0 or more (got -1)"]),
    ((SFT, VERIFIER), "zero epochs", {"--n_epochs": "0"}, 1, ["--n_epochs must be at least 1 (got 0)"]),
    ((SFT, VERIFIER), "zero batch", {"--train_bsz_per_gpu": "0"}, 1, ["--train_bsz_per_gpu must be at least 1 (got 0)"]),
    ((SFT, VERIFIER), "negative accumulation", {"--gradient_accumulation_steps": "-2"}, 1, ["--gradient_accumulation_steps must be at least 1 (got -2)"]),
    ((SFT,), "zero sequence length", {"--max_seq_len": "0"}, 1, ["--max_seq_len must be at least 1 (got 0)"]),
    ((SFT,), "no checkpoint kept", {"--max_ckpts": "0"}, 1, ["--max_ckpts must be at least 1 (got 0)"]),
    ((SFT,), "warmup beyond the run", {"--warmup_rates": "1.5"}, 1, ["--warmup_rates must be at least 0 and below 1 (got 1.5)"]),
    ((VERIFIER,), "zero evaluation batch", {"--eval_bsz_per_gpu": "0"}, 1, ["--eval_bsz_per_gpu must be at least 1 (got 0)"]),
    ((VERIFIER, RL), "nothing held out", {"--eval_fraction": "0"}, 1, ["--eval_fraction must be between 0 and 1 (exclusive) (got 0.0)"]),
    ((RL,), "zero batch", {"--per_device_train_batch_size": "0"}, 1, ["--per_device_train_batch_size must be at least 1 (got 0)"]),
    ((RL,), "zero accumulation", {"--gradient_accumulation_steps": "0"}, 1, ["--gradient_accumulation_steps must be at least 1 (got 0)"]),
    ((RL,), "zero epochs", {"--total_episodes": None, "--num_train_epochs": "0"}, 1, ["--num_train_epochs must be above 0 (got 0.0)"]),
    ((RL,), "zero episodes", {"--total_episodes": "0"}, 1, ["--total_episodes must be at least 1 (got 0)"]),
    # files that are not UTF-8: the file and the byte
    ((CONSTRUCT,), "data not UTF-8", {"--data_path": "{latin1_mcq}"}, 1, ["{latin1_mcq}: not UTF-8 text (byte 18, line 1: b'\\xe9')"]),
    ((SEARCH,), "data not UTF-8", {"--data_path": "{latin1_problems}"}, 1, ["{latin1_problems}: not UTF-8 text (byte 40, line 1: b'\\xe9')"]),
    ((RL,), "data not UTF-8", {"--dataset_name": "{latin1_problems}"}, 1, ["{latin1_problems}: not UTF-8 text (byte 40, line 1: b'\\xe9')"]),
    ((SFT,), "data not UTF-8", {"--data_path": "{latin1_sft}"}, 1, ["{latin1_sft}: not UTF-8 text (byte 21, line 1: b'\\xe9')"]),
    ((VERIFIER,), "data not UTF-8", {"--data_path": "{latin1_verdicts}"}, 1, ["{latin1_verdicts}: not UTF-8 text (byte 18, line 1: b'\\xe9')"]),
    ((VERIFIER,), "template not UTF-8", {"--verifier_template": "{latin1_template}"}, 1, ["{latin1_template}: not UTF-8 text (byte 10, line 1: b'\\xe9')"]),
    (DATA, "prompt template not UTF-8", {"--prompt_dir": "{latin1_prompts}"}, 1, ["{latin1_prompts}/", ".txt: not UTF-8 text (byte 13, line 1: b'\\xe9')"]),
    # outputs over inputs, outputs that cannot be written
    (DATA, "output is the input", {"--output_path": "{data}"}, 1, ["--output_path {data} would overwrite --data_path {data}"]),
    ((CONSTRUCT,), "records file is the input", {"--data_path": "{records_named_mcq}", "--output_path": "{workspace}/mcq.json"}, 1, ["would overwrite --data_path {records_named_mcq}"]),
    (DATA, "output under a file", {"--output_path": "{a_file}/result.json"}, 1, ["--output_path {a_file}/result.json: cannot be created, {a_file} is a file"]),
    (DATA, "progress folder under a file", {"--output_dir": "{a_file}/progress"}, 1, ["--output_dir {a_file}/progress: cannot be created, {a_file} is a file"]),
    (DATA, "output is a folder", {"--output_path": "{workspace}"}, 1, ["--output_path {workspace}: is a folder, expected a file to write"]),
    (DATA, "output exists and is no list of rows", {"--output_path": "{not_rows}"}, 1, ["--output_path {not_rows} exists and is not a JSON list of rows"]),
    ((SFT,), "output folder is the model", {"--model_path": "{causal_copy}/sft_stage1", "--output_dir": "{causal_copy}"}, 1, ["--output_dir {causal_copy}/sft_stage1 would overwrite --model_path {causal_copy}/sft_stage1"]),
    ((SFT,), "model is a checkpoint the run would rotate away", {"--model_path": "{causal_copy}/sft_stage1/checkpoint-3", "--output_dir": "{causal_copy}"}, 1, ["would rotate away --model_path {causal_copy}/sft_stage1/checkpoint-3"]),
    ((RL,), "output folder is the policy", {"--model_name_or_path": "{causal_copy}", "--output_dir": "{causal_copy}"}, 1, ["--output_dir {causal_copy} would overwrite --model_name_or_path {causal_copy}"]),
    ((RL,), "output folder is the verifier", {"--reward_model_path": "{verifier_copy}", "--output_dir": "{verifier_copy}"}, 1, ["--output_dir {verifier_copy} would overwrite --reward_model_path {verifier_copy}"]),
    ((VERIFIER,), "output folder is the backbone", {"--model_path": "{verifier_copy}", "--output_dir": "{verifier_copy}"}, 1, ["--output_dir {verifier_copy} would overwrite --model_path {verifier_copy}"]),
    (TRAINING, "output folder under a file", {"--output_dir": "{a_file}/out"}, 1, ["--output_dir {a_file}/out", "cannot be created, {a_file} is a file"]),
    (DATA, "progress folder not writable", {"--output_dir": "{unwritable}/progress"}, 1, ["--output_dir {unwritable}/progress: cannot write in {unwritable} ("]),
    (DATA, "output file not writable", {"--output_path": "{unwritable}/result.json"}, 1, ["--output_path {unwritable}/result.json: cannot write in {unwritable} ("]),
    (TRAINING, "output folder not writable", {"--output_dir": "{unwritable}/out"}, 1, ["--output_dir {unwritable}/out", ": cannot write in {unwritable} ("]),
    ((SFT,), "log folder under a file", {"--log_dir": "{a_file}/logs"}, 1, ["--log_dir {a_file}/logs: cannot be created, {a_file} is a file"]),
    # models that are missing or not what the stage needs
    ((SFT, VERIFIER), "model folder that does not exist", {"--model_path": "./models/no-such-model"}, 1, ["--model_path ./models/no-such-model: no such folder"]),
    ((RL,), "policy folder that does not exist", {"--model_name_or_path": "{workspace}/models/policy"}, 1, ["--model_name_or_path {workspace}/models/policy: no such folder"]),
    ((RL,), "verifier folder that does not exist", {"--reward_model_path": "../verifier"}, 1, ["--reward_model_path ../verifier: no such folder"]),
    ((SFT, VERIFIER), "model under the local models folder that is not there", {"--model_path": "models_copy/no-such-model"}, 1, ["--model_path models_copy/no-such-model: no such folder"]),
    ((SFT,), "hub id that cannot be fetched", {"--model_path": "no-such-org/no-such-model"}, 1, ["could not load 'no-such-org/no-such-model'", "HF_HUB_OFFLINE is set", "Download it"]),
    ((SFT, VERIFIER), "folder that is no model", {"--model_path": "{workspace}"}, 1, ["--model_path {workspace}: not a model folder (it has no config.json)"]),
    ((RL,), "a causal LM as the verifier", {"--reward_model_path": "{causal}"}, 1, ["--reward_model_path {causal}: Qwen2ForCausalLM with 2 label(s)", "sequence classifier with 2 labels"]),
    ((RL,), "a 1-label model as the verifier", {"--reward_model_path": "{value}"}, 1, ["Qwen2ForSequenceClassification with 1 label(s)", "sequence classifier with 2 labels"]),
    ((RL,), "resume from a folder that is no checkpoint", {"--resume_from_checkpoint": "{workspace}"}, 1, ["--resume_from_checkpoint {workspace}: not a checkpoint"]),
    # a JSON file we or the user wrote, broken: the file and the line (before: "JSONDecodeError: Expecting property
    # name ... (line 2 column 1)" without the file)
    ((RL,), "resume from a checkpoint whose trainer_state.json is broken", {"--resume_from_checkpoint": "{state_broken}/checkpoint-2"}, 1, ["{state_broken}/checkpoint-2/trainer_state.json: not valid JSON (line 2, column 1: Expecting property name enclosed in double quotes)"]),
    ((SFT,), "rerun over a checkpoint whose trainer_state.json is broken", {"--output_dir": "{state_broken}"}, 1, ["{state_broken}/sft_stage1/checkpoint-1/trainer_state.json: not valid JSON (line 2, column 1:"]),
    ((VERIFIER,), "rerun over a checkpoint whose trainer_state.json is broken", {"--output_dir": "{state_broken}/verifier"}, 1, ["{state_broken}/verifier/checkpoint-2/trainer_state.json: not valid JSON (line 2, column 1:"]),
    ((VERIFIER,), "rerun over a verifier whose summary is broken", {"--output_dir": "{summary_broken}"}, 1, ["{summary_broken}/verifier_summary.json: not valid JSON (line 3, column 1:"]),
    ((SFT,), "rerun over a checkpoint whose manifest is broken", {"--output_dir": "{manifest_broken}"}, 1, ["{manifest_broken}/sft_stage1/checkpoint-1/manifest.json: not valid JSON (line 4, column 29: Expecting", "no checkpoint of {manifest_broken}/sft_stage1 matches its manifest"]),
    ((RL,), "a policy whose manifest is broken", {"--model_name_or_path": "{manifest_broken}/policy"}, 1, ["--model_name_or_path {manifest_broken}/policy: {manifest_broken}/policy/manifest.json: not valid JSON (line 1, column"]),
    ((SFT,), "data that is broken JSON", {"--data_path": "{broken_json}"}, 1, ["{broken_json}: not valid JSON (line 3, column 1: Expecting value)"]),
    ((VERIFIER,), "data that is broken JSON", {"--data_path": "{broken_json}"}, 1, ["{broken_json}: not valid JSON (line 3, column 1: Expecting value)"]),
    ((RL,), "data that is broken JSON", {"--dataset_name": "{broken_json}"}, 1, ["{broken_json}: not valid JSON (line 3, column 1: Expecting value)"]),
    (DATA, "data that is broken JSON", {"--data_path": "{broken_json}"}, 1, ["{broken_json}: not valid JSON (line 3, column 1: Expecting value)"]),
    (DATA, "output exists and is broken JSON", {"--output_path": "{broken_json}"}, 1, ["--output_path {broken_json} exists and is not a JSON list of rows ({broken_json}: not valid JSON (line 3, column 1: Expecting value)): not replaced"]),
    # checkpoints and model folders whose files do not match their manifests: the damaged file
    ((RL,), "resume from a checkpoint whose weights are cut short, none older", {"--resume_from_checkpoint": "{damaged}/checkpoint-2"}, 1, ["{damaged}/checkpoint-2/model.safetensors does not match its manifest (", " bytes, the manifest says ", "; no older checkpoint beside it matches its manifest"]),
    ((SFT,), "rerun over a run whose only checkpoint is cut short", {"--output_dir": "{damaged}"}, 1, ["{damaged}/sft_stage1/checkpoint-1/model.safetensors does not match its manifest (", "; no checkpoint of {damaged}/sft_stage1 matches its manifest: pass --resume False"]),
    ((VERIFIER,), "rerun over a run whose only checkpoint is cut short", {"--output_dir": "{damaged}/verifier"}, 1, ["{damaged}/verifier/checkpoint-2/model.safetensors does not match its manifest (", "; no checkpoint of {damaged}/verifier matches its manifest"]),
    ((RL,), "a policy whose weights are cut short", {"--model_name_or_path": "{damaged}/policy"}, 1, ["--model_name_or_path {damaged}/policy: {damaged}/policy/model.safetensors does not match its manifest (", "the folder is damaged"]),
    ((RL,), "a verifier with a byte flipped", {"--reward_model_path": "{damaged}/verifier_model"}, 1, ["--reward_model_path {damaged}/verifier_model: {damaged}/verifier_model/model.safetensors does not match its manifest (its sha256 differs)"]),
    ((SFT,), "a model folder with a file missing", {"--model_path": "{damaged}/no_tokenizer"}, 1, ["--model_path {damaged}/no_tokenizer: {damaged}/no_tokenizer/tokenizer.json does not match its manifest (missing)"]),
    ((VERIFIER,), "a backbone with a byte flipped", {"--model_path": "{damaged}/verifier_model"}, 1, ["--model_path {damaged}/verifier_model: {damaged}/verifier_model/model.safetensors does not match its manifest (its sha256 differs)"]),
    (TRAINING, "a verification mode that does not exist", {"--verify_checkpoints": "quick"}, 2, ["--verify_checkpoints", "'quick'"]),
]  # fmt: skip
TABLE = [
    pytest.param(script, flags, status, expected, id=f"{script.split('_')[0]}: {case}")
    for scripts, case, flags, status, expected in CASES
    for script in scripts
]


@pytest.fixture
def workspace(tmp_path, tiny_models):
    """Valid inputs of every stage, files a careless user might pass, and the placeholders of the table."""
    folder = tmp_path / "workspace"
    folder.mkdir()

    def write(name, obj):
        path = folder / name
        path.write_text(json.dumps(obj), encoding="utf-8")
        return str(path)

    def latin1(name, text):
        path = folder / name
        path.write_bytes(text.encode("latin-1"))
        return str(path)

    # a folder this user cannot write in (root ignores chmod, but cannot write in /sys either)
    unwritable = folder / "read_only"
    unwritable.mkdir()
    unwritable.chmod(0o555)
    prompts = folder / "latin1_prompts"
    prompts.mkdir()
    for name in ("filter", "reformat", "reason", "verify"):
        (prompts / f"{name}.txt").write_bytes("Template: caf\u00e9 {question}".encode("latin-1"))
    items = make_items(3)
    places = {
        "workspace": str(folder),
        "out": str(folder / "out"),
        "mcq": write("mcq.json", items),
        "problems": write_problems(folder / "problems.json", n=6),
        "sft": write("sft.json", SFT_ROWS),
        "verdicts": write("verdicts.json", synthetic_verdicts(12, seed=3)),
        "records_named_mcq": write("mcq_records.json", items),
        "not_rows": write("notes.json", {"my": "notes"}),
        "latin1_mcq": latin1("mcq_latin1.json", '[{"question": "caf\u00e9?", "options": {"A": "a"}, "answer": "a"}]'),
        "latin1_problems": latin1(
            "problems_latin1.json",
            '[{"Open-ended Verifiable Question": "caf\u00e9?", "Ground-True Answer": "a"}, '
            '{"Open-ended Verifiable Question": "b?", "Ground-True Answer": "b"}]',
        ),
        "latin1_sft": latin1(
            "sft_latin1.json", '[{"Question": "Is caf\u00e9?", "Complex_CoT": "c", "Response": "r"}]'
        ),
        "latin1_verdicts": latin1("verdicts_latin1.json", '[{"response": "caf\u00e9", "reference_answer": "a"}]'),
        "latin1_template": latin1("template_latin1.txt", "Response: \u00e9 {response} {reference} {eos_token}"),
        "latin1_prompts": str(prompts),
        "a_file": write("a_file", "just a file"),
        "unwritable": "/sys" if os.geteuid() == 0 else str(unwritable),
        "causal": tiny_models["tiny-qwen2"],
        "value": tiny_models["tiny-value"],
        "causal_copy": str(folder / "models_copy" / "policy"),
        "verifier_copy": str(folder / "models_copy" / "verifier"),
    }
    # copies of the models a case would write over (the originals are shared by the whole session)
    shutil.copytree(tiny_models["tiny-qwen2"], places["causal_copy"])
    shutil.copytree(tiny_models["tiny-qwen2"], os.path.join(places["causal_copy"], "sft_stage1", "checkpoint-3"))
    shutil.copytree(tiny_models["tiny-qwen2"], os.path.join(places["causal_copy"], "sft_stage1"), dirs_exist_ok=True)
    shutil.copytree(tiny_models["tiny-verifier"], places["verifier_copy"])
    places.update(broken_and_damaged_runs(folder, tiny_models))
    return places


def broken_and_damaged_runs(folder, tiny_models):
    """Runs and model folders as a crash, a failed copy or a hand left them: a JSON file that does not parse, a file
    that does not match its manifest. {placeholder: folder}."""

    def checkpoint(path, model, trainer_state, sealed=False):
        shutil.copytree(tiny_models[model], path)
        os.makedirs(os.path.join(path, "training_state"))
        (folder / path / "training_state" / "optimizer.bin").write_bytes(b"adam state" * 50)
        (folder / path / "trainer_state.json").write_text(trainer_state)
        if sealed:
            seal(str(folder / path), ("trainer_state.json", "training_state"), removable=("training_state",))
        return str(folder / path)

    def model_copy(path, model):
        shutil.copytree(tiny_models[model], folder / path)
        seal(str(folder / path))
        return str(folder / path)

    broken_state = '{"epoch": 1,\n}'  # JSONDecodeError: Expecting property name ... (line 2 column 1)
    good_state = json.dumps({"epoch": 1, "global_step": 1})
    checkpoint(folder / "state_broken" / "checkpoint-2", "tiny-qwen2", broken_state)
    checkpoint(folder / "state_broken" / "sft_stage1" / "checkpoint-1", "tiny-qwen2", broken_state)
    checkpoint(folder / "state_broken" / "verifier" / "checkpoint-2", "tiny-verifier", broken_state)
    shutil.copytree(tiny_models["tiny-verifier"], folder / "summary_broken")
    (folder / "summary_broken" / "verifier_summary.json").write_text('{"inputs": {"data": "abc"},\n"n_train": \n}')
    sealed = checkpoint(folder / "manifest_broken" / "sft_stage1" / "checkpoint-1", "tiny-qwen2", good_state, True)
    with open(os.path.join(sealed, "manifest.json"), "w") as f:
        f.write('{\n  "format": "huatuo_o1 manifest 1",\n  "files": [\n    {"path": "config.json", ')  # cut short
    shutil.copytree(tiny_models["tiny-qwen2"], folder / "manifest_broken" / "policy")
    (folder / "manifest_broken" / "policy" / "manifest.json").write_text('{"files": [{"path": ')
    for path, model in [
        ("damaged/checkpoint-2", "tiny-qwen2"),
        ("damaged/sft_stage1/checkpoint-1", "tiny-qwen2"),
        ("damaged/verifier/checkpoint-2", "tiny-verifier"),
    ]:
        damage(
            os.path.join(checkpoint(folder / path, model, good_state, sealed=True), "model.safetensors"), "truncated"
        )
    damage(os.path.join(model_copy("damaged/policy", "tiny-qwen2"), "model.safetensors"), "truncated")
    damage(os.path.join(model_copy("damaged/verifier_model", "tiny-verifier"), "model.safetensors"), "flipped")
    damage(os.path.join(model_copy("damaged/no_tokenizer", "tiny-qwen2"), "tokenizer.json"), "missing")
    (folder / "broken.json").write_text('[{"question": "a?"},\n{"question": "b?"},\n')
    return {
        "state_broken": str(folder / "state_broken"),
        "summary_broken": str(folder / "summary_broken"),
        "manifest_broken": str(folder / "manifest_broken"),
        "damaged": str(folder / "damaged"),
        "broken_json": str(folder / "broken.json"),
    }


def snapshot(folder):
    """{path: sha256} of every file and folder under `folder`."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            found[os.path.join(root, name)] = "folder"
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                found[os.path.join(root, name)] = hashlib.sha256(f.read()).hexdigest()
    return found


def argv_of(script, flags, tiny_models, places):
    """The script's valid flags with the case's changes, its {placeholders} filled in."""
    values = {**base_argv(script, tiny_models), **flags}
    argv = [item for flag, value in values.items() if value is not None for item in (flag, value)]
    return [arg.format(**places) for arg in argv]


@pytest.mark.parametrize("script, flags, status, expected", TABLE)
def test_bad_input_gets_one_line_an_exit_status_and_touches_nothing(
    script, flags, status, expected, tiny_models, workspace
):
    workspace["data"] = workspace["mcq"] if script == CONSTRUCT else workspace["problems"]
    argv = argv_of(script, flags, tiny_models, workspace)
    before = snapshot(workspace["workspace"])
    result = run_script(script, argv, cwd=workspace["workspace"], env={"OPENAI_API_KEY": "sk-test"})

    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == status and len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    for text in expected:
        assert text.format(**workspace) in lines[0]
    assert "Traceback" not in result.stderr
    assert snapshot(workspace["workspace"]) == before


def test_the_debug_flag_and_variable_show_the_traceback(workspace, tiny_models, monkeypatch):
    argv = argv_of(SFT, {"--n_epochs": "0"}, tiny_models, workspace)
    for extra, env in ((["--debug"], {}), ([], {cli.DEBUG_VARIABLE: "1"})):
        result = run_script(SFT, argv + extra, cwd=workspace["workspace"], env=env)
        assert result.returncode == 1 and "Traceback (most recent call last)" in result.stderr
        assert result.stderr.strip().splitlines()[-1] == "error: --n_epochs must be at least 1 (got 0)"

    # an error nobody foresaw: one line naming it, and how to see where it happened
    def broken(*args, **kwargs):
        raise RuntimeError("the disk is on fire")

    monkeypatch.setattr(records, "load_records", broken)
    result = run_script(SFT, argv_of(SFT, {}, tiny_models, workspace), cwd=workspace["workspace"])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: RuntimeError: the disk is on fire (--debug or HUATUO_DEBUG=1 shows the traceback)"
    ]
    with pytest.raises(RuntimeError, match="the disk is on fire"):  # out of the script: Python prints the traceback
        run_script(SFT, argv_of(SFT, {}, tiny_models, workspace) + ["--debug"], cwd=workspace["workspace"])


@dataclasses.dataclass
class Flags:
    learning_rate: float = 1e-5
    n_epochs: int = 1


def test_parse_names_the_closest_flag_and_help_names_the_debug_flag(capsys):
    assert cli.parse((Flags,), ["--learning_rate", "3e-4"]) == (Flags(3e-4, 1),)
    for argv, message in [
        (["--learnig_rate", "3e-4"], "error: unknown flag --learnig_rate (did you mean --learning_rate?)"),
        (["--n_epcohs=2", "--zzz"], "error: unknown flags --n_epcohs (did you mean --n_epochs?), --zzz"),
        (["--n_epochs", "2", "3"], "error: unexpected value(s) 3 (every value follows its --flag)"),
        (["--n_epochs", "two"], "error: argument --n_epochs/--n-epochs: invalid int value: 'two'"),
    ]:
        with pytest.raises(SystemExit) as stop:
            cli.parse((Flags,), argv)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and len(err.strip().splitlines()) == 1 and err.startswith(message), err
    with pytest.raises(SystemExit):
        cli.parse((Flags,), ["--help"])
    assert "--debug (or HUATUO_DEBUG=1)" in capsys.readouterr().out


# ---- the data stages' silent failures, one test each ----------------------------------------------------------


def test_a_rerun_never_replaces_an_output_with_fewer_rows(start_teacher, tmp_path):
    items = make_items(3)
    items[1]["standin_filter"] = "Too Simple"
    teacher = start_teacher(answer_key=items)
    main, records, summary = outputs_of(tmp_path, "problems")
    data = write_json(tmp_path / "mcq.json", items)
    run(CONSTRUCT, ["--data_path", data, "--output_path", main, "--output_dir", tmp_path / "p"] + FAST, teacher)
    assert len(read_json(main)) == 3
    files = {path: open(path, "rb").read() for path in (main, records, summary)}

    def kept(result, message):
        assert result.returncode == 1 and "Traceback" not in result.stderr
        error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(error) == 1 and message in error[0] and f"kept {main}" in error[0], result.stderr
        assert {path: open(path, "rb").read() for path in files} == files

    # a dead endpoint and a fresh progress folder (another working folder, say): every item fails
    dead = ["--data_path", data, "--output_path", main, "--output_dir", tmp_path / "p2", "--api_url"]
    result = run(CONSTRUCT, dead + ["http://127.0.0.1:9/v1", "--max_retries", "0"], check=False)
    kept(result, "every item failed (3)")
    assert "APIConnectionError" in result.stderr
    # items that now get filtered out: 2 rows would replace 3
    filtered = ["--data_path", data, "--output_path", main, "--output_dir", tmp_path / "p", "--filter_data"]
    result = run(CONSTRUCT, filtered + FAST, teacher, check=False)
    kept(result, f"this run has 2 row(s), fewer than the 3 in {main}")
    assert "remove" in result.stderr and "--output_path" in result.stderr
    # where fewer rows are what the user wants: another --output_path (the finished items are not paid again)
    teacher.reset()
    other, _, _ = outputs_of(tmp_path, "filtered")
    run(CONSTRUCT, filtered[:3] + [other] + filtered[4:] + FAST, teacher)
    assert len(read_json(other)) == 2 and teacher.stats()["total"] == 0


def start_stage(script, args, teacher):
    """A stage script as the user starts it: its own process, its own process group (so a signal reaches only it)."""
    return subprocess.Popen(
        [sys.executable, script, "--api_url", teacher.base_url, *map(str, args)],
        cwd=REPO_ROOT,
        env=dict(os.environ, OPENAI_API_KEY=SECRET_KEY),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # As from a terminal: a shell running a job in the background (as CI may run `make test`) starts it
        # with SIGINT ignored, and Python then never turns Ctrl-C into KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def item_files(store):
    return sorted(name for name in os.listdir(store) if not name.startswith(".")) if store.is_dir() else []


def wait_for(condition, seconds=120):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def settled_count(teacher, quiet_seconds=1.0, at_most=20.0):
    """The server's request count once it has not changed for quiet_seconds."""
    count, since, deadline = teacher.stats()["total"], time.monotonic(), time.monotonic() + at_most
    while time.monotonic() - since < quiet_seconds and time.monotonic() < deadline:
        time.sleep(0.1)
        now = teacher.stats()["total"]
        if now != count:
            count, since = now, time.monotonic()
    return count


def test_ctrl_c_stops_at_once_sends_nothing_more_keeps_finished_items_and_the_rerun_does_the_rest(
    start_teacher, tmp_path
):
    # Each item takes two calls (filter, reformat) of 1.5 s each, four in flight: when Ctrl-C comes, four
    # requests are on the wire and items wait; before the fix the run finished the items it had started
    # (several seconds, new requests) and printed a traceback.
    items = make_items(30)
    teacher = start_teacher(answer_key=items, latency_ms=1500)
    main, _, _ = outputs_of(tmp_path, "problems")
    args = ["--data_path", write_json(tmp_path / "mcq.json", items), "--filter_data", "--output_path", main]
    args += ["--output_dir", tmp_path / "p"] + FAST[:-2] + ["--num_process", "4"]
    store = tmp_path / "p" / "mcq"
    process = start_stage(CONSTRUCT, args, teacher)
    wait_for(lambda: len(item_files(store)) >= 4)

    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    interrupted = time.monotonic()
    calls_at_interrupt = teacher.stats()["total"]
    _, stderr = process.communicate(timeout=60)
    seconds = time.monotonic() - interrupted
    calls_after = settled_count(teacher)  # requests still on their way (a loaded machine delays them) have arrived

    assert process.returncode == 130 and seconds < 3.0, (process.returncode, seconds, stderr[-2000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    messages = [line for line in lines if not line.startswith("construct:")]  # the rest is the progress bar
    assert len(messages) == 1 and messages[0].startswith("interrupted: construct: "), messages
    finished = item_files(store)
    assert 4 <= len(finished) < 30 and f"{len(finished)} item(s) finished and kept in {store}" in messages[0], (
        len(finished),
        messages,
    )
    # No request left after Ctrl-C. The server counts a request when it arrives, and our count is read after the
    # signal: requests already on their way then, and any sent in the instant before the run saw the signal, arrive
    # later. They hold request slots, and the server keeps each slot 1.5 s: at most --num_process (4) of them.
    # (Measured over 9 runs at load 6 to 10 on 2 cores: 0 to 3, and 0.4 to 1.5 s from the signal to the exit.
    # Before the fix the run finished every item it had begun.)
    assert calls_after <= calls_at_interrupt + 4, (calls_at_interrupt, calls_after)
    assert not os.path.exists(main)

    done = {read_json(store / name)["record"]["question"] for name in finished}
    teacher.configure(latency_ms=0)
    teacher.reset()
    run(CONSTRUCT, args, teacher)
    calls = teacher.stats()["calls"]
    asked = {c["question"] for c in calls}
    missing = {item["question"] for item in items} - done
    assert asked == missing, (sorted(asked - missing), sorted(missing - asked))  # only the missing ones
    assert len(calls) == 2 * len(asked)  # each once per step
    assert [p["question"] for p in read_json(main)] == [item["question"] for item in items]


def test_a_second_run_on_the_same_progress_folder_refuses_to_start_and_touches_nothing(start_teacher, tmp_path):
    items = make_items(12)
    teacher = start_teacher(answer_key=items, latency_ms=300)
    main, _, _ = outputs_of(tmp_path, "problems")
    args = ["--data_path", write_json(tmp_path / "mcq.json", items), "--filter_data", "--output_path", main]
    args += ["--output_dir", tmp_path / "p"] + FAST[:-2] + ["--num_process", "2"]
    store = tmp_path / "p" / "mcq"
    first = start_stage(CONSTRUCT, args, teacher)
    wait_for(lambda: len(item_files(store)) >= 1)
    # a temporary file of the first run's (it writes each item through one): the second must leave it alone
    theirs = store / ".tmp-being-written.json"
    theirs.write_text("{}")

    second = run(CONSTRUCT, args, teacher, check=False)
    assert second.returncode == 1 and "Traceback" not in second.stderr
    error = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and f"{store} is in use by another run (PID {first.pid} since " in error[0]
    assert "--output_dir" in error[0]
    assert theirs.exists()

    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr[-2000:]
    assert teacher.stats()["total"] == 2 * 12  # every item paid for once
    assert len(read_json(main)) == 12
    # the lock went with the first run: a rerun starts, finds everything finished, and clears the leftover
    teacher.reset()
    run(CONSTRUCT, args, teacher)
    assert teacher.stats()["total"] == 0 and not theirs.exists()


EXIT_PROBE = """
import atexit, sys
from huatuo_o1 import cli
from huatuo_o1.records import InputError

def main():
    atexit.register(lambda: open(sys.argv[2], "w").write("the interpreter's teardown ran"))
    print("all outputs written")  # buffered: stdout is a pipe
    if sys.argv[1] == "bad":
        raise InputError("--data_path x.json: no such file")
    return int(sys.argv[1]) if sys.argv[1].isdigit() else None

cli.run(main)
"""


@pytest.mark.parametrize("world_size", [None, "2"])
@pytest.mark.parametrize("outcome, status", [("none", 0), ("3", 3), ("bad", 1)])
def test_a_launched_process_ends_with_its_status_and_output_but_without_the_interpreters_teardown(
    tmp_path, world_size, outcome, status
):
    """Under a multi-process launcher a finished rank leaves with os._exit: a gloo thread torn down with the
    interpreter once turned a complete ZeRO-3 run into SIGABRT. The status and every printed line still arrive."""
    probe, marker = tmp_path / "probe.py", tmp_path / "teardown_ran"
    probe.write_text(EXIT_PROBE)
    env = {k: v for k, v in os.environ.items() if k != "WORLD_SIZE"} | (
        {"WORLD_SIZE": world_size} if world_size else {}
    )
    env["PYTHONPATH"] = REPO_ROOT
    result = subprocess.run(
        [sys.executable, str(probe), outcome, str(marker)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == status, result.stderr
    assert result.stdout == "all outputs written\n"
    assert result.stderr == ("error: --data_path x.json: no such file\n" if outcome == "bad" else "")
    assert marker.exists() == (world_size is None)


# ---- flags are matched exactly --------------------------------------------------------------------------------

# (script, the arguments it needs, a prefix of one of its real flags): argparse would take the prefix as that flag.
# (evaluation/serve.py hands the flags it does not know to the server, so there a prefix reaches the server as typed.)
PREFIXES = [
    ("RL_stage2.py", ["--model_name_or_path", "m", "--reward_model", "v"], "--reward_model", "--reward_model_path"),
    ("RL_stage2.py", ["--model_name", "m"], "--model_name", "--model_name_or_path"),
    ("RL_stage2.py", ["--model_name_or_path", "m", "--kl", "0.1"], "--kl", "--kl_coef"),
    (
        "SFT_stage1.py",
        ["--model_path", "m", "--data_path", "d", "--learning", "1e-5"],
        "--learning",
        "--learning_rate",
    ),
    ("SFT_stage1.py", ["--model_path", "m", "--data_path", "d", "--max_seq", "64"], "--max_seq", "--max_seq_len"),
    ("train_verifier.py", ["--model_path", "m", "--data_path", "d", "--n_ep", "1"], "--n_ep", "--n_epochs"),
    ("construct_verifiable_medical_problems.py", ["--data_path", "d", "--limit", "2"], "--limit", "--limit_num"),
    ("search_for_complex_reasoning_path.py", ["--data_path", "d", "--efficient", "True"], "--efficient", None),
    ("prepare_training_data.py", ["--data_path", "d", "--search", "0.5"], "--search", "--search_size"),
    ("inference.py", ["--model_path", "m", "--max_new", "8"], "--max_new", "--max_new_tokens"),
    ("score_verifier.py", ["--verifier_path", "v", "--data_path", "d", "--thresh", "0.5"], "--thresh", None),
    ("evaluation/eval.py", ["--model_name", "m", "--eval_file", "e", "--strict", "True"], "--strict", None),
    ("evaluation/report.py", ["results.json", "--paper", "x"], "--paper", "--paper_row"),
    ("demo.py", ["--qu"], "--qu", "--quick"),
    ("bench/gpu_check.py", ["--dev", "cpu"], "--dev", "--device"),
    ("bench/scaling_plan.py", ["--mf", "0.3"], "--mf", "--mfu"),
    ("bench/rl_learning.py", ["--alg", "ppo"], "--alg", "--algorithms"),
    ("bench/rollout_speed.py", ["--batch", "4"], "--batch", None),
]


@pytest.mark.parametrize("script, argv, prefix, meant", PREFIXES, ids=[f"{s} {p}" for s, _, p, _ in PREFIXES])
def test_a_prefix_of_a_real_flag_is_refused_in_one_line(script, argv, prefix, meant):
    result = run_script(script, argv)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, (result.returncode, result.stdout[-2000:], result.stderr)
    assert lines[0].startswith(f"error: unknown flag {prefix}"), lines[0]
    if meant:  # the closest real flag is named, as for any unknown flag
        assert f"(did you mean {meant}?)" in lines[0] or meant.startswith(prefix), lines[0]


def test_the_seeds_save_step_is_an_alias_not_a_prefix():
    from huatuo_o1.rl.config import parse_args

    _, config, _ = parse_args(["--save_step", "20"])
    assert config.save_steps == 20
    with pytest.raises(SystemExit) as stop:
        parse_args(["--save_st", "20"])
    assert stop.value.code == 2


def test_every_parser_in_the_repository_refuses_prefixes():
    """Each argparse parser a user meets (scripts, benches, tools, test scaffolding; not the tests' own) is built by
    huatuo_o1.cli (exact flags) or passes allow_abbrev=False itself."""
    import ast

    offenders = []
    for folder, _, files in os.walk(REPO_ROOT):
        if any(part.startswith(".") or part in ("bench_out", "demo_output") for part in folder.split(os.sep)):
            continue
        for name in (n for n in files if n.endswith(".py") and not n.startswith("test_")):
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                called = getattr(node, "func", None)
                called = getattr(called, "attr", None) or getattr(called, "id", None)
                if isinstance(node, ast.Call) and called in ("ArgumentParser", "HfArgumentParser"):
                    exact = any(
                        k.arg == "allow_abbrev" and isinstance(k.value, ast.Constant) and k.value.value is False
                        for k in node.keywords
                    )
                    if not exact:
                        offenders.append(f"{os.path.relpath(path, REPO_ROOT)}:{node.lineno}")
    assert offenders == []
