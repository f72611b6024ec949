"""Adapter chains: a base model with the SFT adapter (LoRA or soft prompt, or a fully fine-tuned
folder in its place) and the PPO adapter on top."""

from __future__ import annotations

import json
from pathlib import Path

from detoxsum.errors import ModelLoadError
from detoxsum.models.loading import load_model

# What a trained-model folder holds, as `saved_kind` reads it: a peft adapter, or a whole model.
LORA, PROMPT_TUNING, FULL_MODEL = "lora", "prompt_tuning", "full"


def saved_kind(folder: str | Path) -> str:
    """What `folder` (artifacts/lora, artifacts/ppo) holds, from its files: a LoRA adapter (`lora`,
    which train_lora.method lora and qlora both write), a soft prompt (`prompt_tuning`), or a whole
    fine-tuned model (`full`: config.json and weights, no adapter_config.json). The one place that
    tells them apart: loading, PPO and the registry ask it rather than the params."""
    folder = Path(folder)
    adapter_config = folder / "adapter_config.json"
    if adapter_config.is_file():
        peft_type = json.loads(adapter_config.read_text()).get("peft_type")
        kinds = {"LORA": LORA, "PROMPT_TUNING": PROMPT_TUNING}
        if peft_type not in kinds:
            raise ModelLoadError(f"{adapter_config}: a {peft_type} adapter; detoxsum loads LoRA and prompt-tuning ones")
        return kinds[peft_type]
    if (folder / "config.json").is_file():
        return FULL_MODEL
    raise ModelLoadError(f"{folder}: neither an adapter (adapter_config.json) nor a model (config.json); "
                         "run the stage that trains it")


def model_chain(base: str | Path, adapters: list[str | Path]) -> tuple[str | Path, list[str | Path]]:
    """The base to load and the adapters to apply to it, for the chain `base` + `adapters`: when the
    first folder holds a whole model (train_lora.method full) it *is* the base, and `base` is not
    read at all; otherwise the chain is as given."""
    if adapters and saved_kind(adapters[0]) == FULL_MODEL:
        return adapters[0], list(adapters[1:])
    return base, list(adapters)


def load_with_adapters(model_dir: str | Path, adapters: list[str | Path], no_dropout: bool = False,
                       merge_all: bool = False):
    """Base model with adapters applied in order: all but the last merged, the last kept live
    (or merged too with `merge_all`, for inference).

    `[]` is the base model, `[lora]` the SFT model, `[lora, ppo]` the PPO policy (whose adapter was
    trained on top of the merged SFT weights). A fully fine-tuned `lora` folder replaces `model_dir`
    (`model_chain`).
    """
    model_dir, adapters = model_chain(model_dir, adapters)
    model, tokenizer, family = load_model(model_dir, no_dropout=no_dropout)
    return apply_adapters(model, adapters, merge_all), tokenizer, family


def apply_adapters(model, adapters: list[str | Path], merge_all: bool = False):
    """Apply adapters in order to a loaded model: all but the last merged, the last kept live
    unless `merge_all`. Inference merges every LoRA adapter: a live LoRA adds two small matmuls to
    each adapted projection for every generated token, a merged one costs nothing. A soft prompt
    (prompt tuning) has no weights to merge into: it stays a live peft model, and can only come last."""
    if not adapters:
        return model  # the base model: no peft import (~2 s with bitsandbytes)
    from peft import PeftModel

    for position, adapter in enumerate(adapters):
        last = position == len(adapters) - 1
        if not Path(adapter, "adapter_config.json").is_file():
            raise ModelLoadError(f"{adapter}: no adapter found; run the stage that trains it")
        kind = saved_kind(adapter)
        if kind == PROMPT_TUNING and not last:
            raise ModelLoadError(f"{adapter}: a soft prompt (train_lora.method prompt_tuning) cannot take "
                                 "another adapter on top")
        model = PeftModel.from_pretrained(model, str(adapter))
        if kind == LORA and (merge_all or not last):
            model = model.merge_and_unload()
    return model
