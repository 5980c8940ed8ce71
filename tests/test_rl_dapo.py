"""DAPO's knobs (--loss_agg, --cliprange_high, --overlong_penalty_len, --dynamic_sampling) against values worked out
by hand, each off by default, and wired into PPO, GRPO and RLOO."""

import json
import math
import os
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from huatuo_o1.records import InputError
from huatuo_o1.rl import dynamic_sampling
from huatuo_o1.rl.config import check_batch_sizes, parse_args
from huatuo_o1.rl.dynamic_sampling import (
    equal_reward_groups,
    join_rows,
    refill_indices,
    take_rows,
    with_dynamic_sampling,
)
from huatuo_o1.rl.ppo_core import aggregate_loss, overlong_penalty, policy_loss, rollout_targets, value_loss
from huatuo_o1.rl.trl_algorithms import dapo_arguments, overlong_reward_function
from tests.rl_helpers import rl_flags, write_problems
from tests.scripts import run_ok

T, F = True, False
# Per-token losses of three responses of uneven length: 3 tokens, 1 token, none (a pad sampled first).
LOSSES = torch.tensor([[1.0, 2.0, 3.0, 50.0], [12.0, 50.0, 50.0, 50.0], [50.0, 50.0, 50.0, 50.0]])
MASK = torch.tensor([[T, T, T, F], [T, F, F, F], [F, F, F, F]])


def close(value, expected):
    assert value.item() == pytest.approx(expected, abs=1e-5)


# ---- loss aggregation -------------------------------------------------------------------------------------------
def test_token_mean_is_one_mean_over_every_counted_token():
    close(aggregate_loss(LOSSES, MASK, "token_mean"), (1 + 2 + 3 + 12) / 4)  # the 3-token response weighs 3x


def test_seq_mean_token_mean_averages_each_response_first():
    # (1 + 2 + 3) / 3 = 2; 12 / 1 = 12; the empty response counts 0 (as trl's "grpo" loss)
    close(aggregate_loss(LOSSES, MASK, "seq_mean_token_mean"), (2 + 12 + 0) / 3)
    close(aggregate_loss(LOSSES[:2], MASK[:2], "seq_mean_token_mean"), (2 + 12) / 2)


def test_seq_mean_token_sum_norm_divides_each_sum_by_the_maximum_length():
    # sums 6, 12, 0, each / 8 (the maximum response length, not the tensor's 4 columns), then the mean
    close(aggregate_loss(LOSSES, MASK, "seq_mean_token_sum_norm", norm_length=8), (6 / 8 + 12 / 8 + 0) / 3)
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        aggregate_loss(LOSSES, MASK, "sum")


def test_policy_and_value_losses_use_the_aggregation():
    old = torch.zeros(3, 4)  # ratio 1: the policy loss is the aggregation of -A
    for mode, expected in (("token_mean", -4.5), ("seq_mean_token_mean", -14 / 3), ("seq_mean_token_sum_norm", -0.75)):
        loss, clip_fraction, _ = policy_loss(old, old, LOSSES, MASK, 0.2, loss_agg=mode, norm_length=8)
        close(loss, expected)
        close(clip_fraction, 0.0)
    # value loss: values 0 and returns sqrt(LOSSES), so the squared errors are LOSSES; halved
    returns = LOSSES.sqrt()
    for mode, expected in (
        ("token_mean", 0.5 * 4.5),
        ("seq_mean_token_mean", 0.5 * 14 / 3),
        ("seq_mean_token_sum_norm", 0.5 * 0.75),
    ):
        loss, _ = value_loss(old, old, returns, MASK, 0.2, loss_agg=mode, norm_length=8)
        close(loss, expected)


def test_token_mean_default_is_bitwise_the_plain_masked_mean():
    torch.manual_seed(0)
    new, old, advantages = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    default = policy_loss(new, old, advantages, MASK, 0.2)
    explicit = policy_loss(new, old, advantages, MASK, 0.2, cliprange_high=0.2, loss_agg="token_mean", norm_length=4)
    assert all(torch.equal(a, b) for a, b in zip(default, explicit))
    ratio = torch.exp(new - old)
    by_hand = torch.max(-advantages * ratio, -advantages * ratio.clamp(0.8, 1.2))[MASK].mean()
    torch.testing.assert_close(default[0], by_hand)


# ---- clip-higher ------------------------------------------------------------------------------------------------
RATIOS = torch.tensor([[1.5, 1.25, 0.5, 0.5, 1.5]])
ADVANTAGES = torch.tensor([[1.0, 1.0, -1.0, 1.0, -1.0]])


