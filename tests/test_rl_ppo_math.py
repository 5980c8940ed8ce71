"""PPO arithmetic against values computed by hand (small tensors, coefficients chosen to be checkable).

The placement is the original trainer's (SPEC "RL: where the score lands"): s = first pad of the
cut response minus one; log-probs count at <= s, values at <= s + 1; the score lands at s + 1 when
that is inside the tensor, else at s. Token ids below: stop = eos = 2, pad = 0, response length 6.
"""

import math

import pytest
import torch

from huatuo_o1.rl.ppo_core import (
    gae_advantages,
    kl_terms,
    masked_whiten,
    policy_loss,
    position_masks,
    rollout_targets,
    score_indices,
    sequence_ends,
    truncate_after_stop,
    value_loss,
)

STOP = EOS = 2
PAD = 0
T, F = True, False

# name: (sampled response, cut response, s, policy mask, value mask, score index; stop_token placement's score index)
CASES = {
    "no stop token": ([5, 6, 7, 8, 9, 5], [5, 6, 7, 8, 9, 5], 5, [T] * 6, [T] * 6, 5, 5),
    "stop token first": ([2, 7, 7, 7, 7, 7], [2, 0, 0, 0, 0, 0], 0, [T, F, F, F, F, F], [T, T, F, F, F, F], 1, 0),
    "stop token in the middle": (
        [5, 6, 2, 8, 2, 9],
        [5, 6, 2, 0, 0, 0],
        2,
        [T, T, T, F, F, F],
        [T, T, T, T, F, F],
        3,
        2,
    ),
    "stop token last": ([5, 6, 7, 8, 9, 2], [5, 6, 7, 8, 9, 2], 5, [T] * 6, [T] * 6, 5, 5),
    "pad sampled before the stop token": (
        [5, 0, 6, 2, 7, 7],
        [5, 0, 6, 2, 0, 0],
        0,
        [T, F, F, F, F, F],
        [T, T, F, F, F, F],
        1,
        0,
    ),
    "pad sampled first": ([0, 5, 2, 7, 7, 7], [0, 5, 2, 0, 0, 0], -1, [F] * 6, [T, F, F, F, F, F], 0, 0),
}


def close(tensor, expected, atol=1e-6):
    torch.testing.assert_close(tensor, torch.tensor(expected, dtype=tensor.dtype), atol=atol, rtol=0)


def targets(responses, scores, logprobs, ref_logprobs, values, **kwargs):
    settings = dict(stop_token_id=STOP, pad_token_id=PAD, eos_token_id=EOS, kl_coef=0.1, gamma=1.0, lam=0.5)
    settings.update(kwargs)
    return rollout_targets(
        torch.tensor(responses),
        torch.tensor(scores),
        torch.tensor(logprobs),
        torch.tensor(ref_logprobs),
        torch.tensor(values),
        **settings,
    )


@pytest.mark.parametrize("name", list(CASES))
def test_cut_end_masks_and_score_position(name):
    sampled, cut, end, policy, value, score_at, score_at_stop_token = CASES[name]
    truncated = truncate_after_stop(torch.tensor([sampled]), STOP, PAD)
    assert truncated.tolist() == [cut]
    ends = sequence_ends(truncated, PAD)
    assert ends.tolist() == [end]
    policy_mask, value_mask = position_masks(ends, 6)
    assert policy_mask.tolist() == [policy] and value_mask.tolist() == [value]
    assert score_indices(ends, 6).tolist() == [score_at]
    # the stop_token placement: values stop where log-probs stop, the score lands on s
    policy_mask, value_mask = position_masks(ends, 6, "stop_token")
    assert policy_mask.tolist() == [policy] and value_mask.tolist() == [policy]
    assert score_indices(ends, 6, "stop_token").tolist() == [score_at_stop_token]


