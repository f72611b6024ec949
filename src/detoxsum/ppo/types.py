"""The data PPO's steps pass between them."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class Rollout:
    """One batch of experience; every field is a tensor with the batch in its first dimension."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor  # float: 1.0 up to and including the first stop token
    frozen: torch.Tensor | None = None  # output of the layers below the PPO adapter (see PPOModel)
    logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    rewards: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    def select(self, index: torch.Tensor) -> Rollout:
        rows = {f.name: getattr(self, f.name) for f in fields(self)}
        return Rollout(**{name: None if value is None else value[index] for name, value in rows.items()})