def test_clip_higher_raises_only_the_upper_bound():
    new, old, mask = RATIOS.log(), torch.zeros(1, 5), torch.ones(1, 5, dtype=torch.bool)
    loss, clip_fraction, _ = policy_loss(new, old, ADVANTAGES, mask, cliprange=0.2, cliprange_high=0.28)
    # per token max(-A r, -A clip(r, 0.8, 1.28)):
    #   r 1.5, A +1: max(-1.5, -1.28) = -1.28 (clipped above at 1.28, not 1.2)
    #   r 1.25, A +1: -1.25 (inside [0.8, 1.28]; symmetric clipping would give -1.2)
    #   r 0.5, A -1: max(0.5, 0.8) = 0.8 (clipped below at 0.8, as before)
    #   r 0.5, A +1: max(-0.5, -0.8) = -0.5; r 1.5, A -1: max(1.5, 1.28) = 1.5 (the pessimistic side: unclipped)
    close(loss, (-1.28 - 1.25 + 0.8 - 0.5 + 1.5) / 5)
    close(clip_fraction, 2 / 5)
    symmetric, symmetric_fraction, _ = policy_loss(new, old, ADVANTAGES, mask, cliprange=0.2)
    close(symmetric, (-1.2 - 1.2 + 0.8 - 0.5 + 1.5) / 5)
    close(symmetric_fraction, 3 / 5)
    # a lower cliprange_high than cliprange clips the upper side harder: 1.1
    tighter, _, _ = policy_loss(new, old, ADVANTAGES, mask, cliprange=0.2, cliprange_high=0.1)
    close(tighter, (-1.1 - 1.1 + 0.8 - 0.5 + 1.5) / 5)


# ---- the overlong penalty ---------------------------------------------------------------------------------------
def test_overlong_penalty_by_hand():
    # max 10, L 4: free up to 6 tokens, then (6 - |y|) / 4 down to -1 at 10
    penalties = overlong_penalty(torch.tensor([3, 6, 7, 9, 10]), max_length=10, penalty_length=4)
    assert penalties.dtype == torch.float32
    assert penalties.tolist() == [0.0, 0.0, -0.25, -0.75, -1.0]
    trl_callable = overlong_reward_function(10, 4)  # trl passes the completion ids, stop token included
    assert trl_callable(prompts=None, completions=None, completion_ids=[[7] * 6, [7] * 7, [7] * 10]) == [0, -0.25, -1]


def test_overlong_penalty_counts_the_stop_token_and_is_added_to_the_score():
    def targets(**kwargs):
        return rollout_targets(
            torch.tensor([[5, 6, 2, 8, 2, 9], [5, 6, 7, 8, 9, 5]]),  # stop token at index 2; no stop token
            torch.tensor([1.0, 1.0]),
            torch.zeros(2, 6),
            torch.zeros(2, 6),
            torch.zeros(2, 6),
            stop_token_id=2,
            pad_token_id=0,
            eos_token_id=2,
            kl_coef=0.1,
            gamma=1.0,
            lam=1.0,
            **kwargs,
        )

    out = targets(overlong_penalty_len=4, response_length=6)
    # free up to 6 - 4 = 2 tokens: row 0 has 3 (t0 t1 <eos>): (2 - 3) / 4 = -0.25; row 1 fills all 6: -1
    assert out.scores.tolist() == [0.75, 0.0]
    assert out.rewards[0, 3].item() == 0.75 and out.rewards[1, 5].item() == 0.0  # where the score lands
    plain, off = targets(), targets(overlong_penalty_len=0, response_length=6)
    assert plain.scores.tolist() == [1.0, 1.0] and torch.equal(off.advantages, plain.advantages)


# ---- dynamic sampling: the group filter -------------------------------------------------------------------------
def test_equal_reward_groups():
    scores = torch.tensor([1.0, 1.0, 0.1, 1.0, 0.0, 0.0, 0.1, 0.1])
    assert equal_reward_groups(scores, 2).tolist() == [True, False, True, True]
    assert equal_reward_groups(scores, 4).tolist() == [False, False]
    assert equal_reward_groups(torch.tensor([0.1, 0.1, 0.1, 0.1]), 4).tolist() == [True]


