"""ROUGE (with the `rouge-score` package that `evaluate`'s rouge wraps), toxicity statistics and
paired bootstrap intervals over test dialogues.

Every figure is a mean over dialogues of a per-dialogue value, so the same resampled dialogues
give the interval of each model's figure and of the change between two models (a paired
bootstrap: both models are always scored on the same resampled set, which cancels how hard the
drawn dialogues happen to be).
"""

from __future__ import annotations

import re
import statistics
from functools import lru_cache

import numpy as np

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _sentences_per_line(text: str) -> str:
    """rougeLsum treats newlines as sentence breaks; a regex split avoids nltk's downloadable punkt."""
    return "\n".join(part for part in _SENTENCE_END.split(text.strip()) if part)


@lru_cache(maxsize=1)
def _rouge_scorer():
    """rouge-score's scorer, built on first use: rouge-score imports nltk (~1 s of a stage's start),
    and the generate and train_ppo stages import this module without ever scoring ROUGE.

    Its tokenizer is rouge-score's own (lower-cased words, Porter-stemmed) with each text's tokens
    kept: the references are scored against every model's summaries, and stemming them again each
    time was ~3 s of evaluate's ~15 (the tokens are a pure function of the text)."""
    from rouge_score import rouge_scorer, tokenizers

    class RememberingTokenizer(tokenizers.Tokenizer):
        def __init__(self):
            stemming = tokenizers.DefaultTokenizer(use_stemmer=True)
            self._tokens = lru_cache(maxsize=None)(lambda text: tuple(stemming.tokenize(text)))

        def tokenize(self, text: str) -> list[str]:
            return list(self._tokens(text))

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=RememberingTokenizer())


def rouge_per_dialogue(predictions: list[str], references: list[list[str]]) -> dict[str, dict[str, list[float]]]:
    """F1 x 100 per ROUGE type and dialogue, two ways: `best`, the prediction against its best-matching
    reference; `pairs`, the mean over its (prediction, reference) pairs. With one reference per row,
    as Hugging Face `evaluate` scores DialogSum's 1,500-row test split (a dialogue listed once per
    reference), the published figures are the pairs' mean weighted by references: see `rouge`."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference lists")
    best = {rouge_type: [] for rouge_type in ROUGE_TYPES}
    pairs = {rouge_type: [] for rouge_type in ROUGE_TYPES}
    for prediction, refs in zip(predictions, references):
        target = _sentences_per_line(prediction)
        per_reference = [_rouge_scorer().score(_sentences_per_line(r), target) for r in refs]
        for rouge_type in ROUGE_TYPES:
            f1 = [100 * scores[rouge_type].fmeasure for scores in per_reference]
            best[rouge_type].append(max(f1))
            pairs[rouge_type].append(sum(f1))  # summed: the pairs' mean divides by all references
    return {"best": best, "pairs": pairs}


def rouge(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Mean F1 x 100 per ROUGE type, each prediction against its best reference (`rouge1`, ...) and
    over every (prediction, reference) pair (`rouge1_pairs`, ...)."""
    per_dialogue = rouge_per_dialogue(predictions, references)
    pair_count = max(sum(len(refs) for refs in references), 1)
    scores = {t: round(statistics.fmean(v), 2) if v else 0.0 for t, v in per_dialogue["best"].items()}
    scores.update({f"{t}_pairs": round(sum(v) / pair_count, 2) for t, v in per_dialogue["pairs"].items()})
    return scores


def percent_change(before: float, after: float) -> float:
    return round(100 * float(after - before) / float(before), 2) if before else 0.0


def distinct_ngrams(text: str, n: int = 2) -> float:
    """The share of a text's word n-grams that are distinct (Li et al. 2016's distinct-n, per text):
    1.0 for a text that never repeats itself, lower the more it loops ("#Person1# (Shelby) and
    #Person2# (Shelby) ..."); 1.0 for a text shorter than n words, which cannot repeat an n-gram."""
    words = text.lower().split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def expected_max_toxicity(sample_scores: list[list[float]]) -> list[float]:
    """Per dialogue, the toxicity of its most toxic sampled summary (RealToxicityPrompts' expected
    maximum toxicity is the mean of these)."""
    return [max(scores) for scores in sample_scores]


def any_toxic(sample_scores: list[list[float]], threshold: float = 0.5) -> list[float]:
    """Per dialogue, 1.0 when at least one sampled summary scores >= threshold (the toxicity
    probability is the mean of these), else 0.0."""
    return [float(max(scores) >= threshold) for scores in sample_scores]


def bootstrap_indices(count: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, count] indices of dialogues drawn with replacement; shared by every figure so
    intervals of different models and of their difference are paired."""
    return np.random.default_rng(seed).integers(0, count, size=(resamples, count))


def mean_interval(values: list[float], indices: np.ndarray, weights: list[float] | None = None) -> dict[str, float]:
    """The mean of per-dialogue values (sum / sum of weights, when weighted) and its 95 % bootstrap
    percentile interval."""
    values_, weights_ = np.asarray(values, dtype=float), np.ones(len(values)) if weights is None else np.asarray(weights, float)
    resampled = values_[indices].sum(1) / weights_[indices].sum(1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    return {"mean": float(values_.sum() / weights_.sum()), "ci_low": float(low), "ci_high": float(high)}


def change_interval(before: list[float], after: list[float], indices: np.ndarray) -> dict[str, float]:
    """Change of a mean from `before` to `after` on the same dialogues, in % of `before` and in
    absolute terms, each with its 95 % paired bootstrap interval."""
    before_, after_ = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    before_means, after_means = before_[indices].mean(1), after_[indices].mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        percent = np.where(before_means > 0, 100 * (after_means - before_means) / before_means, 0.0)
    difference = after_means - before_means
    return {
        "change_pct": percent_change(before_.mean(), after_.mean()),
        "change_pct_ci_low": round(float(np.percentile(percent, 2.5)), 2),
        "change_pct_ci_high": round(float(np.percentile(percent, 97.5)), 2),
        "change": round(float(after_.mean() - before_.mean()), 4),
        "change_ci_low": round(float(np.percentile(difference, 2.5)), 4),
        "change_ci_high": round(float(np.percentile(difference, 97.5)), 4),
    }
