"""Toxicity scorers behind one interface: `score(texts) -> list[float]`, probabilities in [0, 1].

- `profanity-check` (alt-profanity-check): a small sklearn model shipped on PyPI; offline default.
- `hf`: any Hugging Face sequence classifier by Hub id or local path; the score is the softmax
  probability of the configured label (e.g. `hate` for facebook/roberta-hate-speech-dynabench-r4-target).
"""

from __future__ import annotations

from typing import Protocol

import torch

from detoxsum.config import ClassifierSpec
from detoxsum.errors import ModelLoadError, ParamsError


class ToxicityScorer(Protocol):
    name: str

    def score(self, texts: list[str]) -> list[float]: ...


class ProfanityCheckScorer:
    def __init__(self, name: str = "profanity_check"):
        from profanity_check import predict_prob

        self.name = name
        self._predict_prob = predict_prob

    def score(self, texts: list[str]) -> list[float]:
        if not texts:
            return []
        return [float(p) for p in self._predict_prob(list(texts))]


class HFClassifierScorer:
    def __init__(self, name: str, model: str, label: str, batch_size: int = 32):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.name = name
        self.batch_size = batch_size
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model = AutoModelForSequenceClassification.from_pretrained(model).eval()
        except OSError as exc:
            raise ModelLoadError(f"classifier {name}: cannot load {model!r} ({str(exc).splitlines()[0]})") from exc
        labels = {str(v).lower(): int(k) for k, v in self.model.config.id2label.items()}
        if label.lower() not in labels:
            raise ParamsError(f"classifier {name}.label: {label!r} not among {sorted(labels)}")
        self.label_index = labels[label.lower()]

    def logits(self, texts: list[str]) -> torch.Tensor:
        chunks = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[start : start + self.batch_size], padding=True, truncation=True,
                                       max_length=512, return_tensors="pt").to(self.model.device)
                chunks.append(self.model(**batch).logits.float().cpu())
        return torch.cat(chunks) if chunks else torch.zeros(0, self.model.config.num_labels)

    def score(self, texts: list[str]) -> list[float]:
        return self.logits(list(texts)).softmax(-1)[:, self.label_index].tolist()


def build_scorer(spec: ClassifierSpec) -> ToxicityScorer:
    if spec.kind == "profanity-check":
        return ProfanityCheckScorer(spec.name)
    return HFClassifierScorer(spec.name, spec.model, spec.label)