def test_rows_are_taken_and_joined_with_their_padding():
    first = {"prompt_ids": torch.tensor([[0, 4], [3, 4]]), "completion_ids": torch.tensor([[7, 0, 0], [7, 7, 7]]),
             "completion_mask": torch.tensor([[1, 0, 0], [1, 1, 1]]), "advantages": torch.tensor([0.5, -0.5]),
             "num_items_in_batch": torch.tensor(4)}  # fmt: skip
    second = {"prompt_ids": torch.tensor([[3, 3, 4]]), "completion_ids": torch.tensor([[8]]),
              "completion_mask": torch.tensor([[1]]), "advantages": torch.tensor([1.5]),
              "num_items_in_batch": torch.tensor(1)}  # fmt: skip
    joined = join_rows([take_rows(first, torch.tensor([False, True])), second], pad_token_id=0)
    assert joined["prompt_ids"].tolist() == [[0, 3, 4], [3, 3, 4]]  # prompts padded on the left
    assert joined["completion_ids"].tolist() == [[7, 7, 7], [8, 0, 0]]  # completions on the right
    assert joined["completion_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert joined["advantages"].tolist() == [-0.5, 1.5] and joined["num_items_in_batch"].item() == 4


def test_refill_draws_are_seeded_by_step_and_round():
    draw = refill_indices(10, 4, seed=1, step=3, round_index=1)
    assert draw == refill_indices(10, 4, seed=1, step=3, round_index=1) and len(set(draw)) == 4
    assert draw != refill_indices(10, 4, seed=1, step=3, round_index=2)
    assert sorted(refill_indices(3, 7, seed=1, step=0, round_index=1)[:3]) == [0, 1, 2]  # cycles past the items


class ScriptedTrainer:
    """Stands in for trl's trainer (one process): each sampling round scores its rows with the next scripted scores;
    a row's advantage names its round and row (round * 100 + row)."""

    def __init__(self, scripted_scores):
        self.scripted_scores, self.prompts_seen = list(scripted_scores), []
        self.model = SimpleNamespace(training=True)
        gather = lambda tensor: tensor  # noqa: E731 (one process)
        self.accelerator = SimpleNamespace(device="cpu", process_index=0, num_processes=1, gather=gather)
        self.num_generations, self.reward_weights = 2, torch.tensor([1.0, 0.0])
        self.processing_class = SimpleNamespace(pad_token_id=0)
        self.train_dataset = [{"prompt": f"question {i}"} for i in range(10)]
        self.args, self.state = SimpleNamespace(seed=1), SimpleNamespace(global_step=5)
        self._metrics = {"train": defaultdict(list)}

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        return torch.tensor([[score, 0.5] for score in self.scripted_scores.pop(0)])  # (format rate: weight 0)

    def _generate_and_score_completions(self, inputs):
        round_number = len(self.prompts_seen)
        self.prompts_seen.append([row["prompt"] for row in inputs])
        self._calculate_rewards(inputs, None, None, None)
        rows, width = len(inputs), round_number + 1  # each round's completions one token wider
        return {
            "prompt_ids": torch.ones(rows, 2, dtype=torch.long),
            "completion_ids": torch.full((rows, width), 7),
            "completion_mask": torch.ones(rows, width, dtype=torch.long),
            "advantages": torch.arange(rows) + 100.0 * round_number,
            "num_items_in_batch": torch.tensor(rows * width),
        }


def test_equal_groups_are_dropped_and_the_batch_refilled():
    trainer = with_dynamic_sampling(ScriptedTrainer)(
        [[1.0, 1.0, 0.1, 1.0, 0.0, 0.0], [0.1, 0.1, 1.0, 0.0, 0.0, 1.0]]  # round 1 keeps group 1; round 2 groups 1, 2
    )
    first_prompts = [{"prompt": p} for p in ("a", "a", "b", "b", "c", "c")]
    batch = trainer._generate_and_score_completions(first_prompts)
    # kept, in order: round 0's group 1 (rows 2, 3), round 1's groups 1 and 2 (rows 2-5)
    assert batch["advantages"].tolist() == [2.0, 3.0, 102.0, 103.0, 104.0, 105.0]
    assert batch["completion_mask"].tolist() == [[1, 0], [1, 0]] + [[1, 1]] * 4  # round 0's rows padded
    assert batch["num_items_in_batch"].item() == 2 + 8  # the tokens of the kept rows, recounted
    # the refill: 3 newly drawn prompts (seeded by the step and the round), each twice, in group order
    drawn = refill_indices(10, 3, seed=1, step=5, round_index=1)
    assert trainer.prompts_seen[1] == [f"question {i}" for i in drawn for _ in range(2)]
    metrics = trainer._metrics["train"]
    assert metrics["dynamic_sampling/dropped_share"] == [3 / 6]  # 2 of round 0's groups, 1 of round 1's
    assert metrics["dynamic_sampling/rounds"] == [2.0] and metrics["dynamic_sampling/completed_with_dropped"] == [0]
    assert trainer.sampling_totals == {"groups_drawn": 6, "groups_dropped": 3, "rounds": 2, "updates": 1,
                                       "updates_completed_with_dropped": 0}  # fmt: skip
    assert dynamic_sampling.sampling_summary(trainer.sampling_totals)["dropped_share"] == 0.5


def test_a_batch_that_stays_equal_is_completed_with_dropped_groups():
    rounds = dynamic_sampling.MAX_SAMPLING_ROUNDS
    trainer = with_dynamic_sampling(ScriptedTrainer)([[1.0, 0.0, 1.0, 1.0]] + [[0.1] * 4] * (rounds - 1))
    batch = trainer._generate_and_score_completions([{"prompt": "a"}] * 4)
    assert len(trainer.prompts_seen) == rounds  # then it stops sampling
    assert batch["advantages"].tolist() == [0.0, 1.0, 2.0, 3.0]  # the kept group, then the first dropped one
    assert trainer._metrics["train"]["dynamic_sampling/completed_with_dropped"] == [0.5]
    assert trainer.sampling_totals["updates_completed_with_dropped"] == 1


def test_evaluation_is_not_filtered():
    trainer = with_dynamic_sampling(ScriptedTrainer)([[1.0, 1.0]])
    trainer.model.training = False
    assert trainer._generate_and_score_completions([{"prompt": "a"}] * 2)["advantages"].tolist() == [0.0, 1.0]
    assert not trainer._metrics["train"]


# ---- flags: off by default, mapped onto trl, refused where they cannot apply -----------------------------------
def test_every_knob_is_off_by_default(tmp_path):
    from dataclasses import fields

    from trl import GRPOConfig, RLOOConfig

    for algorithm in ("ppo", "grpo", "rloo"):
        config = parse_args(["--rl_algorithm", algorithm, "--output_dir", str(tmp_path)])[1]
        assert (config.cliprange_high, config.overlong_penalty_len, config.dynamic_sampling) == (None, 0, False)
        assert config.loss_agg == (None if algorithm == "rloo" else "token_mean")
    # what we pass trl by default is what trl does by default
    grpo = parse_args(["--rl_algorithm", "grpo", "--output_dir", str(tmp_path)])[1]
    assert dapo_arguments(grpo) == {"epsilon_high": None, "loss_type": "dapo"}
    grpo_defaults, rloo_defaults = ({f.name: f.default for f in fields(c)} for c in (GRPOConfig, RLOOConfig))
    assert (grpo_defaults["loss_type"], grpo_defaults["epsilon_high"], rloo_defaults["epsilon_high"]) == (
        "dapo",
        None,
        None,
    )
    knobs = parse_args(["--rl_algorithm", "grpo", "--output_dir", "o", "--loss_agg", "seq_mean_token_sum_norm",
                        "--cliprange_high", "0.28"])[1]  # fmt: skip
    assert dapo_arguments(knobs) == {"epsilon_high": 0.28, "loss_type": "dr_grpo"}


def test_help_says_which_algorithms_each_knob_applies_to(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, applies in (
        ("--loss_agg", "PPO and GRPO"),
        ("--cliprange_high", "PPO, GRPO, RLOO"),
        ("--overlong_penalty_len", "PPO, GRPO, RLOO"),
        ("--dynamic_sampling", "GRPO, RLOO"),
    ):
        entry = text.split(flag.replace("_", "-"))[-1].split(" --")[0]  # its help, after its alias --a-b
        assert applies in entry, flag
    assert "its stop token counted" in text and "the original's" in text.split("--loss-agg")[-1].split(" --")[0]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--rl_algorithm", "rloo", "--loss_agg", "token_mean"], r"--loss_agg token_mean: applies to ppo and grpo"),
        (["--dynamic_sampling", "True"], r"--dynamic_sampling: applies to grpo and rloo"),
        (["--overlong_penalty_len", "60", "--response_length", "50"], r"at most --response_length 50"),
        (["--cliprange_high", "-0.1"], r"--cliprange_high must be 0 or more"),
    ],
)
def test_a_knob_an_algorithm_cannot_honour_is_refused_in_one_line(flags, message):
    with pytest.raises(InputError, match=message):
        parse_args(["--output_dir", "o", *flags])


