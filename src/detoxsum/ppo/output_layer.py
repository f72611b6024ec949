"""The policy's output layer in float32 under bf16 autocast, for PPO's log-probs and ratios."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def float32_output_layer(model):
    """Within the block, the model's output layer computes its logits in float32 even under autocast.

    A bf16 logit of magnitude 32-64 is rounded to a step of 0.25, which goes straight into
    log-probs and PPO's probability ratios; the layers below may stay in bf16. A head that is not a
    plain nn.Linear (e.g. one wrapped by an adapter) is left as it is.
    """
    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        yield
        return

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            bias = None if head.bias is None else head.bias.float()
            return torch.nn.functional.linear(hidden.float(), head.weight.float(), bias)

    head.forward = forward
    try:
        yield
    finally:
        del head.forward  # back to the class's forward