def test_stop_in_the_middle_score_lands_after_the_stop_token():
    # KL at position 0 only: log p - log p_ref = -1 - (-2) = 1 (positions after s = 2 are not counted)
    out = targets(
        [[5, 6, 2, 8, 2, 9]],
        [1.0],
        [[-1.0] * 6],
        [[-2.0, -1.0, -1.0, -3.0, -3.0, -3.0]],
        [[0.5, 0.5, 0.5, 0.2, 9.0, 9.0]],
    )
    close(out.kl, [[1.0, 0, 0, 0, 0, 0]])
    # reward -0.1 * 1 at 0, the score 1.0 at s + 1 = 3
    close(out.rewards, [[-0.1, 0.0, 0.0, 1.0, 0.0, 0.0]])
    # values count up to s + 1 = 3: V = [0.5, 0.5, 0.5, 0.2, 0, 0]
    close(out.values, [[0.5, 0.5, 0.5, 0.2, 0.0, 0.0]])
    # GAE, gamma 1, lam 0.5, from the end: A5 = A4 = 0; A3 = 1.0 + 0 - 0.2 = 0.8;
    # A2 = (0 + 0.2 - 0.5) + 0.5 * 0.8 = 0.1; A1 = (0 + 0.5 - 0.5) + 0.5 * 0.1 = 0.05;
    # A0 = (-0.1 + 0.5 - 0.5) + 0.5 * 0.05 = -0.075; returns = A + V
    close(out.returns, [[0.425, 0.55, 0.6, 1.0, 0.0, 0.0]])
    # advantages whitened over positions <= s = 2: [-0.075, 0.05, 0.1], mean 0.025, deviations
    # [-0.1, 0.025, 0.075], unbiased variance (0.01 + 0.000625 + 0.005625) / 2 = 0.008125
    std = math.sqrt(0.008125 + 1e-8)
    close(out.advantages, [[-0.1 / std, 0.025 / std, 0.075 / std, 0.0, 0.0, 0.0]], atol=1e-5)


def test_stop_token_placement_on_the_same_rollout():
    out = targets(
        [[5, 6, 2, 8, 2, 9]],
        [1.0],
        [[-1.0] * 6],
        [[-2.0, -1.0, -1.0, -3.0, -3.0, -3.0]],
        [[0.5, 0.5, 0.5, 0.2, 9.0, 9.0]],
        score_position="stop_token",
    )
    close(out.rewards, [[-0.1, 0.0, 1.0, 0.0, 0.0, 0.0]])
    close(out.values, [[0.5, 0.5, 0.5, 0.0, 0.0, 0.0]])
    # A2 = 1.0 + 0 - 0.5 = 0.5; A1 = (0 + 0.5 - 0.5) + 0.5 * 0.5 = 0.25; A0 = (-0.1 + 0.5 - 0.5) + 0.5 * 0.25 = 0.025
    close(out.returns, [[0.525, 0.75, 1.0, 0.0, 0.0, 0.0]])
    assert out.value_mask.tolist() == [[T, T, T, F, F, F]]


def test_stop_token_first_and_pad_before_stop_end_at_the_first_token():
    # both rows: s = 0. KL at 0: -1 - (-1.5) = 0.5 -> reward -0.05; score 0.1 at position 1
    out = targets(
        [[2, 7, 7, 7, 7, 7], [5, 0, 6, 2, 7, 7]],
        [0.1, 0.1],
        [[-1.0] * 6] * 2,
        [[-1.5] + [-9.0] * 5] * 2,
        [[0.3, 0.4, 5.0, 5.0, 5.0, 5.0]] * 2,
    )
    assert out.responses.tolist() == [[2, 0, 0, 0, 0, 0], [5, 0, 6, 2, 0, 0]]
    assert out.ends.tolist() == [0, 0] and out.has_eos.tolist() == [True, True]
    close(out.rewards, [[-0.05, 0.1, 0.0, 0.0, 0.0, 0.0]] * 2)
    # A1 = 0.1 + 0 - 0.4 = -0.3; A0 = (-0.05 + 0.4 - 0.3) + 0.5 * (-0.3) = -0.1; returns = A + V
    close(out.returns, [[0.2, 0.1, 0.0, 0.0, 0.0, 0.0]] * 2)
    # whitening over the two position-0 entries (both -0.1): zero variance -> 0
    close(out.advantages, [[0.0] * 6] * 2)