def test_dynamic_sampling_needs_whole_groups_on_each_process():
    flags = ["--rl_algorithm", "grpo", "--dynamic_sampling", "--num_generations", "4"]
    config = parse_args(["--output_dir", "o", *flags, "--per_device_train_batch_size", "2"])[1]
    assert config.dynamic_sampling is True  # the bare flag turns it on
    config.dynamic_sampling = False
    check_batch_sizes(config, world_size=2)  # 4 responses per step in all: fine without dynamic sampling
    config.dynamic_sampling = True
    with pytest.raises(ValueError, match=r"= 2\) must be a multiple of --num_generations \(4\)"):
        check_batch_sizes(config, world_size=2)


# ---- end to end on the tiny models ------------------------------------------------------------------------------
@pytest.mark.usefixtures("one_thread_fresh_accelerate")
def test_grpo_with_every_knob(tiny_models, taught_policy, tmp_path, monkeypatch):
    import trl

    seen = {}
    real_train = trl.GRPOTrainer.train

    def train(self, *args, **kwargs):
        seen.update(type=type(self).__name__, loss_type=self.loss_type, high=self.epsilon_high,
                    rewards=list(self.reward_func_names), weights=self.reward_weights.tolist())  # fmt: skip
        return real_train(self, *args, **kwargs)

    monkeypatch.setattr(trl.GRPOTrainer, "train", train)
    data, out = write_problems(tmp_path / "problems.json", 11), str(tmp_path / "grpo")
    argv = rl_flags(tiny_models, data, out, model_name_or_path=taught_policy, rl_algorithm="grpo", total_episodes=12,
                    num_ppo_epochs=1, save_strategy="no", eval_strategy="no", response_length=32, temperature=0.7,
                    gradient_accumulation_steps=3, loss_agg="seq_mean_token_sum_norm", cliprange_high=0.28,
                    overlong_penalty_len=8, dynamic_sampling=True)  # fmt: skip
    run_ok("RL_stage2.py", argv)
    assert seen == {"type": "DynamicSamplingGRPOTrainer", "loss_type": "dr_grpo", "high": 0.28,
                    "rewards": ["verifier", "format_ok", "overlong"], "weights": [1.0, 0.0, 1.0]}  # fmt: skip
    summary = json.load(open(os.path.join(out, "rl_summary.json")))
    log = json.load(open(os.path.join(out, "rl_trl_log.json")))
    totals = summary["dynamic_sampling"]
    assert totals["updates"] == len(log) == 2 and totals["groups_drawn"] >= 2 * 3  # 3 groups per update at least
    assert totals["dropped_share"] == round(totals["groups_dropped"] / totals["groups_drawn"], 4)
    for entry in log:
        assert 0.0 <= entry["dynamic_sampling/dropped_share"] <= 1.0 and entry["dynamic_sampling/rounds"] >= 1
        assert -1.0 <= entry["rewards/overlong/mean"] <= 0.0
    assert math.isclose(
        sum(e["dynamic_sampling/rounds"] for e in log), totals["rounds"]
    )  # one generation per optimizer step


