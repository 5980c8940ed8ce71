"""RL_stage2.py --reward_mode verifier | rule | hybrid and the reward value flags (huatuo_o1/rl/reward.py): exact
rewards on a hand-made table, who decided each, what the verifier was asked, the logs' counts, one-line refusals."""

import json
import os
from collections import Counter

import pytest
import torch
from transformers import AutoTokenizer

from huatuo_o1.records import InputError
from huatuo_o1.rl import reward as reward_module
from huatuo_o1.rl.config import ScriptArguments, parse_args
from huatuo_o1.rl.loading import Problem, load_problems
from huatuo_o1.rl.reward import (
    RLReward,
    normalised_answer,
    reward_sources,
    reward_values,
    rule_says_right,
    trl_reward_functions,
)
from huatuo_o1.verifier import NO_ANSWER, PAPER_REWARD, RewardValues, VerifierReward, verifier_input
from tests.rl_helpers import PROBLEMS, rl_flags, write_problems
from tests.scripts import record_calls, run_script
from tests.verifier_helpers import ControlledVerifier

HEPARIN_OPTIONS = {"A": "Vitamin K", "B": "Protamine sulfate", "C": "Idarucizumab", "D": "Andexanet alfa"}
CLOSED = Problem(
    "Which drug reverses heparin?\nA. Vitamin K\nB. Protamine sulfate\nC. Idarucizumab\nD. Andexanet alfa",
    "B. Protamine sulfate",
    options=HEPARIN_OPTIONS,
    answer_idx="B",
)
OPEN = Problem("A child has a barking cough and inspiratory stridor. What is the diagnosis?", "Croup")


def reply(final):
    return f"## Thinking\n\nLet me reason step by step.\n\n## Final Response\n\n{final}"


# (what the row is, problem, response, the verifier's p for its final answer (None: never asked), expected rewards
#  by mode: verifier, rule, hybrid)
TABLE = [
    ("closed set, the right letter", CLOSED, reply("The answer is B."), 0.3, (0.1, 1.0, 1.0)),
    ("closed set, the right option's text", CLOSED, reply("Protamine sulfate"), 0.9, (1.0, 1.0, 1.0)),
    ("closed set, a wrong letter", CLOSED, reply("A. Vitamin K"), 0.8, (1.0, 0.1, 0.1)),
    ("closed set, two options named", CLOSED, reply("Either A or B."), 0.6, (1.0, 0.1, 0.1)),
    ("closed set, broken layout", CLOSED, "The answer is B.", None, (0.0, 0.0, 0.0)),
    ("open-ended, exact", OPEN, reply("Croup"), 0.9, (1.0, 1.0, 1.0)),
    ("open-ended, equal once normalised", OPEN, reply("CROUP."), 0.2, (0.1, 1.0, 0.1)),
    ("open-ended, different", OPEN, reply("Bronchiolitis"), 0.7, (1.0, 0.1, 1.0)),
    ("open-ended, broken layout", OPEN, "## Final Response\n\nCroup", None, (0.0, 0.0, 0.0)),
]
MODES = ("verifier", "rule", "hybrid")


@pytest.fixture(scope="module")
def verifier_tokenizer(tiny_models):
    return AutoTokenizer.from_pretrained(tiny_models["tiny-verifier"])


def table_verifier(tokenizer, batch_size=8, **values):
    """A VerifierReward whose verifier gives each table row's final answer its p (0.5 to anything else)."""
    eos = tokenizer.eos_token
    p_by_text = {
        verifier_input(response.split("## Final Response\n\n")[1], problem.reference, eos): p
        for _, problem, response, p, _ in TABLE
        if p is not None
    }
    return VerifierReward(ControlledVerifier(tokenizer, p_by_text), tokenizer, batch_size=batch_size, **values)


def score_table(mode, tokenizer, values=PAPER_REWARD, **verifier_values):
    verifier = None if mode == "rule" else table_verifier(tokenizer, **verifier_values)
    reward = RLReward(mode, values, verifier)
    output = reward([row[2] for row in TABLE], [row[1] for row in TABLE])
    return output, verifier


