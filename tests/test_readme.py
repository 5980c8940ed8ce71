"""The README's stage commands, and the docs' blocks marked as tested, parse as written (GPU ones cannot run here, but
every flag must be accepted), their `accelerate launch` part through accelerate's own launch parser, down to the
processes each node would start. And the README stays short enough to read in ten minutes."""

import inspect
import os
import re
import shlex
import sys

import pytest
import torch.distributed.run as torchrun
from transformers import HfArgumentParser

from tests.scripts import run_script

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
VARIABLES = {
    "$model_name": "models/some-model",
    "$port": "28035",
    "$NODE_RANK": "0",
    "$MASTER_ADDR": "10.0.0.1",
    "$sft_model": "ckpts/sft_stage1/checkpoint-462",
}
# Every bash block of the README is checked; a docs page opts a block in with this line just above it (the
# commands that moved there from the README, and others that need no placeholder filled in).
TESTED_MARK = "<!-- tested: tests/test_readme.py -->"
DOCS = ("docs/data.md", "docs/sft.md", "docs/verifier.md", "docs/rl.md", "docs/eval.md", "docs/scaling.md")
README_WORD_LIMIT = 1800


def read(doc):
    with open(os.path.join(REPO, doc), encoding="utf-8") as f:
        return f.read()


def documented_commands():
    """(doc, launcher, script, argv) for every command that runs one of our scripts, in the README's bash blocks and
    the docs' marked ones; the launcher is the words before the script (`python`, `accelerate launch ...`)."""
    commands = []
    for doc in ("README.md", *DOCS):
        fence = r"```bash\n(.*?)```"
        blocks = re.findall(fence if doc == "README.md" else re.escape(TESTED_MARK) + r"\n" + fence, read(doc), re.S)
        for block in blocks:
            for command in block.replace("\\\n", " ").splitlines():
                command = command.split(" #")[0].strip()
                if command.startswith("#"):
                    continue
                for name, value in VARIABLES.items():
                    command = command.replace(name, value)
                words = shlex.split(command) if command else []
                scripts = [i for i, w in enumerate(words) if w in SCRIPTS]
                if scripts:
                    commands.append((doc, words[: scripts[0]], words[scripts[0]], words[scripts[0] + 1 :]))
    return commands


DOCUMENTED = documented_commands()
COMMANDS = [(script, argv) for _, _, script, argv in DOCUMENTED]
IDS = [f"{doc}:{script}:{i}" for i, (doc, _, script, _) in enumerate(DOCUMENTED)]
LAUNCHES = [
    (launcher, script, argv) for _, launcher, script, argv in DOCUMENTED if launcher[:2] == ["accelerate", "launch"]
]
LAUNCH_IDS = [
    f"{doc}:{script}:{i}"
    for i, (doc, launcher, script, _) in enumerate(DOCUMENTED)
    if launcher[:2] == ["accelerate", "launch"]
]
SEED_RL_FLAGS = (
    "model_name_or_path reward_model_path value_model_path dataset_name response_length temperature "
    "local_rollout_forward_batch_size num_ppo_epochs num_mini_batches total_episodes "
    "per_device_train_batch_size gradient_accumulation_steps bf16 output_dir save_strategy save_step "
    "save_total_limit eval_strategy eval_steps kl_coef learning_rate warmup_ratio gradient_checkpointing "
    "dataloader_num_workers run_name num_sample_generations report_to"
).split()


def commands_in(doc, script):
    return [argv for where, _, name, argv in DOCUMENTED if where == doc and name == script]


def flag_values(argv):
    return dict(zip(argv[0::2], argv[1::2]))


def test_the_readme_shows_every_stage():
    order = [script for doc, _, script, _ in DOCUMENTED if doc == "README.md"]
    assert set(order) >= {
        "construct_verifiable_medical_problems.py",
        "prepare_training_data.py",
        "search_for_complex_reasoning_path.py",
        "SFT_stage1.py",
        "train_verifier.py",
        "RL_stage2.py",
        "evaluation/eval.py",
        "evaluation/serve.py",
    }
    # the recipe sits between construct and search, as the data flows
    assert order.index("construct_verifiable_medical_problems.py") < order.index("prepare_training_data.py")
    assert order.index("prepare_training_data.py") < order.index("search_for_complex_reasoning_path.py")
    (rl,) = commands_in("README.md", "RL_stage2.py")
    assert rl[0::2] == [f"--{flag}" for flag in SEED_RL_FLAGS]  # the seed's command, flag for flag


def test_the_rl_page_keeps_the_seeds_two_commands():
    """docs/rl.md holds the seed's 8-GPU command as the seed wrote it and its Qwen2.5-1.5B one (the same flags; Qwen
    as policy and value model, 4 prompts per forward pass); the README's differs from the seed's only in its policy,
    your SFT checkpoint, not the released model that RL already trained."""
    seed, small = commands_in("docs/rl.md", "RL_stage2.py")[:2]
    (readme,) = commands_in("README.md", "RL_stage2.py")
    assert seed[0::2] == small[0::2] == readme[0::2] == [f"--{flag}" for flag in SEED_RL_FLAGS]
    seed, small, readme = flag_values(seed), flag_values(small), flag_values(readme)
    assert seed["--model_name_or_path"] == "FreedomIntelligence/HuatuoGPT-o1-8B"
    assert {flag: value for flag, value in small.items() if seed[flag] != value} == {
        "--model_name_or_path": "Qwen/Qwen2.5-1.5B-Instruct",
        "--value_model_path": "Qwen/Qwen2.5-1.5B-Instruct",
        "--local_rollout_forward_batch_size": "4",
    }
    assert {flag: value for flag, value in readme.items() if seed[flag] != value} == {
        "--model_name_or_path": VARIABLES["$sft_model"]
    }


