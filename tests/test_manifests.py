"""Manifests (huatuo_o1/manifests.py): what our checkpoints and model folders list when written, what a check finds
when a file is cut short, missing or changed, and the loaders' check. The trainers' own tests (test_sft.py,
test_verifier.py, test_rl_stage2.py) damage their real checkpoints; test_training.py has the resume decision."""

import hashlib
import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from huatuo_o1 import manifests, models, training
from huatuo_o1.records import InputError
from tests.damage import DAMAGES, damage
from tests.scripts import reset_accelerate

pytestmark = pytest.mark.usefixtures("one_thread_fresh_accelerate")


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def manifest_of(folder):
    with open(os.path.join(folder, manifests.MANIFEST), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture
def saved(tiny_models, tmp_path):
    """Two checkpoints of a tiny model (the older one rotated out of its training state) and a model folder saved
    into a folder that already holds other files."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["tiny-llama"])
    accelerator = training.make_accelerator(micro_batch_size=1, gradient_accumulation_steps=1, max_grad_norm=1.0)
    model = AutoModelForCausalLM.from_pretrained(tiny_models["tiny-llama"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    checkpoints = training.Checkpoints(str(tmp_path / "run"), keep=2)
    older = checkpoints.save(accelerator, model, tokenizer, 1, {"step": 1})
    newest = checkpoints.save(accelerator, model, tokenizer, 2, {"step": 2})
    final = tmp_path / "final"
    final.mkdir()
    (final / "run_log.jsonl").write_text('{"step": 1}\n')  # a run's own file beside the model: not the model's
    (final / "model-00002-of-00002.safetensors").write_bytes(b"an earlier save's shard")
    training.save_model_folder(accelerator, model, tokenizer, str(final))
    yield {"older": older, "newest": newest, "final": str(final)}
    reset_accelerate()


def test_a_checkpoint_lists_every_file_with_its_size_digest_and_part_and_the_manifest_comes_last(saved):
    newest = saved["newest"]
    manifest = manifest_of(newest)
    listed = {entry["path"]: entry for entry in manifest["files"]}
    on_disk = {
        os.path.relpath(os.path.join(root, name), newest)
        for root, _, files in os.walk(newest)
        for name in files
        if name != manifests.MANIFEST
    }
    assert set(listed) == on_disk and "model.safetensors" in listed
    assert any(path.startswith("training_state/") for path in listed)
    for path, entry in listed.items():
        full = os.path.join(newest, path)
        assert entry["size"] == os.path.getsize(full) and entry["sha256"] == sha256(full)
        run_part = path == training.TRAINER_STATE or path.startswith(training.TRAINING_STATE + "/")
        assert entry["part"] == ("run" if run_part else "model"), path
    assert manifest["removable"] == [training.TRAINING_STATE] and manifest["digest"] == "sha256"
    # written last: no file of the checkpoint is newer than its manifest
    written = os.stat(os.path.join(newest, manifests.MANIFEST)).st_mtime_ns
    assert all(os.stat(os.path.join(newest, path)).st_mtime_ns <= written for path in listed)
    assert manifests.problems(newest) == []
    # the older checkpoint lost its training state when it rotated: what is left still matches
    assert not os.path.exists(os.path.join(saved["older"], training.TRAINING_STATE))
    assert any(entry["path"].startswith("training_state/") for entry in manifest_of(saved["older"])["files"])
    assert manifests.problems(saved["older"]) == []


def test_a_model_folder_lists_exactly_the_files_of_its_save(saved):
    final = saved["final"]
    listed = {entry["path"] for entry in manifest_of(final)["files"]}
    assert "model.safetensors" in listed and "config.json" in listed and "tokenizer.json" in listed
    assert "run_log.jsonl" not in listed and "model-00002-of-00002.safetensors" not in listed
    assert all(entry["part"] == "model" for entry in manifest_of(final)["files"])
    assert not os.path.exists(os.path.join(final, ".saving"))  # the staging folder is gone
    assert AutoModelForCausalLM.from_pretrained(final) is not None
    # a file written later (a summary) joins the manifest, which is rewritten last
    with open(os.path.join(final, "summary.json"), "w") as f:
        json.dump({"inputs": {}}, f)
    manifests.add(final, ["summary.json"])
    entry = next(e for e in manifest_of(final)["files"] if e["path"] == "summary.json")
    assert entry["part"] == "run" and entry["sha256"] == sha256(os.path.join(final, "summary.json"))
    assert manifests.problems(final) == []


@pytest.mark.parametrize("how", DAMAGES)
def test_each_damage_is_named_in_one_line_and_sizes_mode_skips_only_the_digests(saved, how):
    newest = saved["newest"]
    weights = os.path.join(newest, "model.safetensors")
    reason = damage(weights, how)
    assert manifests.problems(newest) == [f"{weights} does not match its manifest {reason}"]
    sizes_only = manifests.problems(newest, mode="sizes")
    assert sizes_only == ([] if how == "flipped" else manifests.problems(newest))  # a size change is still caught
    assert manifests.problems(newest, model_only=True) == manifests.problems(newest)  # the weights are the model's


def test_a_damaged_run_file_counts_for_a_resume_but_not_for_a_loader(saved):
    newest = saved["newest"]
    state_file = sorted(
        e["path"] for e in manifest_of(newest)["files"] if e["path"].startswith(training.TRAINING_STATE + "/")
    )[0]
    damage(os.path.join(newest, state_file), "truncated")
    assert len(manifests.problems(newest)) == 1 and state_file in manifests.problems(newest)[0]
    assert manifests.problems(newest, model_only=True) == []
    models.check_model_source(newest, "--model_path")  # a loader reads the model only: it loads


def test_training_state_removed_whole_is_a_rotation_removed_in_part_is_damage(saved):
    newest = saved["newest"]
    files = sorted(os.listdir(os.path.join(newest, training.TRAINING_STATE)))
    os.remove(os.path.join(newest, training.TRAINING_STATE, files[0]))
    assert [f"{os.path.join(newest, training.TRAINING_STATE, files[0])} does not match its manifest (missing)"] == [
        p for p in manifests.problems(newest) if files[0] in p
    ]


def test_a_folder_without_a_manifest_has_no_problems_and_a_broken_manifest_is_named(saved, tmp_path):
    newest = saved["newest"]
    manifest_path = os.path.join(newest, manifests.MANIFEST)
    with open(manifest_path) as f:
        text = f.read()
    with open(manifest_path, "w") as f:
        f.write(text[: len(text) // 2])  # cut mid-way
    (problem,) = manifests.problems(newest)
    assert problem.startswith(f"{manifest_path}: not valid JSON (line ")
    with open(manifest_path, "w") as f:
        json.dump({"files": "all of them"}, f)
    assert manifests.problems(newest) == [
        f"{manifest_path}: not a manifest (a 'files' list of {{path, size, sha256}} objects)"
    ]
    os.remove(manifest_path)  # written before manifests, or by someone else: taken as it is
    damage(os.path.join(newest, "model.safetensors"), "flipped")
    assert manifests.problems(newest) == []
    models.check_model_source(newest, "--model_path")


def test_the_shares_of_the_processes_cover_every_file_once_and_balance_the_bytes():
    sized = [(f"file{i}", size) for i, size in enumerate([900, 500, 400, 300, 300, 100, 100, 10])]
    shares = [manifests.my_share(sized, (index, 3)) for index in range(3)]
    assert sorted(path for share in shares for path in share) == sorted(path for path, _ in sized)
    sizes = dict(sized)
    loads = [sum(sizes[path] for path in share) for share in shares]
    assert max(loads) - min(loads) <= 300  # greedy largest-first: within the largest file below the top
    assert manifests.my_share(sized, (0, 1)) == [path for path, _ in sized]


def test_loaders_check_a_model_folder_once_and_again_when_a_file_changes(saved, monkeypatch):
    final = saved["final"]
    digests = []
    real_sha256 = manifests.file_sha256
    monkeypatch.setattr(manifests, "file_sha256", lambda path: digests.append(path) or real_sha256(path))
    models.check_model_source(final, "--model_name_or_path")
    first = len(digests)
    assert first == len(manifest_of(final)["files"])
    models.from_pretrained_or_explain(AutoModelForCausalLM, final)
    assert len(digests) == first  # checked once while its files stay as they were
    weights = os.path.join(final, "model.safetensors")
    damage(weights, "flipped")
    with pytest.raises(InputError) as error:
        models.from_pretrained_or_explain(AutoModelForCausalLM, final)
    assert str(error.value) == (
        f"model folder {final}: {weights} does not match its manifest (its sha256 differs); the folder is damaged "
        "(a copy cut short, a full disk): copy or write it again"
    )
    monkeypatch.setenv(manifests.VERIFY_VARIABLE, "sizes")
    models.from_pretrained_or_explain(AutoModelForCausalLM, final)  # sizes only: the flipped byte passes
    damage(weights, "truncated")
    with pytest.raises(InputError, match=r"^--model_path .*model.safetensors does not match its manifest \(\d+ bytes"):
        models.check_model_source(final, "--model_path")
    monkeypatch.setenv(manifests.VERIFY_VARIABLE, "quick")
    with pytest.raises(InputError, match=r"^HUATUO_VERIFY_CHECKPOINTS 'quick': expected one of full, sizes$"):
        models.check_model_source(final, "--model_path")
