"""PPO arithmetic against values computed by hand (gamma, lam, coefficients chosen to be checkable)."""

import math

import pytest
import torch

from ppo_utils.ppo_core import (
    gae_advantages,
    masked_whiten,
    policy_loss,
    response_mask,
    stop_lengths,
    token_rewards,
    value_loss,
)


def close(tensor, expected, abs=1e-6):
    torch.testing.assert_close(tensor, torch.tensor(expected), atol=abs, rtol=0)


def test_stop_lengths_and_mask():
    responses = torch.tensor([[5, 6, 2, 0], [5, 6, 7, 8], [2, 0, 0, 0]])
    last = stop_lengths(responses, stop_token_id=2)
    assert last.tolist() == [2, 3, 0]
    assert response_mask(last, 4).tolist() == [[True, True, True, False], [True] * 4, [True, False, False, False]]


def test_gae_on_four_tokens():
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.4, 0.3, 0.2], [0.5, 0.4, 0.3, 9.9]])
    mask = torch.tensor([[True] * 4, [True, True, True, False]])
    advantages, returns = gae_advantages(rewards, values, mask, gamma=1.0, lam=0.95)
    # row 0: A3 = 1 - 0.2 = 0.8; A2 = (0.2 - 0.3) + 0.95 * 0.8 = 0.66; A1 = -0.1 + 0.95 * 0.66 = 0.527;
    #        A0 = -0.1 + 0.95 * 0.527 = 0.40065
    # row 1 ends after token 2 (next value 0, padding ignored): A2 = 1 - 0.3 = 0.7; A1 = -0.1 + 0.665 = 0.565;
    #        A0 = -0.1 + 0.95 * 0.565 = 0.43675; A3 = 0
    close(advantages, [[0.40065, 0.527, 0.66, 0.8], [0.43675, 0.565, 0.7, 0.0]])
    close(returns, [[0.90065, 0.927, 0.96, 1.0], [0.93675, 0.965, 1.0, 0.0]])


def test_gae_with_discount():
    rewards, values, mask = torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[True, True]])
    advantages, _ = gae_advantages(rewards, values, mask, gamma=0.5, lam=0.5)
    # A1 = 2 - 1 = 1; A0 = (0 + 0.5 * 1 - 1) + 0.25 * 1 = -0.25
    close(advantages, [[-0.25, 1.0]])


def test_kl_penalty_and_score_at_last_real_token():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0, -4.0], [-1.0, -1.0, -1.0, -1.0]])
    ref_logprobs = torch.tensor([[-1.5, -2.0, -2.0, 0.0], [-1.0, -1.0, -1.0, -2.0]])
    mask = torch.tensor([[True, True, True, False], [True] * 4])
    rewards, kl = token_rewards(torch.tensor([1.0, 0.1]), logprobs, ref_logprobs, mask, kl_coef=0.1)
    close(kl, [[0.5, 0.0, -1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    close(rewards, [[-0.05, 0.0, 0.1 + 1.0, 0.0], [0.0, 0.0, 0.0, -0.1 + 0.1]])


def test_masked_whitening_ignores_padding():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[True, True, True, False]])
    whitened = masked_whiten(values, mask)
    # mean 2, unbiased variance ((1 + 0 + 1) / 2) = 1
    assert whitened[0, :3].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-4)
    assert masked_whiten(values, mask, shift_mean=False)[0, :3].tolist() == pytest.approx([1.0, 2.0, 3.0], abs=1e-4)


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
