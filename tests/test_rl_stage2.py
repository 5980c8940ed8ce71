"""RL_stage2.py end to end on the tiny models (CPU, one process), and the seed's command line."""

import json
import math
import os
import shlex
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from huatuo_o1 import models as model_loading
from huatuo_o1.records import InputError
from huatuo_o1.rl import loading
from huatuo_o1.rl.config import check_batch_sizes, parse_args
from huatuo_o1.rl.loading import Problem, load_problems
from tests.damage import DAMAGES, damage
from tests.rl_helpers import rl_flags, write_problems
from tests.scripts import reset_accelerate, run_ok, run_script

SEED_COMMAND = """
    --model_name_or_path {policy} --reward_model_path {verifier} --value_model_path {value} --dataset_name
    {data} --response_length 1300 --temperature 0.5 --local_rollout_forward_batch_size 8 --num_ppo_epochs 3
    --num_mini_batches 1 --total_episodes 20000 --per_device_train_batch_size 1 --gradient_accumulation_steps
    16 --bf16 False --output_dir ./ckpts --save_strategy steps --save_step 20 --save_total_limit 1
    --eval_strategy steps --eval_steps 20 --kl_coef 0.03 --learning_rate 5e-7 --warmup_ratio 0.05
    --gradient_checkpointing True --dataloader_num_workers 4 --run_name ppo_medical_o1_8B
    --num_sample_generations -1 --report_to wandb
"""


pytestmark = pytest.mark.usefixtures("one_thread_fresh_accelerate")


def plotted_lines(monkeypatch):
    """Filled as figures are saved: {file name: the y values of each line drawn, in drawing order}."""
    import matplotlib.figure

    saved, real_savefig = {}, matplotlib.figure.Figure.savefig

    def savefig(figure, path, *args, **kwargs):
        lines = [list(map(float, line.get_ydata())) for ax in figure.axes for line in ax.get_lines()]
        saved[os.path.basename(path)] = lines
        return real_savefig(figure, path, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    return saved


def run_rl(argv):
    """RL_stage2.py as a user runs it (in this process); its rl_summary.json."""
    run_ok("RL_stage2.py", argv)
    out = argv[argv.index("--output_dir") + 1]
    with open(os.path.join(out, "rl_summary.json")) as f:
        return json.load(f)


def test_seed_command_parses(tmp_path):
    argv = shlex.split(
        SEED_COMMAND.format(
            policy="models/policy",
            verifier="models/verifier",
            value="models/value",
            data=str(tmp_path / "problems.json"),
        )
    )
    script_args, config, model_args = parse_args(argv)
    assert model_args.model_name_or_path == "models/policy"
    assert (config.reward_model_path, config.value_model_path) == ("models/verifier", "models/value")
    assert script_args.dataset_name.endswith("problems.json")
    assert (config.response_length, config.temperature, config.local_rollout_forward_batch_size) == (1300, 0.5, 8)
    assert (config.num_ppo_epochs, config.num_mini_batches, config.total_episodes) == (3, 1, 20000)
    assert (config.per_device_train_batch_size, config.gradient_accumulation_steps) == (1, 16)
    assert (config.save_steps, config.save_total_limit, config.eval_steps) == (20, 1, 20)  # --save_step abbreviates
    assert (config.kl_coef, config.learning_rate, config.warmup_ratio, config.warmup_steps) == (0.03, 5e-7, 0.05, 0.05)
    assert config.gradient_checkpointing and config.report_to == ["wandb"] and config.num_sample_generations == -1
    assert (config.vf_coef, config.gamma, config.lam, config.cliprange, config.rl_algorithm) == (
        0.1,
        1.0,
        0.95,
        0.2,
        "ppo",
    )
    sizes = check_batch_sizes(config, world_size=8)
    assert (sizes.local_batch_size, sizes.batch_size, sizes.num_updates) == (16, 128, 157)  # the paper's batch of 128


def flag_help(text, flag):
    """A flag's own help in the --help output, on one line (argparse wraps it; the line above names the flag and
    its dashed alias)."""
    entry = text.split(f"\n  {flag} ")[1].split("\n  --")[0]
    return " ".join(entry.split("\n", 1)[1].split())


def test_help_lists_the_seed_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--value_model_path",
        "--warmup_ratio",
        "--kl_coef",
        "--response_length",
        "--rl_algorithm",
        "--save_steps",
    ):
        assert flag in text
    # vf_coef: the code's default, and the paper's value beside it
    assert flag_help(text, "--vf_coef") == (
        "Value loss weight. The paper's text says 1.0; the original code (and the seed's command) used 0.1. "
        "(default: 0.1)"
    )
    for option in ("--score_position", "after_stop", "stop_token", "--max_grad_norm", "--kl_estimator"):
        assert option in text
    # the two seed flags that do nothing on the PPO path say so
    for flag in ("--num_sample_generations", "--dataloader_num_workers"):
        assert "accepted and ignored" in flag_help(text, flag).lower()
    # TrainingArguments' other flags are gone: nothing is accepted silently
    assert "--dataloader_pin_memory" not in text and "--fp16" not in text and "--dataset_num_proc" not in text


