"""The arithmetic of PPO on token sequences, as small pure functions on tensors.

Shapes: (batch, response_length). `mask` is True on the response tokens that count
(from the first generated token up to and including the stop token), False on padding.
"""

import torch
import torch.nn.functional as F


def masked_mean(values, mask):
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def masked_var(values, mask):
    """Unbiased variance over the masked entries (as the PPO reference implementations use)."""
    mean = masked_mean(values, mask)
    squared = masked_mean((values - mean) ** 2, mask)
    count = mask.sum()
    return squared * count / (count - 1).clamp(min=1)


def masked_whiten(values, mask, shift_mean=True):
    """Normalise to unit variance (and zero mean) using the masked entries only."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened


def logprobs_of(logits, tokens, temperature):
    """log p(token) under logits / temperature (generation sampled at that temperature)."""
    logprobs = F.log_softmax(logits.float() / temperature, dim=-1)
    return torch.gather(logprobs, 2, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_of(logits, temperature):
    logits = logits.float() / temperature
    probs = F.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


def stop_lengths(responses, stop_token_id):
    """Index of the last real token of each response: the first stop token, else the last position."""
    is_stop = responses == stop_token_id
    last = responses.shape[1] - 1
    first_stop = torch.where(is_stop.any(1), is_stop.int().argmax(1), torch.full_like(is_stop[:, 0], last, dtype=torch.long))
    return first_stop.long()


def response_mask(last_index, length):
    return torch.arange(length, device=last_index.device).unsqueeze(0) <= last_index.unsqueeze(1)


def token_rewards(scores, logprobs, ref_logprobs, mask, kl_coef):
    """Per-token reward: -kl_coef * (log pi - log pi_ref) on every real token, plus the score on the last one.

    Returns (rewards, kl) with zeros on padding.
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = mask.long().sum(1) - 1
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores.to(rewards.dtype)
    return rewards, kl


def gae_advantages(rewards, values, mask, gamma, lam):
    """Generalised advantage estimation; the episode ends after the last real token (next value 0).

    Returns (advantages, returns) with zeros on padding.
    """
    values = values * mask
    rewards = rewards * mask
    length = rewards.shape[1]
    advantages_reversed = []
    last_gae = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t < length - 1 else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = delta + gamma * lam * last_gae
        advantages_reversed.append(last_gae)
    advantages = torch.stack(advantages_reversed[::-1], dim=1) * mask
    returns = advantages + values
    return advantages, returns


def policy_loss(new_logprobs, old_logprobs, advantages, mask, cliprange):
    """Clipped surrogate loss; returns (loss, clip fraction, approximate KL old->new)."""
    log_ratio = new_logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).float(), mask)
    approx_kl = 0.5 * masked_mean(log_ratio**2, mask)
    return loss, clip_fraction, approx_kl


def value_loss(new_values, old_values, returns, mask, cliprange_value):
    """Clipped value loss (0.5 * max of squared errors); returns (loss, clip fraction)."""
    clipped_values = old_values + torch.clamp(new_values - old_values, -cliprange_value, cliprange_value)
    unclipped_error = (new_values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_error, clipped_error), mask)
    clip_fraction = masked_mean((clipped_error > unclipped_error).float(), mask)
    return loss, clip_fraction