@pytest.mark.parametrize("mode", MODES)
def test_rewards_per_mode_on_a_hand_made_table(verifier_tokenizer, mode):
    output, verifier = score_table(mode, verifier_tokenizer)
    expected = [row[4][MODES.index(mode)] for row in TABLE]
    assert output.rewards.tolist() == pytest.approx(expected, abs=1e-7), [row[0] for row in TABLE]
    assert output.rewards.dtype == torch.float32
    assert output.well_formed.tolist() == [row[3] is not None for row in TABLE]
    asked = {
        "verifier": [row[0] for row in TABLE],  # every row, a broken one as "I do not know the answer." (the paper)
        "rule": [],
        "hybrid": [row[0] for row in TABLE if row[1] is OPEN and row[3] is not None],
    }[mode]
    if verifier is not None:
        eos = verifier_tokenizer.eos_token
        shown = [
            verifier_input(
                response.split("## Final Response\n\n")[1] if p is not None else NO_ANSWER, problem.reference, eos
            )
            for name, problem, response, p, _ in TABLE
            if name in asked
        ]
        assert verifier.model.seen == shown  # what the verifier was asked, and nothing else
    sources = {
        "verifier": ["layout" if row[3] is None else "verifier" for row in TABLE],
        "rule": ["layout" if row[3] is None else "rule" for row in TABLE],
        "hybrid": ["layout" if row[3] is None else ("rule" if row[1] is CLOSED else "verifier") for row in TABLE],
    }[mode]
    assert output.sources == sources


def test_hybrid_counts_rewards_per_source(verifier_tokenizer):
    output, _ = score_table("hybrid", verifier_tokenizer)
    assert Counter(output.sources) == {"rule": 4, "verifier": 3, "layout": 2}
    (functions, weights) = trl_reward_functions(RLReward("hybrid", PAPER_REWARD, table_verifier(verifier_tokenizer)),
                                                [CLOSED, OPEN])  # fmt: skip
    names = [function.__name__ for function in functions]
    assert names == ["hybrid", "format_ok", "from_verifier", "from_rule", "from_layout"]
    assert weights == [1.0, 0.0, 0.0, 0.0, 0.0]  # only the reward trains; the rest is logged
    completions = [[{"role": "assistant", "content": row[2]}] for row in TABLE]
    problem = [0 if row[1] is CLOSED else 1 for row in TABLE]
    by_name = {name: function(prompts=None, completions=completions, problem=problem) for name, function in
               zip(names, functions)}  # fmt: skip
    assert by_name["hybrid"] == pytest.approx([row[4][2] for row in TABLE])
    assert [sum(by_name[f"from_{source}"]) for source in ("verifier", "rule", "layout")] == [3, 4, 2]


def test_the_value_flags_change_the_rule_in_every_mode(verifier_tokenizer):
    argv = ["--output_dir", "o", "--correct_reward", "2", "--incorrect_reward", "-0.5", "--malformed_reward", "-1",
            "--verifier_threshold", "0.85"]  # fmt: skip
    values = reward_values(parse_args(argv)[1])
    assert values == RewardValues(correct=2.0, incorrect=-0.5, malformed=-1.0, threshold=0.85)
    assert reward_values(parse_args(["--output_dir", "o"])[1]) == PAPER_REWARD == RewardValues(1.0, 0.1, 0.0, 0.4)
    verifier_kwargs = dict(threshold=0.85, correct_reward=2.0, incorrect_reward=-0.5, malformed_reward=-1.0)
    output, _ = score_table("hybrid", verifier_tokenizer, values, **verifier_kwargs)
    # the verifier's rows (open-ended, well-formed) now need p > 0.85: only "Croup" (0.9) is right
    assert output.rewards.tolist() == [2.0, 2.0, -0.5, -0.5, -1.0, 2.0, -0.5, -0.5, -1.0]
    output, _ = score_table("verifier", verifier_tokenizer, values, **verifier_kwargs)
    assert output.rewards.tolist() == [-0.5, 2.0, -0.5, -0.5, -1.0, 2.0, -0.5, -0.5, -1.0]


def test_rule_rewards_keep_the_verifiers_dtype():
    """In bf16 the paper's 0.1 is 0.10009765625; a rule's 0.1 beside the verifier's is the same number."""
    reward = RLReward("rule", PAPER_REWARD, dtype=torch.bfloat16)
    output = reward([reply("A"), reply("B")], [CLOSED, CLOSED])
    assert output.rewards.dtype == torch.bfloat16 and output.rewards.tolist() == [0.10009765625, 1.0]


@pytest.mark.parametrize(
    "answer, reference, equal",
    [
        ("Vitamin C.", "vitamin c", True),
        ("  N-acetylcysteine ", "N acetylcysteine", True),
        ("Ｃｒｏｕｐ", "croup", True),  # full-width letters (NFKC)
        ("“Croup”!", "Croup", True),  # typographic quotes are punctuation
        ("Intramuscular\nepinephrine", "intramuscular epinephrine", True),
        ("急性 阑尾炎。", "急性阑尾炎", True),  # no space beside CJK, the full stop dropped
        ("Na+", "Na", False),  # symbols stay
        ("Type 1 diabetes", "Type I diabetes", False),
        ("Croup", "Viral croup", False),  # exact, not contained
    ],
)
def test_the_normalisation_of_open_ended_answers(answer, reference, equal):
    assert (normalised_answer(answer) == normalised_answer(reference)) is equal
    assert rule_says_right(answer, Problem("q", reference)) is equal