@pytest.mark.usefixtures("one_thread_fresh_accelerate")
def test_ppo_overlong_penalty_follows_each_sampled_length(tiny_models, taught_policy, tmp_path):
    from tests.rl_helpers import build_ppo_trainer

    argv = rl_flags(tiny_models, "unused.json", str(tmp_path / "ppo"), model_name_or_path=taught_policy,
                    temperature=0.7, response_length=32, overlong_penalty_len=16, cliprange_high=0.28,
                    loss_agg="seq_mean_token_mean", total_episodes=8)  # fmt: skip
    trainer = build_ppo_trainer(argv)
    torch.manual_seed(1)
    data = trainer.rollout(trainer.batch_for_update(0))
    stop = trainer.stop_token_id
    for row, sampled in enumerate(data.sampled.tolist()):
        length = len(sampled)  # up to the stop token, which counts (or up to a pad the policy sampled, which ends it)
        for position, token in enumerate(sampled):
            if token in (stop, trainer.pad_id):
                length = position + (token == stop)
                break
        penalty = min(0.0, (32 - 16 - length) / 16)
        expected = data.verifier_scores[row].float().item() + penalty
        assert data.targets.scores[row].item() == pytest.approx(expected, abs=1e-6)
    assert len(set(data.targets.scores.tolist())) > 1  # (seed 1: 29 tokens, -0.8125, beside 32 tokens, -1)
    figures = trainer.optimise(data)
    assert torch.isfinite(figures["pg_loss"]) and torch.isfinite(figures["vf_loss"])
