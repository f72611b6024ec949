"""The math of a PPO step as pure functions of tensors: masked statistics, reward shaping,
baselines, GAE, the losses and the KL coefficient's update. Nothing here knows about models.

Shapes: B responses, T response tokens; `mask` is 1.0 on a response's tokens (up to and including
its stop token) and 0.0 on the padding after it.
"""

from __future__ import annotations

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` where `mask` is 1 (over all elements, or along `dim`)."""
    if dim is None:
        return (values * mask).sum() / mask.sum()
    return (values * mask).sum(dim) / mask.sum(dim)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `values` where `mask` is 1; Bessel-corrected when `unbiased`."""
    centred = values - masked_mean(values, mask)
    variance = masked_mean(centred**2, mask)
    if unbiased:
        count = mask.sum()
        variance = variance * count / (count - 1).clamp(min=1)
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero mean and unit variance over the masked elements (advantages)."""
    mean, variance = masked_mean(values, mask), masked_var(values, mask)
    return (values - mean) * torch.rsqrt(variance + 1e-8) * mask


def masked_scale(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unit variance over the masked elements, nothing added (rewards).

    Whitening rewards the usual way and adding the mean back, (x - mu) / sigma + mu, adds
    mu * (1 - 1 / sigma) to every token, so n * mu * (1 - 1 / sigma) to a response of n tokens: a
    bonus or a fine for length alone. A pure rescale changes every return by the same factor.
    """
    return values * torch.rsqrt(masked_var(values, mask) + 1e-8) * mask


def scores_at_last_token(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each response's score [B] placed at its last token, zeros elsewhere ([B, T])."""
    token_scores = torch.zeros_like(mask, dtype=scores.dtype)
    token_scores[torch.arange(len(scores), device=mask.device), mask.sum(1).long() - 1] = scores
    return token_scores


def prefix_shaped_scores(potentials: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor,
                         gamma: float = 1.0) -> torch.Tensor:
    """Potential-based shaping (Ng, Harada & Russell 1999) of a score given at the last token.

    `potentials[b, t]` = phi_t, the reward model's score of the text of the first t response tokens
    (phi_0 is the empty text), [B, T]. Token t earns gamma * phi_{t+1} - phi_t, and the last token,
    after which the episode ends (phi = 0), earns score - phi_{n-1}. The discounted return of every
    response is then gamma^{n-1} * score - phi_0, and phi_0 = R("") is the same for every response,
    so the optimal policy is unchanged at any gamma. What changes is credit: the token that makes a
    summary rude is the one that loses reward. A finished summary's stop token adds no text, so it
    earns score - phi_{n-1} = 0.
    """
    steps = torch.zeros_like(potentials)
    steps[:, :-1] = gamma * potentials[:, 1:] - potentials[:, :-1]
    token_scores = steps.to(scores.dtype) * mask
    rows, last = torch.arange(len(scores), device=mask.device), mask.sum(1).long() - 1
    token_scores[rows, last] = scores - potentials[rows, last].to(scores.dtype)
    return token_scores


def kl_penalized_rewards(
    token_scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """Per-token rewards: the reward model's share of each token minus beta * (log pi - log pi_ref)."""
    return (token_scores - beta * (logprobs - ref_logprobs)) * mask


def leave_one_out_baselines(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """For each score, the mean score of the other samples of its prompt (rows in groups of
    `group_size` consecutive samples): RLOO's baseline (Ahmadian et al. 2024, arXiv:2402.14740).
    It cancels how toxic a dialogue is, leaving how this summary compares with its siblings."""
    groups = scores.view(-1, group_size)
    return ((groups.sum(1, keepdim=True) - groups) / (group_size - 1)).reshape(-1)


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns (Schulman et al. 2016) per response token.

    Rewards and values past a response's end are zeroed first, so the value after the last token
    is 0 and nothing leaks backwards from padding.
    """
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    returns = advantages + values
    return advantages * mask, returns * mask


def logprobs_from_logits(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """log p(token) for each position, computed in float32."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution at each position, in float32."""
    logits = logits.float()
    return torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(-1)


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate loss and the fraction of tokens where the clip was active."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).float(), mask)
    return loss, clip_fraction


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss, 0.5 * max of the squared errors, and the fraction where the clip was active."""
    clipped_values = old_values + (values - old_values).clamp(-clip_range, clip_range)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    clip_fraction = masked_mean((clipped_error > unclipped_error).float(), mask)
    return loss, clip_fraction


def approx_kl(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """0.5 * E[(log pi - log pi_old)^2], a low-variance estimate of KL(pi_old || pi) for small steps."""
    return 0.5 * masked_mean((logprobs - old_logprobs) ** 2, mask)


def adaptive_beta(beta: float, current_kl: float, target_kl: float, horizon: int, n_samples: int) -> float:
    """Ziegler et al. 2019, eq. 2: beta * (1 + e * n / horizon), e = clip(KL / target - 1, +-0.2).

    `n_samples` is the number of samples behind the KL estimate, so the adjustment per sample is
    the same whatever the batch size.
    """
    proportional_error = min(max(current_kl / target_kl - 1, -0.2), 0.2)
    return beta * (1 + proportional_error * n_samples / horizon)