def test_batch_sizes_that_cannot_work_are_explained(tmp_path):
    argv = shlex.split(SEED_COMMAND.format(policy="p", verifier="v", value="v", data="d.json")) + [
        "--total_episodes",
        "64",
    ]
    config = parse_args(argv)[1]
    with pytest.raises(
        ValueError, match=r"total_episodes 64 .* 8 process\(es\) .* gradient_accumulation_steps 16 .* = 128"
    ):
        check_batch_sizes(config, world_size=8)
    config.rl_algorithm, config.total_episodes, config.gradient_accumulation_steps = "rloo", 20000, 3
    with pytest.raises(ValueError, match=r"multiple of --num_generations"):
        check_batch_sizes(config, world_size=1)


def tiny_argv(tiny_models, data, out, *extra):
    return rl_flags(tiny_models, data, out) + list(extra)


def parameters(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_ppo_end_to_end(tiny_models, tmp_path, monkeypatch):
    loaded = {}
    real_load_models = loading.load_models

    def keep_models(*args):
        models = real_load_models(*args)
        loaded.update(policy=models.policy, ref=models.ref_policy, value=models.value_model, verifier=models.verifier)
        loaded["initial"] = {name: parameters(loaded[name]) for name in ("policy", "ref", "value", "verifier")}
        return models

    monkeypatch.setattr(loading, "load_models", keep_models)  # the script imports it when it runs
    plotted = plotted_lines(monkeypatch)
    data, out = write_problems(tmp_path / "problems.json", 11), str(tmp_path / "rl")
    summary = run_rl(
        tiny_argv(
            tiny_models,
            data,
            out,
            "--total_episodes",
            "24",
            "--num_mini_batches",
            "2",
            "--num_ppo_epochs",
            "2",
            "--save_strategy",
            "steps",
            "--save_step",
            "1",
            "--save_total_limit",
            "1",
            "--eval_strategy",
            "steps",
            "--eval_steps",
            "2",
            "--gradient_checkpointing",
            "True",
            "--missing_eos_penalty",
            "0.5",
        )
    )
    # 10 train / 1 held out; 8 episodes per update (2 x 2 x 2 mini-batches) -> 3 updates
    assert (summary["train_problems"], summary["eval_problems"], summary["updates"]) == (10, 1, 3)
    initial = loaded["initial"]
    changed = [k for k, v in parameters(loaded["policy"]).items() if not torch.equal(v, initial["policy"][k])]
    assert len(changed) > len(initial["policy"]) // 2
    assert any(not torch.equal(v, initial["value"][k]) for k, v in parameters(loaded["value"]).items())
    for frozen in ("ref", "verifier"):
        assert all(torch.equal(v, initial[frozen][k]) for k, v in parameters(loaded[frozen]).items()), frozen

    log = [json.loads(line) for line in open(os.path.join(out, "rl_log.jsonl"))]
    assert [r["update"] for r in log] == [1, 2, 3]
    # as the original: the linear schedule steps once per update; the 4 optimizer steps of an update share its rate
    assert [r["lr"] for r in log] == pytest.approx([3e-3, 2e-3, 1e-3])
    assert (
        all(r["grad_norm"] > 0 for r in log)
        and summary["max_grad_norm"] == 1.0
        and summary["score_position"] == "after_stop"
    )
    for key in (
        "objective/score",
        "objective/format_rate",
        "objective/kl",
        "entropy",
        "pg_clipfrac",
        "vf_clipfrac",
        "vf_loss",
        "episodes_per_second",
    ):
        assert all(key in r for r in log), key
    # where each update's time went: every phase took some, and together no more than the run
    phases = ("time/generate", "time/forward", "time/reward", "time/optimise")
    assert all(r[k] > 0 for r in log for k in phases)
    assert sum(r[k] for r in log for k in phases) < summary["seconds"]
    # the random tiny policy never writes "## Thinking": score 0, minus the missing-eos penalty where it ran on
    assert all(-0.5 <= r["objective/score"] <= 0.0 and r["objective/format_rate"] == 0.0 for r in log)
    # each update's spread: its rewards take at most the two values 0 and -0.5, so the std follows from the mean
    for r in log:
        low, mean, high = r["objective/score_min"], r["objective/score"], r["objective/score_max"]
        assert {low, high} <= {-0.5, 0.0} and low <= mean + 1e-6 and mean <= high + 1e-6
        assert r["objective/score_std"] == pytest.approx(math.sqrt(max(0.0, (mean - low) * (high - mean))), abs=1e-5)
    assert "eval/mean_reward" in log[1] and "eval/mean_reward" not in log[0]
    assert max(r["pg_clipfrac"] for r in log) > 0  # lr 3e-3 moves the policy past the clip range within an update

    with open(os.path.join(out, "rl_summary.json")) as f:
        assert json.load(f) == summary
    # rl_curves.png beside the log: reward, format rate and KL of every update, as logged
    assert open(os.path.join(out, "rl_curves.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert plotted["rl_curves.png"] == [
        [r[key] for r in log] for key in ("objective/score", "objective/format_rate", "objective/kl")
    ]
    assert summary["eval_start"]["samples"] == 1 and summary["eval_end"]["format_rate"] == 0.0

    # checkpoints: saved each update except the last (the final policy goes to output_dir); limit 1 keeps the newest
    assert sorted(d for d in os.listdir(out) if d.startswith("checkpoint-")) == ["checkpoint-2"]
    saved = AutoModelForCausalLM.from_pretrained(out)
    trained = parameters(loaded["policy"])
    assert all(torch.equal(v, trained[k]) for k, v in saved.state_dict().items())
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What causes scurvy?"}], add_generation_prompt=True, return_tensors="pt"
    )
    generated = saved.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]
    assert not os.path.exists(os.path.join(out, "value_model"))  # the policy only
    assert AutoModelForCausalLM.from_pretrained(os.path.join(out, "checkpoint-2")) is not None


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_trl_algorithms_with_the_verifier_reward(tiny_models, taught_policy, tmp_path, monkeypatch, algorithm):
    loaded = {}
    real_load_models = loading.load_models

    def keep_models(*args):
        models = real_load_models(*args)
        loaded["initial"] = parameters(models.policy)
        assert models.ref_policy is None and models.value_model is None  # no reference copy of ours, no value model
        return models

    monkeypatch.setattr(loading, "load_models", keep_models)
    plotted = plotted_lines(monkeypatch)
    data, out = write_problems(tmp_path / "problems.json", 11), str(tmp_path / algorithm)
    argv = tiny_argv(
        tiny_models,
        data,
        out,
        "--rl_algorithm",
        algorithm,
        "--total_episodes",
        "12",
        "--num_ppo_epochs",
        "1",
        "--save_strategy",
        "no",
        "--eval_strategy",
        "no",
        "--response_length",
        "32",
        "--temperature",
        "0.7",
        "--gradient_accumulation_steps",
        "3",
    )
    argv[argv.index("--model_name_or_path") + 1] = taught_policy
    summary = run_rl(argv)
    # 6 completions per step (3 prompts x num_generations 2) -> 2 optimizer steps for 12 episodes
    assert summary["algorithm"] == algorithm and summary["updates"] == 2
    log = json.load(open(os.path.join(out, "rl_trl_log.json")))
    assert len(log) == 2
    # the taught policy writes the layout some of the time: rewards differ within groups, so the policy learns
    assert any(0.0 < entry["rewards/format_ok/mean"] for entry in log)
    assert all(0.0 <= entry["rewards/verifier/mean"] <= 1.0 for entry in log)
    assert open(os.path.join(out, "rl_curves.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert plotted["rl_curves.png"] == [
        [entry[key] for entry in log] for key in ("rewards/verifier/mean", "rewards/format_ok/mean", "kl")
    ]
    saved = AutoModelForCausalLM.from_pretrained(out)
    changed = [k for k, v in saved.state_dict().items() if not torch.equal(v, loaded["initial"][k])]
    assert len(changed) > len(loaded["initial"]) // 2
    assert summary["eval_start"]["samples"] == 1 and 0.0 <= summary["eval_end"]["mean_reward"] <= 1.0


def test_resume_from_checkpoint_continues_the_same_run(tiny_models, tmp_path):
    data = write_problems(tmp_path / "problems.json", 11)
    common = [
        "--total_episodes",
        "12",
        "--num_ppo_epochs",
        "1",
        "--save_strategy",
        "steps",
        "--save_step",
        "1",
        "--save_total_limit",
        "2",
        "--eval_strategy",
        "no",
    ]
    whole = str(tmp_path / "whole")
    run_rl(tiny_argv(tiny_models, data, whole, *common))
    assert sorted(d for d in os.listdir(whole) if d.startswith("checkpoint-")) == ["checkpoint-1", "checkpoint-2"]
    # the training toolkit's layout: a loadable policy, the trainer's counters, accelerate's state
    checkpoint = os.path.join(whole, "checkpoint-2")
    assert {"config.json", "trainer_state.json", "training_state"} <= set(os.listdir(checkpoint))
    assert json.load(open(os.path.join(checkpoint, "trainer_state.json"))) == {"update": 2, "num_updates": 3}
    reset_accelerate()
    resumed = str(tmp_path / "resumed")
    summary = run_rl(
        tiny_argv(tiny_models, data, resumed, *common, "--resume_from_checkpoint", os.path.join(whole, "checkpoint-2"))
    )
    assert summary["updates"] == 3
    log = [json.loads(line) for line in open(os.path.join(resumed, "rl_log.jsonl"))]
    assert [r["update"] for r in log] == [3]  # only the missing update ran
    whole_log = [json.loads(line) for line in open(os.path.join(whole, "rl_log.jsonl"))]
    assert log[0]["objective/kl"] == pytest.approx(whole_log[2]["objective/kl"], abs=1e-5)
    a = AutoModelForCausalLM.from_pretrained(whole).state_dict()
    b = AutoModelForCausalLM.from_pretrained(resumed).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


PPO_RESUMABLE = [
    *("--total_episodes", "12", "--num_ppo_epochs", "1", "--save_strategy", "steps", "--save_step", "1"),
    *("--save_total_limit", "2", "--eval_strategy", "no"),
]


@pytest.fixture(scope="module")
def ppo_checkpoints(tiny_models, tmp_path_factory):
    """A PPO run of 3 updates that kept checkpoint-1 and checkpoint-2, each with its training state; its data."""
    folder = tmp_path_factory.mktemp("ppo_checkpoints")
    data, out = write_problems(folder / "problems.json", 11), str(folder / "rl")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    run_rl(tiny_argv(tiny_models, data, out, *PPO_RESUMABLE))
    reset_accelerate()
    torch.set_num_threads(threads)
    return out, data


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_checkpoint_to_resume_falls_back_to_the_older_one_or_stops_naming_the_file(
    tiny_models, ppo_checkpoints, tmp_path, how
):
    whole, data = ppo_checkpoints
    run_dir = str(tmp_path / "copy")
    shutil.copytree(whole, run_dir)
    with open(os.path.join(run_dir, "manifest.json")) as f:  # the final policy has one too
        assert "model.safetensors" in {entry["path"] for entry in json.load(f)["files"]}
    newest, older = os.path.join(run_dir, "checkpoint-2"), os.path.join(run_dir, "checkpoint-1")
    weights = os.path.join(newest, "model.safetensors")
    reason = damage(weights, how)
    resumed = str(tmp_path / "resumed")
    argv = tiny_argv(tiny_models, data, resumed, *PPO_RESUMABLE, "--resume_from_checkpoint", newest)
    result = run_ok("RL_stage2.py", argv)
    reset_accelerate()
    assert f"{newest} skipped: {weights} does not match its manifest {reason}\n" in result.stdout
    assert f"resumed from {older} at update 1" in result.stdout
    log = [json.loads(line) for line in open(os.path.join(resumed, "rl_log.jsonl"))]
    assert [r["update"] for r in log] == [2, 3]  # the updates after checkpoint-1 ran again
    whole_log = [json.loads(line) for line in open(os.path.join(whole, "rl_log.jsonl"))]
    assert log[0]["objective/kl"] == pytest.approx(whole_log[1]["objective/kl"], abs=1e-5)

    # no older checkpoint that matches: one line naming the damaged file, nothing loaded, nothing written
    damage(os.path.join(older, "training_state", sorted(os.listdir(os.path.join(older, "training_state")))[0]), how)
    stopped = run_script(
        "RL_stage2.py", tiny_argv(tiny_models, data, str(tmp_path / "again"), "--resume_from_checkpoint", newest)
    )
    lines = stopped.stderr.strip().splitlines()
    assert stopped.returncode == 1 and len(lines) == 1 and "Traceback" not in stopped.stderr
    assert lines[0] == (
        f"error: {weights} does not match its manifest {reason}; no older checkpoint beside it matches its manifest"
    )
    assert not os.path.exists(tmp_path / "again")


def test_problems_are_filtered_and_ten_percent_held_out(tmp_path):
    blank = [
        {"Open-ended Verifiable Question": " ", "Ground-True Answer": "x"},
        {"Open-ended Verifiable Question": "q"},
    ]
    spaced = {"Open-ended Verifiable Question": " Spaced question? ", "Ground-True Answer": " Croup\n"}
    args = parse_args(
        ["--dataset_name", write_problems(tmp_path / "a.json", 30, blank + [spaced]), "--output_dir", str(tmp_path)]
    )[0]
    train, held_out, skipped = load_problems(args, seed=0)
    assert (len(train), len(held_out), skipped) == (28, 3, 2)
    # used as stored, like the original (the answer reaches the verifier unstripped)
    assert Problem(" Spaced question? ", " Croup\n") in train + held_out
    many = [
        {"Open-ended Verifiable Question": f"question {i}", "Ground-True Answer": f"answer {i}"} for i in range(2500)
    ]
    (tmp_path / "many.jsonl").write_text("\n".join(json.dumps(r) for r in many))
    args.dataset_name = str(tmp_path / "many.jsonl")
    train, held_out, _ = load_problems(args, seed=0)
    assert (len(train), len(held_out)) == (2300, 200)  # 10%, at most 200
    assert {p.question for p in train}.isdisjoint(p.question for p in held_out)
    args.dataset_name = write_problems(tmp_path / "one.json", 1, blank)
    with pytest.raises(InputError, match=r"one\.json: 1 usable row\(s\) of 3"):
        load_problems(args, seed=0)


def test_policy_pad_token_follows_the_original_for_llama3(tiny_models):
    llama = AutoTokenizer.from_pretrained(tiny_models["tiny-llama"])
    llama.pad_token = (
        "<|begin_of_text|>"  # distinct from eos, yet the original always padded Llama-3 with <|end_of_text|>
    )
    assert model_loading.policy_pad_token(llama) is False and llama.pad_token == "<|end_of_text|>"
    qwen = AutoTokenizer.from_pretrained(tiny_models["tiny-qwen2"])
    qwen.pad_token = qwen.eos_token  # no <|eot_id|>: the distinct-pad rule below
    assert model_loading.policy_pad_token(qwen) is False and qwen.pad_token == "<|endoftext|>"


def test_pad_token_is_made_distinct_from_eos(tiny_models, monkeypatch):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["tiny-qwen2"])
    tokenizer.pad_token = tokenizer.eos_token  # as SmolLM2 ships: pad == eos == <|im_end|>
    assert model_loading.distinct_pad_token(tokenizer) is False
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    llama = AutoTokenizer.from_pretrained(tiny_models["tiny-llama"])
    llama.pad_token = None
    model_loading.distinct_pad_token(llama)
    assert llama.pad_token == "<|end_of_text|>"  # the Llama-3 rule
    # no usable token in the vocabulary: a new one (the caller then grows the embeddings)
    bare = AutoTokenizer.from_pretrained(tiny_models["tiny-qwen2"])
    bare.pad_token = bare.eos_token
    vocab_before = len(bare)
    monkeypatch.setattr(model_loading, "PAD_CANDIDATES", ["<|not-in-vocab|>"])
    assert model_loading.distinct_pad_token(bare) is True
    assert bare.pad_token == "<|pad|>" and len(bare) == vocab_before + 1


def test_logits_only_at_response_positions_match_the_full_forward(tiny_models):
    from transformers import AutoModelForSequenceClassification

    from huatuo_o1.rl.ppo_trainer import PolicyAndValue

    torch.manual_seed(0)
    model = PolicyAndValue(
        AutoModelForCausalLM.from_pretrained(tiny_models["tiny-qwen2"]),
        AutoModelForSequenceClassification.from_pretrained(tiny_models["tiny-value"], num_labels=1),
    ).eval()
    ids = torch.randint(3, 500, (2, 9))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # a left-padded prompt
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        full_logits, full_values = model(ids, mask, positions)
        kept_logits, kept_values = model(ids, mask, positions, 4)
    assert kept_logits.shape == (2, 4, full_logits.shape[2])
    torch.testing.assert_close(kept_logits, full_logits[:, -4:])
    torch.testing.assert_close(kept_values, full_values)