def test_the_rule_reads_closed_set_answers_with_the_evaluations_honest_reader(monkeypatch):
    seen = record_calls(monkeypatch, reward_module, "honest_extract")
    assert rule_says_right("**B**", CLOSED) and rule_says_right("B", CLOSED)
    assert rule_says_right("The correct option is (B) Protamine sulfate.", CLOSED)
    assert not rule_says_right("Vitamin K", CLOSED) and not rule_says_right("B cells are involved.", CLOSED)
    assert not rule_says_right("I cannot tell.", CLOSED)  # no option named: wrong
    assert [call[1] for call in seen] == [HEPARIN_OPTIONS] * 6


def test_a_broken_layout_is_the_layouts_in_every_mode():
    responses = ["no headings", reply("B"), "## Thinking\n\nx\n\n## Final Response\nB"]  # no blank line: broken
    for mode in MODES:
        assert reward_sources(mode, responses, [CLOSED] * 3)[0::2] == ["layout", "layout"]


def test_closed_set_rows_bring_their_options_only_when_a_rule_needs_them(tmp_path):
    closed_row = {"Open-ended Verifiable Question": CLOSED.question, "Ground-True Answer": CLOSED.reference,
                  "question": "Which drug reverses heparin?", "options": HEPARIN_OPTIONS, "answer_idx": "B",
                  "data_type": "medical_closed_set"}  # fmt: skip
    data = write_problems(tmp_path / "problems.json", 5, [closed_row])
    args = ScriptArguments(dataset_name=data)
    for options in (False, True):
        train, held_out, _ = load_problems(args, 3, closed_set_options=options)
        (read,) = [p for p in train + held_out if p.question == CLOSED.question]
        assert (read.options, read.answer_idx) == ((HEPARIN_OPTIONS, "B") if options else (None, None))
    broken = {**closed_row, "options": {"A": "Vitamin K"}}  # its answer_idx is no option
    data = write_problems(tmp_path / "broken.json", 5, [broken])
    load_problems(ScriptArguments(dataset_name=data), 3)  # the paper's mode never reads them
    with pytest.raises(InputError, match=r"broken.json: row 5 is a medical_closed_set problem without"):
        load_problems(ScriptArguments(dataset_name=data), 3, closed_set_options=True)


@pytest.mark.parametrize(
    "flags, culprit",
    [
        (["--reward_mode", "hybrid", "--reward_model_path", None], "--reward_model_path is required"),
        (["--reward_mode", "rule"], "--reward_mode rule asks no verifier: drop --reward_model_path"),
        (["--reward_url", "http://127.0.0.1:9"], "--reward_url http://127.0.0.1:9 and --reward_model_path"),
        (["--verifier_threshold", "1.5"], "--verifier_threshold is a probability"),
        (["--reward_url", "http://127.0.0.1:9", "--reward_model_path", None, "--verifier_template", "t.txt"],
         "--verifier_template with --reward_url"),
        (["--reward_mode", "sometimes"], "--reward_mode"),
    ],
)  # fmt: skip
def test_reward_flags_that_cannot_work_stop_in_one_line(tiny_models, tmp_path, flags, culprit):
    argv = rl_flags(tiny_models, write_problems(tmp_path / "p.json"), str(tmp_path / "out"))
    for name, value in zip(flags[::2], flags[1::2]):
        if name in argv:
            del argv[argv.index(name) : argv.index(name) + 2]
        argv += [name, value] if value is not None else []
    result = run_script("RL_stage2.py", argv)
    lines = result.stderr.strip().splitlines()
    assert result.returncode in (1, 2) and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert culprit in lines[0] and not os.path.exists(tmp_path / "out")


def rl_data_with_closed_set_rows(path):
    """The taught problems, each also as a closed-set row (its answer and two others as options): the taught policy
    writes the layout for these questions often enough that every source decides some rewards."""
    answers = [answer for _, answer in PROBLEMS]
    closed = []
    for index, (question, answer) in enumerate(PROBLEMS):
        options = dict(zip("ABC", [answers[index - 1], answer, answers[index - 2]]))
        closed.append({"Open-ended Verifiable Question": question, "Ground-True Answer": f"B. {answer}",
                       "question": question, "options": options, "answer_idx": "B",
                       "data_type": "medical_closed_set"})  # fmt: skip
    return write_problems(path, 10, closed)


