"""Which modules the PPO adapter trains: the LoRA targets of the top decoder layers only."""

from __future__ import annotations

import re

from detoxsum.errors import ParamsError

# The index of a decoder layer in a module name: `model.layers.7.` (Llama, Qwen2), `decoder.block.7.`
# (T5), `decoder.layers.7.` (BART), `h.7.` (GPT-2).
LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|block|h)\.(\d+)\.")


def layer_index(module_name: str) -> int | None:
    """The decoder-layer index in a full module name (see LAYER_INDEX), or None outside numbered layers."""
    match = LAYER_INDEX.search(module_name)
    return int(match.group(1)) if match else None


def top_layer_targets(model, targets: list[str], layers: int) -> list[str]:
    """Full names of the `targets` modules in the last `layers` decoder layers (encoder-decoder
    models: of the decoder only), for a LoRA adapter on the top of the network alone."""
    decoder_only = not getattr(model.config, "is_encoder_decoder", False)
    indexed = []
    for name, _module in model.named_modules():
        index = layer_index(name)
        if index is not None and name.rsplit(".", 1)[-1] in targets and (decoder_only or "decoder." in name):
            indexed.append((index, name))
    if not indexed:
        raise ParamsError(f"train_ppo.top_layers: no numbered decoder layers hold {targets} in this "
                          f"{model.config.model_type} model")
    lowest = max(index for index, _name in indexed) + 1 - layers
    return [name for index, name in indexed if index >= lowest]


def lowest_layer(module_names: list[str]) -> int:
    """The smallest decoder-layer index among full module names such as `top_layer_targets` returns."""
    return min(layer_index(name) for name in module_names)
