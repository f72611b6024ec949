"""ROUGE (with the `rouge-score` package that `evaluate`'s rouge wraps) and toxicity statistics."""

from __future__ import annotations

import re
import statistics

from rouge_score import rouge_scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _sentences_per_line(text: str) -> str:
    """rougeLsum treats newlines as sentence breaks; a regex split avoids nltk's downloadable punkt."""
    return "\n".join(part for part in _SENTENCE_END.split(text.strip()) if part)


def rouge(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Mean F1 x 100 per ROUGE type; with several references, each prediction scores its best match."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference lists")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, refs in zip(predictions, references):
        scores = scorer.score_multi([_sentences_per_line(r) for r in refs], _sentences_per_line(prediction))
        for rouge_type in ROUGE_TYPES:
            totals[rouge_type] += scores[rouge_type].fmeasure
    count = max(len(predictions), 1)
    return {rouge_type: round(100 * total / count, 2) for rouge_type, total in totals.items()}


def toxicity_stats(scores: list[float], threshold: float = 0.5) -> dict[str, float]:
    """Mean, population std and share above `threshold` of per-summary toxicity probabilities."""
    if not scores:
        return {"mean": 0.0, "std": 0.0, "frac_toxic": 0.0}
    return {
        "mean": round(statistics.fmean(scores), 4),
        "std": round(statistics.pstdev(scores), 4),
        "frac_toxic": round(sum(score > threshold for score in scores) / len(scores), 4),
    }


def percent_change(before: float, after: float) -> float:
    return round(100 * (after - before) / before, 2) if before else 0.0