def test_the_readme_reads_in_ten_minutes():
    assert len(read("README.md").split()) <= README_WORD_LIMIT


def test_the_readmes_vllm_range_is_the_one_trl_supports():
    """`pip install "vllm>=A,<=B"` in the README names the range the installed trl warns outside of."""
    from trl import import_utils

    supported = re.findall(r'Version\("([\d.]+)"\)', inspect.getsource(import_utils.is_vllm_available))
    (pinned,) = re.findall(r'pip install "vllm>=([\d.]+),<=([\d.]+)"', read("README.md"))
    assert list(pinned) == supported[:2]


@pytest.mark.parametrize("script, argv", COMMANDS, ids=IDS)
def test_readme_command_parses(script, argv, monkeypatch, one_thread_fresh_accelerate):
    """The script's own argument parsing, run whole in this process, stopped before it loads anything."""
    if script == "RL_stage2.py":
        # TrainingArguments refuses bf16 without a GPU at parse time; everything else is as typed.
        argv = ["False" if a == "True" and argv[i - 1] == "--bf16" else a for i, a in enumerate(argv)]
    parsed, parse = [], HfArgumentParser.parse_args_into_dataclasses

    def parse_then_stop(self, *args, **kwargs):
        parsed.append(parse(self, *args, **kwargs))
        sys.exit(0)

    monkeypatch.setattr(HfArgumentParser, "parse_args_into_dataclasses", parse_then_stop)
    result = run_script(script, argv, env={"OPENAI_API_KEY": "sk-test"})
    assert result.returncode == 0 and len(parsed) == 1, result.stdout[-2000:] + result.stderr[-3000:]
    leftovers = [word for group in parsed[0] if isinstance(group, list) for word in group]
    assert leftovers == [], f"flags the script does not know: {leftovers}"


def torchrun_arguments(launcher, script, argv, monkeypatch):
    """What `accelerate launch` makes of a command line, through its own parser and checks: its arguments (the
    config file's values filled in), the environment its processes get, and the torchrun arguments it starts them
    with (the DeepSpeed launcher `standard` hands those to torch.distributed.run)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import launch as launch_utils

    # a command's --main_process_port is the first node's; whether this machine listens there says nothing
    monkeypatch.setattr(launch_utils, "is_port_in_use", lambda port: False)
    monkeypatch.chdir(REPO)  # config files are named relative to the repository, as the README's commands run
    args, config, _ = _validate_launch_command(launch_command_parser().parse_args([*launcher[2:], script, *argv]))
    args.deepspeed_fields_from_accelerate_config = ",".join(config.deepspeed_config)
    _, env = launch_utils.prepare_deepspeed_cmd_env(args)
    run = launch_utils._filter_args(
        args, torchrun.get_args_parser(), ["--training_script", script, "--training_script_args", argv]
    )
    return args, env, run


@pytest.mark.parametrize("launcher, script, argv", LAUNCHES, ids=LAUNCH_IDS)
def test_readme_launch_commands_start_every_process_they_count(launcher, script, argv, monkeypatch):
    """Each `accelerate launch` command of the README and the docs' tested blocks, through accelerate's own launch
    parser: DeepSpeed ZeRO-3 in bf16 from the config file, --num_processes spread evenly over --num_machines, this
    node's rank, the script and its flags handed on unchanged."""
    for rank in range(int(flag_value(launcher, "--num_machines", "1"))):
        words = list(launcher)
        if "--machine_rank" in words:
            words[words.index("--machine_rank") + 1] = str(rank)  # the line each node types
        args, env, run = torchrun_arguments(words, script, argv, monkeypatch)
        assert (args.use_deepspeed, env["ACCELERATE_DEEPSPEED_ZERO_STAGE"], env["ACCELERATE_MIXED_PRECISION"]) == (
            True,
            "3",
            "bf16",
        )
        nodes = torchrun_nodes(run.nnodes)
        assert nodes == args.num_machines and int(run.nproc_per_node) * nodes == args.num_processes
        assert (run.training_script, run.training_script_args) == (script, argv)
        if nodes > 1:
            # every node meets the first one at its address and port (torchrun's static rendezvous), with its own rank
            endpoint = f"{VARIABLES['$MASTER_ADDR']}:{args.main_process_port}"
            assert (run.node_rank, run.rdzv_backend, torchrun.get_rdzv_endpoint(run)) == (rank, "static", endpoint)


def flag_value(words, flag, default=None):
    return words[words.index(flag) + 1] if flag in words else default


def torchrun_nodes(nnodes):
    least, most = torchrun.parse_min_max_nnodes(str(nnodes))
    assert least == most, f"an elastic node count {nnodes}: the README's runs have a fixed one"
    return least


def test_the_scaling_page_shows_a_two_node_launch():
    (launcher, script, argv), *others = [c for c in LAUNCHES if flag_value(c[0], "--num_machines") == "2"]
    assert script == "SFT_stage1.py" and not others
    assert {"--main_process_ip", "--main_process_port", "--machine_rank"} <= set(launcher)
    assert [doc for doc, words, _, _ in DOCUMENTED if words == launcher] == ["docs/scaling.md"]
