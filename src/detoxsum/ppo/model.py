"""The PPO model: the LoRA-tuned summarizer with a fresh PPO adapter on top and a value head.

One model plays three parts: the SFT model with its LoRA adapter merged is the reference policy,
a fresh LoRA adapter on top is the policy, and `with policy.disable_adapter():` switches back to the
reference. The fresh adapter's B matrices are zero, so at the first step pi == pi_ref exactly.

Under bf16/fp16 autocast the frozen weights are stored in that dtype, so autocast does not re-cast
them on every generated token, while the output layer that turns hidden states into the log-probs
of PPO's ratios runs in float32 (bf16 logits near 40 are rounded to steps of 0.25).
`train_ppo.top_layers` keeps the adapter in the last layers: the backward pass stops there, and since
nothing below changes during a step, a rollout keeps the output of the frozen layers (T5: the
encoder) and the reference pass and all update epochs run only the layers above it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn

from detoxsum.config import TrainPPOConfig
from detoxsum.errors import ParamsError
from detoxsum.models.adapters import PROMPT_TUNING, load_with_adapters, saved_kind
from detoxsum.models.family import Family
from detoxsum.models.loading import load_model
from detoxsum.ppo.output_layer import float32_output_layer
from detoxsum.ppo.targets import lowest_layer, top_layer_targets
from detoxsum.ppo.types import Rollout
from detoxsum.precision import DTYPES, autocast
from detoxsum.training.lora import attach_lora, lora_targets

VALUE_HEAD_FILE = "value_head.safetensors"


class ValueHead(nn.Module):
    """V(s_t) = w . h_t + b on the last hidden state. Zero-initialised (as in lm-human-preferences),
    so the first values are 0 and the first advantages are the (gamma * lam)-discounted rewards."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden).squeeze(-1)


@dataclass
class PPOModel:
    policy: PeftModel  # under `policy.disable_adapter()` it is the reference policy
    value_head: ValueHead
    tokenizer: object
    family: Family
    precision: str = "fp32"  # resolved: fp32, bf16 or fp16 (autocast dtype; weights stay fp32)
    # Lowest layer holding the PPO adapter when `top_layers` confines it (None: every layer). What
    # lies below it is frozen, so each rollout computes its output once (`Rollout.frozen`) and the
    # reference pass and every update epoch start from there.
    frozen_from: int | None = None

    @property
    def device(self) -> torch.device:
        return self.value_head.linear.weight.device

    def to(self, device_: torch.device) -> PPOModel:
        self.policy.to(device_)
        self.value_head.to(device_)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        adapter = [p for p in self.policy.parameters() if p.requires_grad]
        return adapter + list(self.value_head.parameters())


def build_ppo_model(model_dir: str | Path, sft_adapters: list[str | Path], cfg: TrainPPOConfig,
                    precision: str = "fp32") -> PPOModel:
    """Base model with the SFT adapter(s) merged, a fresh PPO LoRA adapter on top, and a value head.

    A fully fine-tuned SFT model (train_lora.method full) takes the base's place: it becomes the
    frozen reference and the adapter goes on it. Dropout is zeroed in the config (T5's attention
    dropout is a float there, not a module), so the log-probs of the rollout and of the update come
    from the same function.
    """
    refuse_soft_prompt(sft_adapters)
    if sft_adapters:
        merged, tokenizer, family = load_with_adapters(model_dir, sft_adapters, no_dropout=True, merge_all=True)
    else:
        merged, tokenizer, family = load_model(model_dir, no_dropout=True)
    targets = lora_targets(merged, cfg.target_modules)
    frozen_from = None
    if cfg.top_layers is not None:
        targets = top_layer_targets(merged, targets, cfg.top_layers)
        if family.caches_frozen_layers(merged.config):
            frozen_from = lowest_layer(targets)
    policy = attach_lora(merged, family, cfg.r, cfg.alpha, dropout=0.0, targets=targets)
    if precision != "fp32":
        store_frozen_linears_in(policy, DTYPES[precision])
    value_head = ValueHead(merged.config.hidden_size)
    return PPOModel(policy, value_head, tokenizer, family, precision, frozen_from)


def refuse_soft_prompt(sft_adapters: list[str | Path]) -> None:
    """PPO's reference is the SFT model with its weights merged, and a soft prompt has none to
    merge (it lives in the input), so an SFT model tuned by prompt tuning is refused up front."""
    for adapter in sft_adapters:
        if saved_kind(adapter) == PROMPT_TUNING:
            raise ParamsError(f"params key 'train_lora.method' is 'prompt_tuning' ({adapter} holds a soft prompt), "
                              "which train_ppo cannot build on: PPO adds a LoRA adapter to the merged SFT weights; "
                              "use method lora, qlora or full")


def store_frozen_linears_in(model: nn.Module, dtype: torch.dtype) -> None:
    """Keep the frozen nn.Linear weights in `dtype` (bf16 or fp16), for use under that autocast only.

    Autocast rounds every fp32 weight to bf16 before each matmul, so the results are the same; but
    it caches those copies only for weights that require grad, so frozen weights were re-cast on
    every call -- each generated token re-cast the whole model. Embeddings, norms (the residual
    stream stays fp32) and the trainable LoRA weights stay as they are; a tied output layer gets
    its own bf16 copy of the (frozen) embedding matrix.
    """
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    if output.weight is embedding:
        output.weight = nn.Parameter(embedding.detach().to(dtype), requires_grad=False)
    for module in model.modules():
        if isinstance(module, nn.Linear) and not module.weight.requires_grad:
            module.to(dtype)


def save_ppo_model(ppo: PPOModel, out_dir: str | Path) -> None:
    """The PPO adapter (peft format) plus `value_head.safetensors`."""
    ppo.policy.save_pretrained(str(out_dir))
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in ppo.value_head.state_dict().items()}
    save_file(state, str(Path(out_dir, VALUE_HEAD_FILE)))


def load_value_head(ppo_dir: str | Path, hidden_size: int) -> ValueHead:
    value_head = ValueHead(hidden_size)
    value_head.load_state_dict(load_file(str(Path(ppo_dir, VALUE_HEAD_FILE))))
    return value_head


def forward_policy(ppo: PPOModel, batch: Rollout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Float32 logits [B, T, V] for the response tokens, values [B, T] of the states before them, and
    the frozen layers' output (None unless `ppo.frozen_from`); a batch that already holds the
    latter (`batch.frozen`) runs only the layers above it.

    The transformer runs under the model's autocast precision; the output layer, softmax and the
    value head run in float32, so PPO's probability ratios are not ratios of rounded logits.
    """
    with autocast(ppo.device, ppo.precision), float32_output_layer(ppo.policy):
        logits, hidden, frozen = ppo.family.forward_response(
            ppo.policy, batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask,
            frozen_from=ppo.frozen_from, frozen=batch.frozen,
        )
    return logits.float(), ppo.value_head(hidden.float()), frozen
