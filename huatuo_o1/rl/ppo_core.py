"""The arithmetic of PPO on token sequences, as small pure functions on tensors.

Shapes: (batch, response length). The placement follows the original trainer (trl 0.13's PPOv2):
a response is cut after its first stop token, s is the index of its last token (the first pad
minus one), log-probs and the policy loss count at positions <= s, values and the value loss at
positions <= s + 1, where the verifier's score is added (see docs/rl.md, "Where the score lands").
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# Added to the sampling temperature wherever logits are divided by it (sampling, log-probs, entropy), as the
# original trainer did; the rollouts and the updates must divide by the same number.
TEMPERATURE_EPSILON = 1e-7
# Added to the variance before whitening, so that a constant (zero-variance) tensor whitens to 0, not NaN.
WHITEN_EPSILON = 1e-8


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


# How per-token losses become one number (--loss_agg). token_mean is the original trainer's: one mean over every
# counted token of the micro-batch, so a long response weighs more than a short one.
LOSS_AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


def aggregate_loss(
    per_token: Tensor, mask: Tensor, mode: str = "token_mean", norm_length: int | None = None
) -> Tensor:
    """One loss from per-token losses (batch, length) where mask (batch, length) is True.

    token_mean: the mean over every masked token of the batch (the original's).
    seq_mean_token_mean: each response's mean over its tokens, then the mean over responses (a response without
      counted tokens counts 0, as trl's "grpo" loss).
    seq_mean_token_sum_norm: each response's sum over its tokens divided by norm_length (the maximum response
      length, a constant: Dr. GRPO), then the mean over responses.
    """
    if mode == "token_mean":
        return masked_mean(per_token, mask)
    mask = mask.to(per_token.dtype)
    token_sums = (per_token * mask).sum(-1)
    if mode == "seq_mean_token_mean":
        return (token_sums / mask.sum(-1).clamp(min=1.0)).mean()
    if mode == "seq_mean_token_sum_norm":
        return (token_sums / norm_length).mean()
    raise ValueError(f"unknown loss aggregation {mode!r} (one of {', '.join(LOSS_AGGREGATIONS)})")


def masked_var(values: Tensor, mask: Tensor) -> Tensor:
    """Unbiased variance over the masked entries (as the PPO reference implementations use)."""
    mean = masked_mean(values, mask)
    squared = masked_mean((values - mean) ** 2, mask)
    count = mask.sum()
    return squared * count / (count - 1).clamp(min=1)


def masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """Normalise to unit variance (and zero mean) using the masked entries only."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + WHITEN_EPSILON)
    if not shift_mean:
        whitened = whitened + mean
    return whitened


