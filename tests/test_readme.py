"""The README's stage commands parse as written (GPU ones cannot run here, but every flag must be accepted)."""

import os
import re
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = (
    "construct_verifiable_medical_problems.py",
    "prepare_training_data.py",
    "search_for_complex_reasoning_path.py",
    "SFT_stage1.py",
    "RL_stage2.py",
    "train_verifier.py",
    "evaluation/eval.py",
    "evaluation/serve.py",
    "evaluation/prepare_eval_data.py",
)
VARIABLES = {"$model_name": "models/some-model", "$port": "28035", "$NODE_RANK": "0", "$MASTER_ADDR": "10.0.0.1"}

# Runs the script's own argument parsing, then stops before it loads anything.
PARSE_ONLY = """
import runpy, sys
from transformers import HfArgumentParser
parse = HfArgumentParser.parse_args_into_dataclasses
def parse_then_stop(self, *args, **kwargs):
    result = parse(self, *args, **kwargs)
    print("PARSED", [type(group).__name__ for group in result if not isinstance(group, list)])
    sys.exit(0)
HfArgumentParser.parse_args_into_dataclasses = parse_then_stop
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def readme_commands():
    """(script, argv) for every command in the README's bash blocks that runs one of our scripts."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split(" #")[0].strip()
            for name, value in VARIABLES.items():
                command = command.replace(name, value)
            words = shlex.split(command) if command else []
            scripts = [i for i, w in enumerate(words) if w in SCRIPTS]
            if scripts:
                commands.append((words[scripts[0]], words[scripts[0] + 1 :]))
    return commands


COMMANDS = readme_commands()


def test_the_readme_shows_every_stage():
    assert {script for script, _ in COMMANDS} >= {
        "construct_verifiable_medical_problems.py",
        "prepare_training_data.py",
        "search_for_complex_reasoning_path.py",
        "SFT_stage1.py",
        "RL_stage2.py",
        "evaluation/eval.py",
        "evaluation/serve.py",
    }
    order = [script for script, _ in COMMANDS]
    # the recipe sits between construct and search, as the data flows
    assert order.index("construct_verifiable_medical_problems.py") < order.index("prepare_training_data.py")
    assert order.index("prepare_training_data.py") < order.index("search_for_complex_reasoning_path.py")
    rl, rl_small = [argv for script, argv in COMMANDS if script == "RL_stage2.py"]
    seed_flags = (
        "model_name_or_path reward_model_path value_model_path dataset_name response_length temperature "
        "local_rollout_forward_batch_size num_ppo_epochs num_mini_batches total_episodes "
        "per_device_train_batch_size gradient_accumulation_steps bf16 output_dir save_strategy save_step "
        "save_total_limit eval_strategy eval_steps kl_coef learning_rate warmup_ratio gradient_checkpointing "
        "dataloader_num_workers run_name num_sample_generations report_to"
    ).split()
    assert rl[0::2] == [f"--{flag}" for flag in seed_flags]  # the seed's command, flag for flag
    # the seed's Qwen2.5-1.5B command: the same flags; Qwen as policy and value model, 4 prompts per forward pass
    assert rl_small[0::2] == rl[0::2]
    small, large = dict(zip(rl_small[0::2], rl_small[1::2])), dict(zip(rl[0::2], rl[1::2]))
    assert {flag: value for flag, value in small.items() if large[flag] != value} == {
        "--model_name_or_path": "Qwen/Qwen2.5-1.5B-Instruct",
        "--value_model_path": "Qwen/Qwen2.5-1.5B-Instruct",
        "--local_rollout_forward_batch_size": "4",
    }


@pytest.mark.parametrize("script, argv", COMMANDS, ids=[f"{s}:{i}" for i, (s, _) in enumerate(COMMANDS)])
def test_readme_command_parses(script, argv):
    if script == "RL_stage2.py":
        # TrainingArguments refuses bf16 without a GPU at parse time; everything else is as typed.
        argv = ["False" if a == "True" and argv[i - 1] == "--bf16" else a for i, a in enumerate(argv)]
    env = dict(os.environ, OPENAI_API_KEY="sk-test", HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", PARSE_ONLY, script, *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "PARSED" in result.stdout, result.stdout[-2000:] + result.stderr[-3000:]
