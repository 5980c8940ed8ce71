"""The training toolkit SFT, the verifier and PPO share (huatuo_o1/training.py): padding, the checkpoint
layout, rotation and resume, clipping. Each trainer's own resume test (test_sft.py, test_verifier.py,
test_rl_stage2.py) runs its resume through Checkpoints.load."""

import json
import os
import shutil

import pytest
import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM, AutoTokenizer

from huatuo_o1 import training
from tests.damage import DAMAGES, damage, seal
from tests.scripts import reset_accelerate


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    yield
    reset_accelerate()


def test_pad_on_either_side():
    ids, mask = training.pad_batch([[5, 6, 7], [8]], pad_id=0, side="right")
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = training.pad_batch([[5, 6, 7], [8]], pad_id=9, side="left")
    assert ids.tolist() == [[5, 6, 7], [9, 9, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert training.pad([[1, 2], [3]], -100).tolist() == [[1, 2], [3, -100]]
    assert training.pad([[1, 2], [3, 4]], None).tolist() == [[1, 2], [3, 4]]  # no pad id needed: same lengths
    with pytest.raises(ValueError):
        training.pad([[1, 2], [3]], None)


def small_run(model_dir, max_grad_norm=1.0):
    accelerator = training.make_accelerator(
        micro_batch_size=1, gradient_accumulation_steps=1, max_grad_norm=max_grad_norm
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = training.make_schedule(accelerator, "linear", optimizer, warmup_steps=0, total_steps=10)
    return accelerator, model, optimizer, scheduler


def one_step(accelerator, model, optimizer, scheduler, max_grad_norm=1.0):
    batch = torch.tensor([[1, 2, 3, 4, 5]])
    with accelerator.accumulate(model):
        loss = model(input_ids=batch, labels=batch).loss
        accelerator.backward(loss)
        norm = training.optimizer_step(accelerator, model, optimizer, max_grad_norm)
    scheduler.step()
    return norm


def test_checkpoints_layout_rotation_and_resume(tiny_models, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["tiny-llama"])
    accelerator, model, optimizer, scheduler = small_run(tiny_models["tiny-llama"])
    newest_only = training.Checkpoints(str(tmp_path / "newest"), keep=2)
    every = training.Checkpoints(str(tmp_path / "every"), keep=None, resume_all=True)
    for step in (1, 2, 3):
        one_step(accelerator, model, optimizer, scheduler)
        for checkpoints in (newest_only, every):
            path = checkpoints.save(accelerator, model, tokenizer, step, {"step": step})
            # a Hugging Face folder, the stage's counters, accelerate's state
            assert {
                "config.json",
                "model.safetensors",
                "tokenizer.json",
                "trainer_state.json",
                "training_state",
            } <= set(os.listdir(path))
    assert [os.path.basename(p) for p in newest_only.list()] == ["checkpoint-2", "checkpoint-3"]
    assert not os.path.exists(os.path.join(newest_only.list()[0], training.TRAINING_STATE))  # only the newest resumes
    assert [os.path.basename(p) for p in every.list()] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert all(os.path.isdir(os.path.join(p, training.TRAINING_STATE)) for p in every.list())
    assert newest_only.latest_resumable() == newest_only.list()[-1]
    assert not [n for n in os.listdir(newest_only.run_dir) if n.endswith(".tmp")]  # written whole, then renamed

    # a checkpoint holds the weights of its step and reloads on its own
    saved = AutoModelForCausalLM.from_pretrained(newest_only.list()[-1])
    live = accelerator.unwrap_model(model).state_dict()
    assert all(torch.equal(v, live[k]) for k, v in saved.state_dict().items())

    # resume: a fresh run restores weights, optimizer and schedule, and steps on exactly as the first would
    expected_lr = scheduler.get_last_lr()[0]
    one_step(accelerator, model, optimizer, scheduler)
    after_four = {k: v.clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
    reset_accelerate()
    accelerator, model, optimizer, scheduler = small_run(tiny_models["tiny-llama"])
    assert training.Checkpoints.load(accelerator, newest_only.latest_resumable()) == {"step": 3}
    assert scheduler.get_last_lr()[0] == pytest.approx(expected_lr)
    one_step(accelerator, model, optimizer, scheduler)
    for k, v in accelerator.unwrap_model(model).state_dict().items():
        torch.testing.assert_close(v, after_four[k])

    every.remove_all(accelerator)
    assert every.list() == []


def test_optimizer_step_clips_at_max_grad_norm(tiny_models):
    accelerator, model, optimizer, scheduler = small_run(tiny_models["tiny-llama"], max_grad_norm=1e-3)
    before = {k: v.clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
    norm = one_step(accelerator, model, optimizer, scheduler, max_grad_norm=1e-3)
    assert norm is not None and norm.item() > 1e-3  # the norm before clipping
    # Adam's first step moves each weight by about lr whatever the gradient's size: clipping shows in the
    # returned norm only; the gradients are cleared after the step
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    after = accelerator.unwrap_model(model).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    reset_accelerate()
    accelerator, model, optimizer, scheduler = small_run(tiny_models["tiny-llama"], max_grad_norm=0)
    assert one_step(accelerator, model, optimizer, scheduler, max_grad_norm=0) is None  # 0: no clipping
    assert training.applied_max_grad_norm(accelerator, model, 0) == 0.0


def test_trainer_state_is_plain_json(tiny_models, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["tiny-llama"])
    accelerator, model, _, _ = small_run(tiny_models["tiny-llama"])
    path = training.Checkpoints(str(tmp_path)).save(
        accelerator, model, tokenizer, 7, {"epoch": 1, "log": [0.5]}, with_training_state=False
    )
    with open(os.path.join(path, training.TRAINER_STATE)) as f:
        assert json.load(f) == {"epoch": 1, "log": [0.5]}
    assert not os.path.exists(os.path.join(path, training.TRAINING_STATE))


def test_loop_timer_leaves_out_saving_and_reports_the_first_step_apart(monkeypatch):
    clock = iter([100.0, 102.0, 103.0, 108.0, 110.0])  # start, step 1 ends, save from / to, step 2 ends
    monkeypatch.setattr(training.time, "perf_counter", lambda: next(clock))
    timer = training.LoopTimer()
    timer.step(torch.tensor([40.0, 50.0]))  # 2 s into the loop: 40 real, 50 processed tokens so far
    with timer.paused():  # 5 s of saving
        pass
    timer.step(torch.tensor([100.0, 130.0]))  # 10 s after the start, 5 of them saving
    summary = timer.summary(Accelerator(cpu=True), torch.tensor([100.0, 130.0]), ("real", "processed"))
    assert summary == {
        "seconds": 5.0,
        "real_tokens_per_second": 20.0,
        "processed_tokens_per_second": 26.0,
        "after_first_step": {"seconds": 3.0, "real_tokens_per_second": 20.0, "processed_tokens_per_second": 26.7},
    }


def fake_checkpoint(run_dir, step, state, training_state=True):
    """A checkpoint folder as Checkpoints.list / latest_resumable see it (no weights: the decision reads none)."""
    path = os.path.join(run_dir, f"{training.CHECKPOINT_PREFIX}{step}")
    os.makedirs(os.path.join(path, training.TRAINING_STATE) if training_state else path)
    with open(os.path.join(path, training.TRAINER_STATE), "w") as f:
        json.dump(state, f)
    return path


INPUTS = {"data": "abc", "learning_rate": 1e-3}


def decide(run_dir, resume=True, summary_path=None, refuse_unresumable=True):
    return training.resume_or_refuse(
        training.Checkpoints(run_dir),
        INPUTS,
        resume,
        other_inputs=lambda changes: f"other inputs: {changes}",
        is_finished=lambda state: state["epoch"] >= 2,
        unresumable=(lambda checkpoint: f"cannot resume {checkpoint}") if refuse_unresumable else None,
        summary_path=summary_path,
    )


def test_resume_or_refuse_decides_from_the_newest_checkpoint_or_the_summary(tmp_path):
    run_dir = str(tmp_path / "run")
    assert decide(run_dir) == training.Resumption("fresh")  # nothing there
    older = fake_checkpoint(run_dir, 2, {"epoch": 1, "inputs": INPUTS})
    newest = fake_checkpoint(run_dir, 10, {"epoch": 1, "inputs": INPUTS})
    os.makedirs(os.path.join(run_dir, "checkpoint-12.tmp"))  # a save cut short: not a checkpoint
    assert decide(run_dir) == training.Resumption("resume", newest)
    assert decide(run_dir, resume=False) == training.Resumption("fresh", replaced=(older, newest))

    # the newest checkpoint's inputs are judged, the message says what changed
    fake_checkpoint(run_dir, 11, {"epoch": 2, "inputs": {**INPUTS, "data": "xyz", "learning_rate": 2e-3}})
    with pytest.raises(training.InputError, match=r"^other inputs: the data; learning_rate 0.002 -> 0.001$"):
        decide(run_dir)
    assert decide(run_dir, resume=False).action == "fresh"  # --resume False never reads them
    with open(os.path.join(run_dir, "checkpoint-11", training.TRAINER_STATE), "w") as f:
        json.dump({"epoch": 2}, f)  # a run saved before inputs were recorded is taken as it is
    assert decide(run_dir) == training.Resumption("finished", os.path.join(run_dir, "checkpoint-11"))

    # a newest checkpoint without training state: refused, or (no wording for it) the newest one that has it
    unresumable = fake_checkpoint(run_dir, 13, {"epoch": 1, "inputs": INPUTS}, training_state=False)
    with pytest.raises(training.InputError, match=f"^cannot resume {unresumable}$"):
        decide(run_dir)
    assert decide(run_dir, refuse_unresumable=False) == training.Resumption(
        "resume", os.path.join(run_dir, "checkpoint-11")
    )


def test_resume_or_refuse_reads_the_summary_where_no_checkpoint_is_left(tmp_path):
    run_dir, summary = str(tmp_path), str(tmp_path / "summary.json")
    for saved, expected in [
        ({"inputs": INPUTS}, training.Resumption("finished")),  # trained on these inputs: nothing to do
        ({}, training.Resumption("fresh")),  # a summary without inputs proves nothing
    ]:
        with open(summary, "w") as f:
            json.dump(saved, f)
        assert decide(run_dir, summary_path=summary) == expected
        assert decide(run_dir) == training.Resumption("fresh")  # a stage without a summary rule
    with open(summary, "w") as f:
        json.dump({"inputs": {**INPUTS, "learning_rate": 1.0}}, f)
    with pytest.raises(training.InputError, match="^other inputs: learning_rate 1.0 -> 0.001$"):
        decide(run_dir, summary_path=summary)
    assert decide(run_dir, resume=False, summary_path=summary) == training.Resumption("fresh")


def sealed_checkpoint(run_dir, step, state, training_state=True):
    """fake_checkpoint with weights and a manifest, as Checkpoints.save leaves one."""
    path = fake_checkpoint(run_dir, step, state, training_state)
    with open(os.path.join(path, "model.safetensors"), "wb") as f:
        f.write(bytes(range(256)) * 8)
    if training_state:
        with open(os.path.join(path, training.TRAINING_STATE, "optimizer.bin"), "wb") as f:
            f.write(b"adam" * 100)
    seal(path, run_parts=(training.TRAINER_STATE, training.TRAINING_STATE), removable=(training.TRAINING_STATE,))
    return path


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_newest_checkpoint_is_passed_over_for_the_newest_that_matches(tmp_path, how):
    run_dir = str(tmp_path / "run")
    older = sealed_checkpoint(run_dir, 2, {"epoch": 1, "inputs": INPUTS})
    newest = sealed_checkpoint(run_dir, 4, {"epoch": 2, "inputs": INPUTS})  # finished
    weights = os.path.join(newest, "model.safetensors")
    reason = damage(weights, how)
    skipped = (f"{newest} skipped: {weights} does not match its manifest {reason}",)
    # its finished state is not trusted: the run resumes from the older checkpoint, which kept its training state
    assert decide(run_dir) == training.Resumption("resume", older, skipped=skipped)
    # where the older one cannot resume (only the newest keeps training state): one line naming the damaged file
    shutil.rmtree(os.path.join(older, training.TRAINING_STATE))
    with pytest.raises(training.InputError) as error:
        decide(run_dir)
    assert str(error.value) == (
        f"{weights} does not match its manifest {reason}; {older}, the newest checkpoint that matches its manifest, "
        "has no training state to resume from (only the newest checkpoint keeps it): pass --resume False to start "
        "afresh (the checkpoints are removed)"
    )
    # none matches: one line naming the newest's damaged file
    damage(os.path.join(older, "model.safetensors"), "truncated")
    with pytest.raises(training.InputError, match=f"^{weights} does not match its manifest .*; no checkpoint of "):
        decide(run_dir)
    assert decide(run_dir, resume=False) == training.Resumption("fresh", replaced=(older, newest))  # never read


def test_sizes_mode_passes_a_flipped_byte_but_not_a_cut_file(tmp_path):
    run_dir = str(tmp_path / "run")
    newest = sealed_checkpoint(run_dir, 4, {"epoch": 2, "inputs": INPUTS})
    damage(os.path.join(newest, "model.safetensors"), "flipped")

    def decide_sizes():
        return training.resume_or_refuse(
            training.Checkpoints(run_dir, verify="sizes"),
            INPUTS,
            True,
            other_inputs=str,
            is_finished=lambda state: state["epoch"] >= 2,
        )

    assert decide_sizes() == training.Resumption("finished", newest)
    damage(os.path.join(newest, training.TRAINING_STATE, "optimizer.bin"), "truncated")
    with pytest.raises(training.InputError, match="optimizer.bin does not match its manifest"):
        decide_sizes()


def test_a_finished_run_known_by_its_summary_is_finished_only_when_its_folder_matches(tmp_path):
    folder, summary = str(tmp_path), str(tmp_path / "summary.json")
    with open(os.path.join(folder, "model.safetensors"), "wb") as f:
        f.write(b"weights" * 100)
    with open(summary, "w") as f:
        json.dump({"inputs": INPUTS}, f)
    assert decide(folder, summary_path=summary) == training.Resumption("finished")  # no manifest: as before
    seal(folder)
    assert decide(folder, summary_path=summary) == training.Resumption("finished")
    reason = damage(os.path.join(folder, "model.safetensors"), "truncated")
    with pytest.raises(training.InputError) as error:
        decide(folder, summary_path=summary)
    assert str(error.value) == (
        f"{folder}/model.safetensors does not match its manifest {reason}; {folder} holds a finished run whose files "
        "are damaged: pass --resume False to train again"
    )


def test_a_checkpoint_to_resume_falls_back_to_the_newest_older_one_beside_it_that_matches(tmp_path):
    run_dir = str(tmp_path / "rl")
    first = sealed_checkpoint(run_dir, 1, {"update": 1})
    second = sealed_checkpoint(run_dir, 2, {"update": 2})
    third = sealed_checkpoint(run_dir, 3, {"update": 3})
    assert training.checkpoint_to_resume(second, "full") == (second, ())
    reason = damage(os.path.join(second, "model.safetensors"), "missing")
    skipped = f"{second} skipped: {second}/model.safetensors does not match its manifest {reason}"
    assert training.checkpoint_to_resume(second + "/", "full") == (first, (skipped,))  # never the newer one
    damage(os.path.join(first, training.TRAINER_STATE), "flipped")
    with pytest.raises(training.InputError, match=f"^{second}/model.safetensors does not match its manifest"):
        training.checkpoint_to_resume(second, "full")
    # a broken trainer_state.json in a checkpoint without a manifest (written before manifests): named with its line
    os.remove(os.path.join(third, "manifest.json"))
    with open(os.path.join(third, training.TRAINER_STATE), "w") as f:
        f.write('{"update": 3,\n}')
    with pytest.raises(training.InputError) as error:
        training.checkpoint_to_resume(third, "full")
    assert str(error.value) == (
        f"{third}/trainer_state.json: not valid JSON (line 2, column 1: Expecting property name enclosed in double "
        "quotes)"
    )


def test_rotation_leaves_the_checkpoints_a_resume_passed_over_alone(tmp_path):
    run_dir = str(tmp_path / "run")
    for step in (2, 4, 6):
        sealed_checkpoint(run_dir, step, {"step": step})
    checkpoints = training.Checkpoints(run_dir, keep=2)
    # a run resumed from checkpoint-2 (4 and 6 damaged) has just saved checkpoint-3
    sealed_checkpoint(run_dir, 3, {"step": 3})
    checkpoints.rotate(3)
    assert [os.path.basename(c) for c in checkpoints.list()] == [
        "checkpoint-2",
        "checkpoint-3",
        "checkpoint-4",
        "checkpoint-6",
    ]
    assert training.has_training_state(os.path.join(run_dir, "checkpoint-3"))  # the newest it saved keeps it
    assert not training.has_training_state(os.path.join(run_dir, "checkpoint-2"))
