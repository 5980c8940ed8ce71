"""The learning signal itself: PPO raises a reward the test controls, and only when that reward asks for it.

A tiny random policy answers with 8 sampled tokens; the reward is 1.0 when the answer contains a
digit, else 0.0 (about a fifth of random answers do). Our PPOTrainer, given this rule in place of
the verifier, must raise the share of answers with a digit; the same run with a constant reward (no
signal: every advantage is noise) must not. A sign error (advantages, KL, loss), a reward placed
where GAE never carries it, or a value head that swamps the score would fail here.
"""

import json
import os
from dataclasses import dataclass

import pytest
import torch
from accelerate.utils import set_seed

from huatuo_o1.rl.config import check_batch_sizes, parse_args
from huatuo_o1.rl.loading import Problem, load_models, prompt_ids
from huatuo_o1.rl.ppo_trainer import PPOTrainer
from tests.rl_helpers import rl_flags
from tests.scripts import reset_accelerate

QUESTIONS = [
    "What is the antidote for acetaminophen overdose?",
    "Which vitamin deficiency causes scurvy?",
    "Which electrolyte disturbance gives peaked T waves?",
    "What organism causes most pneumonia?",
]
UPDATES, EPISODES = 20, 16

pytestmark = pytest.mark.usefixtures("one_thread_fresh_accelerate")  # one thread: the same samples anywhere


@dataclass
class Scored:
    rewards: torch.Tensor
    well_formed: torch.Tensor


class RuleReward:
    """1.0 for an answer with a digit (when `wanted`), a constant 0.5 otherwise (no signal)."""

    def __init__(self, wanted=True):
        self.wanted = wanted
        self.digit_shares = []  # per call: share of answers with a digit, whatever the reward

    def __call__(self, responses, references):
        has_digit = torch.tensor([any(c.isdigit() for c in r) for r in responses], dtype=torch.float)
        self.digit_shares.append(has_digit.mean().item())
        rewards = has_digit if self.wanted else torch.full_like(has_digit, 0.5)
        return Scored(rewards, torch.ones(len(responses), dtype=torch.bool))


def train_with(rule, tiny_models, out, seed):
    """UPDATES PPO updates of EPISODES answers, `rule` as the reward; the share of answers with a digit per update."""
    reset_accelerate()
    argv = rl_flags(
        tiny_models, "unused", str(out), response_length=8, temperature=1.0, local_rollout_forward_batch_size=16,
        per_device_train_batch_size=8, gradient_accumulation_steps=2, num_ppo_epochs=2,
        total_episodes=UPDATES * EPISODES, learning_rate=1e-2, kl_coef=0.05, seed=seed, eval_strategy="no",
        save_strategy="no",
    )  # fmt: skip
    _, config, model_args = parse_args(argv)
    sizes = check_batch_sizes(config, world_size=1)
    set_seed(seed)
    models = load_models(model_args, config)
    train = [Problem(q, "", prompt_ids(models.tokenizer, q)) for q in QUESTIONS]
    trainer = PPOTrainer(config=config, sizes=sizes, models=models, reward=rule, train_items=train, eval_items=[])
    trainer.train()
    with open(os.path.join(out, "rl_log.jsonl")) as f:
        log = [json.loads(line) for line in f]
    assert [r["update"] for r in log] == list(range(1, UPDATES + 1))
    expected = rule.digit_shares if rule.wanted else [0.5] * UPDATES
    assert [r["objective/score"] for r in log] == pytest.approx(
        expected, abs=1e-6
    )  # the rule's reward, once per update
    return rule.digit_shares


def first_and_last(shares):
    n = max(1, len(shares) // 5)  # first and last fifth of the updates
    return sum(shares[:n]) / n, sum(shares[-n:]) / n


def test_ppo_raises_a_reward_it_is_given(tiny_models, tmp_path):
    # Measured over seeds 0-9 (20 updates of 16 answers, one thread): the share of answers with a digit went from
    # 0.20-0.31 (first fifth of the updates) to 0.70-0.94 (last fifth), a gain of 0.44-0.69; with the constant
    # reward it moved by -0.14..+0.16 and ended 0.42-0.75 below the rewarded run. Thresholds 0.25: margin >= 0.17.
    learned = train_with(RuleReward(wanted=True), tiny_models, tmp_path / "digit", seed=0)
    control = train_with(RuleReward(wanted=False), tiny_models, tmp_path / "constant", seed=0)
    first, last = first_and_last(learned)
    _, control_last = first_and_last(control)
    assert last - first >= 0.25, learned
    assert last - control_last >= 0.25, (learned, control)
