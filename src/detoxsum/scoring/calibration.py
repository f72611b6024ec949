"""How well a toxicity classifier tells an insult from clean text: its ROC AUC on a labelled set
of dialogue lines, with a 95 % bootstrap interval, its floor (mean score on the clean lines) and
its mean on the insults.

A judge whose floor is high cannot show a large relative drop (hatesonar scores the empty string
0.33), and one whose AUC is near 0.5 cannot rank what PPO is meant to remove: both say so in the
calibrate stage's metrics before any detox figure is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import mannwhitneyu

from detoxsum.data.dialogue_files import decoded_json_lines
from detoxsum.errors import DataError

LABELS = ("insult", "clean")
# An AUC whose 95 % interval reaches below this cannot be told from chance by much: flagged.
NEAR_CHANCE_AUC = 0.6


@dataclass(frozen=True)
class CalibrationSet:
    texts: list[str]
    is_insult: list[bool]


def read_calibration_set(path: Path) -> CalibrationSet:
    """The `text` and `label` (insult or clean) of each JSON line of `path`; a bad row stops with
    one error naming the file and the line."""
    if not path.is_file():
        raise DataError(f"{path}: no such file (scripts/make_calibration.py writes it)")
    texts, flags = [], []
    for number, row, problem in decoded_json_lines(path.read_text(encoding="utf-8")):
        if problem is not None:
            raise DataError(f"{path}: line {number} is not JSON ({problem})")
        label = row.get("label") if isinstance(row, dict) else None
        if label not in LABELS or not isinstance(row.get("text"), str):
            raise DataError(f"{path}: line {number}: the label must be one of {', '.join(LABELS)}, beside a "
                            f"text; got {label!r}")
        texts.append(row["text"])
        flags.append(label == "insult")
    if not any(flags) or all(flags):
        raise DataError(f"{path}: needs both insult and clean lines to measure a ranking")
    return CalibrationSet(texts, flags)


def calibration_figures(scores: list[float], is_insult: list[bool], resamples: int, seed: int) -> dict:
    """ROC AUC of `scores` for insult vs clean with its 95 % bootstrap interval (lines resampled
    within each class, so every resample holds both), the floor and the insult mean."""
    values, flags = np.asarray(scores, dtype=float), np.asarray(is_insult, dtype=bool)
    insults, clean = values[flags], values[~flags]
    rng = np.random.default_rng(seed)
    draws = [(rng.choice(insults, len(insults)), rng.choice(clean, len(clean))) for _ in range(resamples)]
    low, high = np.percentile(auc(*map(np.stack, zip(*draws))), [2.5, 97.5])
    figures = {"auc": round(float(auc(insults, clean)), 4), "auc_ci_low": round(float(low), 4),
               "auc_ci_high": round(float(high), 4), "floor": round(float(clean.mean()), 4),
               "insult_mean": round(float(insults.mean()), 4)}
    figures["near_chance"] = bool(figures["auc_ci_low"] < NEAR_CHANCE_AUC)
    return figures


def auc(insult_scores: np.ndarray, clean_scores: np.ndarray) -> np.ndarray:
    """ROC AUC of insult vs clean scores (the last axis; earlier axes are separate sets, one per
    bootstrap resample): the Mann-Whitney U of the insults over n_insult x n_clean, i.e. the chance
    that an insult outscores a clean line, ties counting half. One vectorised call for every
    resample, where sklearn's `roc_auc_score` once per resample spent ~3 s a classifier in input
    validation."""
    statistic = mannwhitneyu(insult_scores, clean_scores, axis=-1, method="asymptotic").statistic
    return statistic / (insult_scores.shape[-1] * clean_scores.shape[-1])
