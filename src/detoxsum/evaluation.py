"""Summarize the test split with each model variant, then score ROUGE and toxicity side by side.

Generation and scoring are separate steps (and separate DVC stages): each variant's summaries are
generated once, by `generate_stage`, and only regenerated when that variant's model or the
generation settings change; scoring reads every variant's summaries and is cheap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset

from detoxsum.config import BaseConfig, EvaluateConfig
from detoxsum.data import group_references
from detoxsum.errors import DataError
from detoxsum.metrics import percent_change, rouge, toxicity_stats
from detoxsum.modeling import device, load_with_adapters
from detoxsum.reward import ToxicityScorer
from detoxsum.summarizer import GenerationSettings, Summarizer


@dataclass(frozen=True)
class TestSet:
    """The unique test dialogues (first `evaluate.max_test_rows`), each with its references and id."""

    dialogues: list[str]
    references: list[list[str]]
    ids: list[str]

    @classmethod
    def from_split(cls, split: Dataset, max_rows: int | None) -> TestSet:
        dialogues, references, ids = group_references(split)
        return cls(dialogues[:max_rows], references[:max_rows], ids[:max_rows])


def generate_variant(model_dir: Path, adapters: list[Path], test_set: TestSet, base: BaseConfig,
                     cfg: EvaluateConfig, name: str) -> dict:
    """Summaries of every test dialogue by one variant (adapters merged), with the precision used
    and the time it took: the content of `results/summaries/<name>.json`."""
    model, tokenizer, family = load_with_adapters(model_dir, adapters, merge_all=True)
    model.to(device())
    summarizer = Summarizer(model, tokenizer, family, GenerationSettings.from_configs(base, cfg))
    started = time.perf_counter()
    summaries = summarizer.summarize(test_set.dialogues, show_progress=True, desc=name)
    return {
        "model": name,
        "precision": summarizer.precision,
        "runtime_s": round(time.perf_counter() - started, 1),
        "summaries": [{"id": i, "summary": s} for i, s in zip(test_set.ids, summaries)],
    }


def summaries_for(generated: dict, test_set: TestSet, source: Path) -> list[str]:
    """The summaries of a `generate_variant` result, checked to be of these test dialogues."""
    ids = [row["id"] for row in generated["summaries"]]
    if ids != test_set.ids:
        raise DataError(f"{source}: summaries of other test dialogues than data/filtered/test.jsonl "
                        f"(evaluate.max_test_rows or the data changed); run dvc repro")
    return [row["summary"] for row in generated["summaries"]]


def score_variants(summaries: dict[str, list[str]], test_set: TestSet,
                   scorers: list[ToxicityScorer]) -> tuple[dict, list[dict]]:
    """Returns (metrics per variant, one prediction row per test dialogue)."""
    rows = [{"id": i, "dialogue": d, "references": r}
            for i, d, r in zip(test_set.ids, test_set.dialogues, test_set.references)]
    metrics: dict[str, dict] = {}
    for name, texts in summaries.items():
        toxicity = {scorer.name: scorer.score(texts) for scorer in scorers}
        metrics[name] = score_summaries(texts, test_set.references, toxicity)
        for index, row in enumerate(rows):
            row[name] = texts[index]
            row.update({f"{name}_toxicity_{scorer}": round(values[index], 4) for scorer, values in toxicity.items()})
    metrics["num_test_dialogues"] = len(test_set.dialogues)
    return metrics, rows


def score_summaries(summaries: list[str], references: list[list[str]], toxicity: dict[str, list[float]]) -> dict:
    """ROUGE against the references plus toxicity statistics per classifier, as one flat dict."""
    scores = rouge(summaries, references)
    for scorer, values in toxicity.items():
        for stat, value in toxicity_stats(values).items():
            scores[f"toxicity_{scorer}_{stat}"] = value
    scores["summary_words_mean"] = round(sum(len(s.split()) for s in summaries) / max(len(summaries), 1), 2)
    return scores


def toxicity_change(metrics: dict, before: str, after: str, scorers: list[ToxicityScorer]) -> dict[str, float]:
    """% change of mean toxicity from variant `before` to `after`, per scorer."""
    return {
        f"toxicity_{s.name}_mean_change_pct": percent_change(
            metrics[before][f"toxicity_{s.name}_mean"], metrics[after][f"toxicity_{s.name}_mean"]
        )
        for s in scorers
    }


def toxicity_histogram(rows: list[dict], variants: list[str], scorer: str, bins: int = 10) -> list[dict]:
    """Counts of summaries per toxicity bin ([0, 0.1), ..., [0.9, 1.0]) for each variant: a DVC plot."""
    table = [{"toxicity": round((b + 0.5) / bins, 3), **dict.fromkeys(variants, 0)} for b in range(bins)]
    for row in rows:
        for variant in variants:
            index = min(int(row[f"{variant}_toxicity_{scorer}"] * bins), bins - 1)
            table[index][variant] += 1
    return table