@pytest.mark.usefixtures("one_thread_fresh_accelerate")
def test_ppo_logs_how_many_rewards_each_source_decided(tiny_models, taught_policy, tmp_path, monkeypatch):
    calls = record_calls(monkeypatch, RLReward, "__call__")
    out = tmp_path / "hybrid"
    argv = rl_flags(tiny_models, rl_data_with_closed_set_rows(tmp_path / "p.json"), str(out), total_episodes=12,
                    num_ppo_epochs=1, response_length=24, save_strategy="no", eval_strategy="no",
                    model_name_or_path=taught_policy, reward_mode="hybrid")  # fmt: skip
    result = run_script("RL_stage2.py", argv)
    assert result.returncode == 0, result.stderr
    log = [json.loads(line) for line in open(out / "rl_log.jsonl")]
    training_calls = calls[1:-1]  # the held-out evaluations come first and last
    assert len(log) == len(training_calls) == 3
    for record, (_, responses, problems) in zip(log, training_calls):
        expected = Counter(reward_sources("hybrid", responses, problems))
        assert {source: record[f"reward/from_{source}"] for source in ("verifier", "rule", "layout")} == {
            source: expected[source] for source in ("verifier", "rule", "layout")
        }
        assert sum(record[f"reward/from_{s}"] for s in ("verifier", "rule", "layout")) == 4  # episodes per update
    assert sum(record["reward/from_rule"] for record in log) > 0  # the closed-set rows were answered and ruled on
    # the paper's mode logs no counts: its log is what it was
    out = tmp_path / "verifier"
    argv[argv.index(str(tmp_path / "hybrid"))] = str(out)
    del argv[argv.index("--reward_mode") : argv.index("--reward_mode") + 2]
    assert run_script("RL_stage2.py", argv).returncode == 0
    assert not any(key.startswith("reward/") for line in open(out / "rl_log.jsonl") for key in json.loads(line))


@pytest.mark.usefixtures("one_thread_fresh_accelerate")
def test_grpo_in_rule_mode_logs_the_rule_reward_and_the_shares(tiny_models, taught_policy, tmp_path):
    out = tmp_path / "rule"
    argv = rl_flags(tiny_models, rl_data_with_closed_set_rows(tmp_path / "p.json"), str(out), total_episodes=12,
                    num_ppo_epochs=1, response_length=32, temperature=0.7, save_strategy="no", eval_strategy="no",
                    gradient_accumulation_steps=3, model_name_or_path=taught_policy, reward_mode="rule",
                    rl_algorithm="grpo", reward_model_path=None, value_model_path=None)  # fmt: skip
    result = run_script("RL_stage2.py", argv)
    assert result.returncode == 0, result.stderr
    log = json.load(open(out / "rl_trl_log.json"))
    assert len(log) == 2
    for entry in log:
        assert entry["rewards/from_verifier/mean"] == 0.0  # no verifier in rule mode
        shares = entry["rewards/from_rule/mean"] + entry["rewards/from_layout/mean"]
        assert shares == pytest.approx(1.0) and entry["rewards/from_layout/mean"] == pytest.approx(
            1 - entry["rewards/format_ok/mean"]
        )
        # a well-formed answer earns 0.1 or 1.0 from the rule, a broken one 0.0
        well_formed = entry["rewards/format_ok/mean"]
        assert 0.1 * well_formed - 1e-6 <= entry["rewards/rule/mean"] <= well_formed + 1e-6
    assert open(out / "rl_curves.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_hybrid_makes_as_many_verifier_passes_as_the_paper_would_on_several_processes(verifier_tokenizer, monkeypatch):
    """Under ZeRO-3 each verifier pass gathers the sharded weights on every process: a process that asks about fewer
    rows than another must make up the passes, or the collective calls no longer pair up."""
    calls = {}
    for several in (False, True):
        monkeypatch.setattr(reward_module, "sharded", lambda several=several: several)
        verifier = table_verifier(verifier_tokenizer, batch_size=2)
        passes = record_calls(monkeypatch, verifier.model, "forward")
        RLReward("hybrid", PAPER_REWARD, verifier)([row[2] for row in TABLE], [row[1] for row in TABLE])
        calls[several] = len(passes)
    # (a verifier without a pad id in its config takes one row a pass) 3 rows asked: 3 passes; on several processes
    # as many as the whole table would take: 9
    assert calls == {False: 3, True: 9} and verifier.forward_passes(len(TABLE)) == 9


def test_help_says_which_algorithms_each_reward_flag_applies_to(capsys):
    import dataclasses

    from huatuo_o1.rl.config import PPOConfig

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    helps = {field.name: field.metadata.get("help", "") for field in dataclasses.fields(PPOConfig)}
    for flag in ("reward_mode", "reward_url", "reward_timeout", "reward_retries", "verifier_threshold",
                 "correct_reward", "incorrect_reward", "malformed_reward"):  # fmt: skip
        assert helps[flag].startswith("PPO, GRPO, RLOO") and " ".join(helps[flag].split()[:8]) in text, flag