def test_pad_sampled_first_leaves_only_the_value_at_position_zero():
    out = targets([[0, 5, 2, 7, 7, 7]], [0.7], [[-1.0] * 6], [[-3.0] * 6], [[0.4, 8.0, 8.0, 8.0, 8.0, 8.0]])
    assert out.ends.tolist() == [-1] and out.policy_mask.sum().item() == 0
    close(out.rewards, [[0.7, 0.0, 0.0, 0.0, 0.0, 0.0]])  # no KL anywhere, the score at s + 1 = 0
    close(out.returns, [[0.7, 0.0, 0.0, 0.0, 0.0, 0.0]])  # A0 = 0.7 - 0.4 = 0.3, + V0
    close(out.advantages, [[0.0] * 6])


def test_score_at_the_last_position_and_missing_eos_penalty():
    # row 0 has no eos (penalised: 1.0 - 0.5), row 1 ends on the eos at the last position (not penalised)
    out = targets(
        [[5, 6, 7, 8, 9, 5], [5, 6, 7, 8, 9, 2]],
        [1.0, 1.0],
        [[-1.0] * 6] * 2,
        [[-1.0] * 6] * 2,
        [[0.5] * 6] * 2,
        missing_eos_penalty=0.5,
    )
    close(out.scores, [0.5, 1.0])
    assert out.has_eos.tolist() == [False, True]
    close(out.rewards, [[0.0] * 5 + [0.5], [0.0] * 5 + [1.0]])
    # row 0: A5 = 0.5 - 0.5 = 0, every delta 0. row 1: A5 = 1.0 - 0.5 = 0.5, then each earlier
    # A_t = (0 + 0.5 - 0.5) + 0.5 * A_{t+1}: 0.25, 0.125, 0.0625, 0.03125, 0.015625
    close(out.returns, [[0.5] * 6, [0.515625, 0.53125, 0.5625, 0.625, 0.75, 1.0]])


def test_missing_eos_penalty_is_subtracted_in_the_verifiers_dtype():
    # bf16: 0.1 is stored as 0.10009765625; minus 1.0 = -0.89990234375, which bf16 rounds to
    # -230/256 = -0.8984375 (its neighbours are 1/256 apart here)
    out = rollout_targets(
        torch.tensor([[5, 6, 7]]),
        torch.tensor([0.1], dtype=torch.bfloat16),
        torch.zeros(1, 3),
        torch.zeros(1, 3),
        torch.zeros(1, 3),
        stop_token_id=STOP,
        pad_token_id=PAD,
        eos_token_id=EOS,
        kl_coef=0.1,
        gamma=1.0,
        lam=0.5,
        missing_eos_penalty=1.0,
    )
    assert out.scores.dtype == torch.float32 and out.scores.tolist() == [-0.8984375]


def test_whiten_rewards_over_the_value_positions():
    out = targets(
        [[5, 6, 2, 8, 2, 9]],
        [1.0],
        [[-1.0] * 6],
        [[-2.0, -1.0, -1.0, -3.0, -3.0, -3.0]],
        [[0.5] * 6],
        whiten_rewards=True,
    )
    # rewards before: [-0.1, 0, 0, 1.0] on positions <= s + 1 = 3; mean 0.225; deviations
    # [-0.325, -0.225, -0.225, 0.775]; unbiased variance (0.105625 + 2 * 0.050625 + 0.600625) / 3
    std = math.sqrt(0.8075 / 3 + 1e-8)
    expected = [d / std + 0.225 for d in (-0.325, -0.225, -0.225, 0.775)] + [0.0, 0.0]  # the mean is kept
    close(out.rewards, [expected], atol=1e-5)


def test_padding_columns_do_not_change_the_targets():
    short = targets([[5, 6, 2, 8, 2, 9]], [1.0], [[-1.0] * 6], [[-2.0] * 6], [[0.5, 0.4, 0.3, 0.2, 0.1, 0.0]])
    wide = targets(
        [[5, 6, 2, 8, 2, 9, 0, 0]], [1.0], [[-1.0] * 8], [[-2.0] * 8], [[0.5, 0.4, 0.3, 0.2, 0.1, 0.0, 7.0, 7.0]]
    )
    for key in ("rewards", "values", "advantages", "returns"):
        torch.testing.assert_close(getattr(wide, key)[:, :6], getattr(short, key))
        assert getattr(wide, key)[:, 6:].abs().sum().item() == 0


