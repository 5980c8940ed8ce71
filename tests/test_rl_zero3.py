"""RL_stage2.py under `accelerate launch`, 2 processes (on 1 machine, or 2 machines of 1), DeepSpeed ZeRO-3 on CPU
(gloo)."""

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from huatuo_o1.serving import free_port, listening_pids
from tests.rl_helpers import rl_flags, write_problems
from tests.scripts import accelerate_launch, launch_ok


def ppo_flags(tiny_models, data, out):
    return rl_flags(
        tiny_models, data, out, per_device_train_batch_size=1, num_mini_batches=2, num_ppo_epochs=2,
        total_episodes=16, save_strategy="steps", save_step=1, save_total_limit=1, eval_strategy="steps",
        eval_steps=1, gradient_checkpointing=True,
        max_grad_norm=0.5,  # the config file says gradient_clipping 1.0: the flag must win
    )  # fmt: skip


@pytest.fixture(scope="module")
def ppo_data(tmp_path_factory):
    return write_problems(tmp_path_factory.mktemp("ppo_zero3") / "problems.json", 11)


@pytest.fixture(scope="module")
def ppo_one_machine_two_processes(tiny_models, ppo_data, tmp_path_factory):
    """The output folder and the launch of PPO under DeepSpeed ZeRO-3 on CPU (gloo), 1 machine x 2 processes (run
    once, for the tests of this run and of the 2-machine run compared with it)."""
    out = str(tmp_path_factory.mktemp("ppo_zero3_1x2"))
    (machine,) = launch_ok([accelerate_launch("RL_stage2.py", ppo_flags(tiny_models, ppo_data, out), free_port())])
    return out, machine


@pytest.mark.multiprocess
def test_ppo_two_processes_zero3(tiny_models, ppo_one_machine_two_processes):
    out, result = ppo_one_machine_two_processes
    assert "2 process(es) x 4 prompts" in result.stdout

    summary = json.load(open(os.path.join(out, "rl_summary.json")))
    assert (summary["updates"], summary["episodes_per_update"]) == (2, 8)
    assert summary["max_grad_norm"] == 0.5  # read back from DeepSpeed's engine
    log = [json.loads(line) for line in open(os.path.join(out, "rl_log.jsonl"))]
    assert [r["update"] for r in log] == [1, 2] and all("eval/mean_reward" in r for r in log)
    # the original's schedule: one step per update (not per optimizer step, nor per process), linear over 2 updates
    assert log[0]["lr"] == pytest.approx(3e-3) and log[1]["lr"] == pytest.approx(3e-3 / 2)
    assert log[0]["pg_clipfrac"] > 0 and log[1]["approxkl"] > 0  # the policy moved in both updates

    # ZeRO-3 really sharded: one optimizer partition per rank in the resumable state
    shards = os.listdir(os.path.join(out, "checkpoint-1", "training_state", "pytorch_model"))
    # (named bf16_zero_pp_rank_* when the accelerate config asks for bf16 mixed precision)
    for rank in (0, 1):
        assert any(name.endswith(f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt") for name in shards), shards

    # the gathered policy reloads, differs from the start and from checkpoint-1, and generates
    initial = AutoModelForCausalLM.from_pretrained(tiny_models["tiny-qwen2"]).state_dict()
    after_one = AutoModelForCausalLM.from_pretrained(os.path.join(out, "checkpoint-1")).state_dict()
    final_model = AutoModelForCausalLM.from_pretrained(out)
    final = final_model.state_dict()
    assert all(final[k].shape == initial[k].shape for k in initial)
    assert sum(not torch.equal(final[k], initial[k]) for k in initial) > len(initial) // 2
    assert sum(not torch.equal(final[k], after_one[k]) for k in initial) > len(initial) // 2
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What causes scurvy?"}], add_generation_prompt=True, return_tensors="pt"
    )
    assert final_model.generate(**prompt, max_new_tokens=4, do_sample=False).shape[1] > prompt["input_ids"].shape[1]


# what differs between two runs of the same computation: wall times, and where the run wrote
TIMINGS = ("episodes_per_second", "seconds", "policy_dir")


@pytest.mark.multiprocess
def test_ppo_on_two_machines_of_one_process_equals_one_machine_of_two(
    tiny_models, ppo_data, ppo_one_machine_two_processes, tmp_path
):
    """The multi-node launch of docs/scaling.md on localhost (--num_machines 2, --machine_rank 0 and 1), one process
    each."""
    out, port = str(tmp_path / "rl"), free_port()
    launch_ok(
        [
            accelerate_launch(
                "RL_stage2.py", ppo_flags(tiny_models, ppo_data, out), port, num_machines=2, machine_rank=rank
            )
            for rank in (0, 1)
        ]
    )
    reference = ppo_one_machine_two_processes[0]

    def figures(folder, name):
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            records = [json.loads(line) for line in f] if name.endswith(".jsonl") else [json.load(f)]
        return [{k: v for k, v in r.items() if k not in TIMINGS and not k.startswith("time/")} for r in records]

    # the same run: every update's PPO statistics (losses, KL, clip fractions, rewards, held-out reward) equal,
    # and the trained policy byte for byte (measured: no tolerance is needed)
    log = figures(out, "rl_log.jsonl")
    assert [r["update"] for r in log] == [1, 2] and log[1]["objective/kl"] > 0 and log[0]["pg_clipfrac"] > 0
    assert log == figures(reference, "rl_log.jsonl")
    assert figures(out, "rl_summary.json") == figures(reference, "rl_summary.json")
    for name in ("model.safetensors", os.path.join("checkpoint-1", "model.safetensors")):
        with open(os.path.join(out, name), "rb") as mine, open(os.path.join(reference, name), "rb") as theirs:
            assert mine.read() == theirs.read(), name
    assert not listening_pids(port)  # the rendezvous port is free again


@pytest.mark.multiprocess
def test_grpo_two_processes_zero3_takes_the_flags_over_the_config_file(tiny_models, tmp_path):
    """The config file says gradient_accumulation_steps 8, gradient_clipping 1.0, bf16: the flags say 1, 0.5, fp32."""
    data, out = write_problems(tmp_path / "problems.json", 11), str(tmp_path / "grpo")
    flags = rl_flags(
        tiny_models, data, out, rl_algorithm="grpo", value_model_path=None, response_length=8,
        per_device_train_batch_size=2, gradient_accumulation_steps=1, total_episodes=8, num_ppo_epochs=1,
        save_strategy="no", eval_strategy="no", max_grad_norm=0.5, temperature=None,
        local_rollout_forward_batch_size=None, learning_rate=None, logging_steps=None,
    )  # fmt: skip
    launch_ok([accelerate_launch("RL_stage2.py", flags, free_port())])
    summary = json.load(open(os.path.join(out, "rl_summary.json")))
    # 2 processes x 2 completions per step = 4 per step, 8 episodes -> 2 steps; DeepSpeed's engine clips at the flag
    assert (summary["algorithm"], summary["updates"], summary["max_grad_norm"]) == ("grpo", 2, 0.5)