def logprobs_of(logits: Tensor, tokens: Tensor, temperature: float) -> Tensor:
    """log p(token) under logits / temperature (generation sampled at that temperature)."""
    logprobs = F.log_softmax(logits.float() / temperature, dim=-1)
    return torch.gather(logprobs, 2, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_of(logits: Tensor, temperature: float) -> Tensor:
    logits = logits.float() / temperature
    probs = F.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


SCORE_POSITIONS = ("after_stop", "stop_token")


def first_true_index(bools: Tensor) -> Tensor:
    """Index of the first True in each row; the row length when there is none."""
    length = bools.shape[-1]
    positions = torch.arange(length, device=bools.device).expand_as(bools)
    return torch.where(bools, positions, torch.full_like(positions, length)).min(-1).values


def truncate_after_stop(responses: Tensor, stop_token_id: int, pad_token_id: int) -> Tensor:
    """Every token after the first stop token becomes pad; the stop token itself stays."""
    positions = torch.arange(responses.shape[1], device=responses.device).unsqueeze(0)
    first_stop = first_true_index(responses == stop_token_id).unsqueeze(1)
    return responses.masked_fill(positions > first_stop, pad_token_id)


def sequence_ends(truncated: Tensor, pad_token_id: int) -> Tensor:
    """s, the index of each response's last token: the first pad minus one, the last index when there is no pad.

    A pad token the policy sampled itself ends the response too (s = -1 when it came first).
    """
    return first_true_index(truncated == pad_token_id) - 1


def position_masks(ends: Tensor, length: int, score_position: str = "after_stop") -> tuple[Tensor, Tensor]:
    """(policy_mask, value_mask): which positions count for log-probs and the policy loss, which for values.

    after_stop (the original's): values count one position past the stop token, where the score lands.
    stop_token: both stop at the stop token.
    """
    positions = torch.arange(length, device=ends.device).unsqueeze(0)
    policy_mask = positions <= ends.unsqueeze(1)
    if score_position == "stop_token":
        return policy_mask, policy_mask
    return policy_mask, positions <= (ends + 1).unsqueeze(1)


def score_indices(ends: Tensor, length: int, score_position: str = "after_stop") -> Tensor:
    """Where each response's score is added: s + 1 when inside the tensor, else s (after_stop); s (stop_token)."""
    if score_position == "stop_token":
        return ends.clamp(min=0)
    return torch.where(ends + 1 < length, ends + 1, ends)


def token_rewards(scores: Tensor, kl_penalty: Tensor, policy_mask: Tensor, score_at: Tensor, kl_coef: float) -> Tensor:
    """Per-token reward: -kl_coef * kl_penalty on the policy's positions, 0 elsewhere, plus the score at score_at."""
    rewards = -kl_coef * kl_penalty.masked_fill(~policy_mask, 0.0)
    rewards[torch.arange(rewards.shape[0], device=rewards.device), score_at] += scores.to(rewards.dtype)
    return rewards


def gae_advantages(rewards: Tensor, values: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over the whole (padded) length; the value after the last position is 0.

    The caller zeroes values and rewards where they do not count. Returns (advantages, returns = advantages + values).
    """
    length = rewards.shape[1]
    advantages_reversed = []
    last_gae = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t < length - 1 else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = delta + gamma * lam * last_gae
        advantages_reversed.append(last_gae)
    advantages = torch.stack(advantages_reversed[::-1], dim=1)
    return advantages, advantages + values


def kl_terms(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k1") -> tuple[Tensor, Tensor]:
    """(penalty, kl): the per-token term the reward pays for, and log pi - log pi_ref for the logs.

    k1 = log pi - log pi_ref (the original's); k3 = (r - 1) - log r with r = pi_ref / pi (unbiased, non-negative).
    """
    kl = logprobs - ref_logprobs
    if estimator == "k1":
        return kl, kl
    log_ratio = -kl
    return (log_ratio.exp() - 1) - log_ratio, kl


def overlong_penalty(lengths: Tensor, max_length: int, penalty_length: int) -> Tensor:
    """DAPO's soft overlong punishment, (batch,) response lengths -> (batch,) float32 penalties to add to the scores.

    0 up to max_length - penalty_length tokens, then falling linearly to -1 at max_length:
    (max_length - penalty_length - length) / penalty_length. A length counts the stop token.
    """
    start = max_length - penalty_length
    return ((start - lengths.float()) / penalty_length).clamp(max=0.0)


@dataclass
class Targets:
    """Everything PPO trains on from one rollout; (batch, response length) unless said otherwise."""

    responses: torch.Tensor  # cut after the first stop token
    ends: torch.Tensor  # (batch,) s, the index of each response's last token
    policy_mask: torch.Tensor  # positions that count for log-probs and the policy loss
    value_mask: torch.Tensor  # positions that count for values and the value loss
    scores: torch.Tensor  # (batch,) float32, after the missing-eos penalty
    has_eos: torch.Tensor  # (batch,)
    kl: torch.Tensor  # log pi - log pi_ref, zero past the policy's positions
    rewards: torch.Tensor  # per token
    values: torch.Tensor  # zero where they do not count
    advantages: torch.Tensor  # whitened over the policy's positions, zero elsewhere
    returns: torch.Tensor


def rollout_targets(
    responses: Tensor,
    scores: Tensor,
    logprobs: Tensor,
    ref_logprobs: Tensor,
    values: Tensor,
    *,
    stop_token_id: int,
    pad_token_id: int,
    eos_token_id: int,
    kl_coef: float,
    gamma: float,
    lam: float,
    whiten_rewards: bool = False,
    missing_eos_penalty: float | None = None,
    score_position: str = "after_stop",
    kl_estimator: str = "k1",
    overlong_penalty_len: int = 0,
    response_length: int | None = None,
) -> Targets:
    """Everything PPO trains on, from one rollout.

    responses: sampled token ids (batch, length), before truncation; scores: one verifier score per
    response, in the verifier's dtype (the missing-eos penalty is subtracted in that dtype, as the
    original did); logprobs / ref_logprobs / values: per response position (float32).
    overlong_penalty_len > 0: DAPO's overlong penalty (`overlong_penalty`) on each response's length (its policy
    positions, the stop token included) against response_length is added to the score, in float32.
    """
    length = responses.shape[1]
    responses = truncate_after_stop(responses, stop_token_id, pad_token_id)
    ends = sequence_ends(responses, pad_token_id)
    policy_mask, value_mask = position_masks(ends, length, score_position)
    has_eos = (responses == eos_token_id).any(1)
    if missing_eos_penalty is not None:
        scores = torch.where(has_eos, scores, scores - missing_eos_penalty)
    scores = scores.float()
    if overlong_penalty_len:
        scores = scores + overlong_penalty(policy_mask.sum(1), response_length, overlong_penalty_len)

    logprobs = logprobs.masked_fill(~policy_mask, 0.0)
    ref_logprobs = ref_logprobs.masked_fill(~policy_mask, 0.0)
    penalty, kl = kl_terms(logprobs, ref_logprobs, kl_estimator)
    rewards = token_rewards(scores, penalty, policy_mask, score_indices(ends, length, score_position), kl_coef)
    if whiten_rewards:
        rewards = masked_whiten(rewards, value_mask, shift_mean=False).masked_fill(~value_mask, 0.0)
    values = values.masked_fill(~value_mask, 0.0)
    advantages, returns = gae_advantages(rewards, values, gamma, lam)
    advantages = masked_whiten(advantages, policy_mask).masked_fill(~policy_mask, 0.0)
    return Targets(
        responses=responses,
        ends=ends,
        policy_mask=policy_mask,
        value_mask=value_mask,
        scores=scores,
        has_eos=has_eos,
        kl=kl.masked_fill(~policy_mask, 0.0),
        rewards=rewards,
        values=values,
        advantages=advantages,
        returns=returns,
    )


def policy_loss(
    new_logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    cliprange: float,
    cliprange_high: float | None = None,
    loss_agg: str = "token_mean",
    norm_length: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Clipped surrogate loss, all inputs (batch, length); returns (loss, clip fraction, approximate KL old->new).

    The ratio is clipped to [1 - cliprange, 1 + cliprange_high] (cliprange_high None: cliprange, symmetric); the
    per-token losses are aggregated by `aggregate_loss(loss_agg, norm_length)`. The clip fraction and the KL are
    means over the masked tokens whatever the aggregation.
    """
    high = cliprange if cliprange_high is None else cliprange_high
    log_ratio = new_logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + high)
    loss = aggregate_loss(torch.max(unclipped, clipped), mask, loss_agg, norm_length)
    clip_fraction = masked_mean((clipped > unclipped).float(), mask)
    approx_kl = 0.5 * masked_mean(log_ratio**2, mask)
    return loss, clip_fraction, approx_kl


def value_loss(
    new_values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    cliprange_value: float,
    loss_agg: str = "token_mean",
    norm_length: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Clipped value loss (0.5 * max of squared errors), inputs (batch, length), aggregated as the policy loss;
    returns (loss, clip fraction over the masked tokens)."""
    clipped_values = old_values + torch.clamp(new_values - old_values, -cliprange_value, cliprange_value)
    unclipped_error = (new_values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * aggregate_loss(torch.max(unclipped_error, clipped_error), mask, loss_agg, norm_length)
    clip_fraction = masked_mean((clipped_error > unclipped_error).float(), mask)
    return loss, clip_fraction