def test_gae_on_four_tokens():
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.4, 0.3, 0.2]])
    advantages, returns = gae_advantages(rewards, values, gamma=1.0, lam=0.95)
    # A3 = 1 - 0.2 = 0.8; A2 = (0.2 - 0.3) + 0.95 * 0.8 = 0.66; A1 = -0.1 + 0.95 * 0.66 = 0.527;
    # A0 = -0.1 + 0.95 * 0.527 = 0.40065
    close(advantages, [[0.40065, 0.527, 0.66, 0.8]])
    close(returns, [[0.90065, 0.927, 0.96, 1.0]])


def test_gae_with_discount():
    advantages, _ = gae_advantages(torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 1.0]]), gamma=0.5, lam=0.5)
    # A1 = 2 - 1 = 1; A0 = (0 + 0.5 * 1 - 1) + 0.25 * 1 = -0.25
    close(advantages, [[-0.25, 1.0]])


def test_k3_estimator():
    penalty, kl = kl_terms(torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]]), "k3")
    # r = p_ref / p = 0.5: (r - 1) - log r = -0.5 + log 2
    close(penalty, [[-0.5 + math.log(2)]])
    close(kl, [[math.log(2)]])


def test_masked_whitening_ignores_padding():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[True, True, True, False]])
    whitened = masked_whiten(values, mask)
    # mean 2, unbiased variance ((1 + 0 + 1) / 2) = 1
    assert whitened[0, :3].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-4)
    assert masked_whiten(values, mask, shift_mean=False)[0, :3].tolist() == pytest.approx([1.0, 2.0, 3.0], abs=1e-4)


def test_policy_loss_counts_up_to_s_and_value_loss_up_to_s_plus_one():
    policy_mask, value_mask = position_masks(torch.tensor([2]), 6)  # stop token at 2
    old = torch.zeros(1, 6)
    # ratio 1 everywhere: the policy loss is -mean(A) over positions 0..2 (the 50s are never counted)
    loss, _, _ = policy_loss(old, old, torch.tensor([[1.0, 2.0, 3.0, 50.0, 50.0, 50.0]]), policy_mask, cliprange=0.2)
    assert loss.item() == pytest.approx(-(1.0 + 2.0 + 3.0) / 3)
    # values equal their old values (no clipping): 0.5 * mean of squared errors over positions 0..3
    new_values = torch.tensor([[0.0, 0.0, 0.0, 1.0, 100.0, 100.0]])
    loss, _ = value_loss(new_values, new_values, torch.zeros(1, 6), value_mask, cliprange_value=0.2)
    assert loss.item() == pytest.approx(0.5 * 1.0 / 4)


def test_policy_loss_clipping():
    old = torch.zeros(1, 4)
    new = torch.tensor([[math.log(1.5), math.log(1.5), math.log(0.5), 7.0]])
    advantages = torch.tensor([[1.0, -1.0, 1.0, 3.0]])
    mask = torch.tensor([[True, True, True, False]])
    loss, clip_fraction, approx_kl = policy_loss(new, old, advantages, mask, cliprange=0.2)
    # per token max(-A r, -A clip(r)): ratio 1.5, A=+1 -> max(-1.5, -1.2) = -1.2 (clipped);
    # ratio 1.5, A=-1 -> max(1.5, 1.2) = 1.5; ratio 0.5, A=+1 -> max(-0.5, -0.8) = -0.5
    assert loss.item() == pytest.approx((-1.2 + 1.5 - 0.5) / 3)
    assert clip_fraction.item() == pytest.approx(1 / 3)
    assert approx_kl.item() == pytest.approx(0.5 * (2 * math.log(1.5) ** 2 + math.log(0.5) ** 2) / 3)


def test_value_loss_clipping():
    old = torch.zeros(1, 3)
    new = torch.tensor([[0.5, 0.1, 4.0]])
    returns = torch.tensor([[1.0, 1.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    loss, clip_fraction = value_loss(new, old, returns, mask, cliprange_value=0.2)
    # token 0: clipped value 0.2 -> max(0.25, 0.64) = 0.64; token 1 within range -> 0.81
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81) / 2)
    assert clip_fraction.item() == pytest.approx(0.5)
