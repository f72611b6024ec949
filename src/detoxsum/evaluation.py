"""Summarize the test split with each model variant and score ROUGE and toxicity side by side."""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset

from detoxsum.config import BaseConfig, EvaluateConfig
from detoxsum.data import group_references
from detoxsum.metrics import percent_change, rouge, toxicity_stats
from detoxsum.modeling import device, load_with_adapters
from detoxsum.reward import ToxicityScorer
from detoxsum.summarizer import GenerationSettings, Summarizer


def evaluate_variants(
    model_dir: Path,
    variants: dict[str, list[Path]],
    test_split: Dataset,
    base: BaseConfig,
    cfg: EvaluateConfig,
    scorers: list[ToxicityScorer],
) -> tuple[dict, list[dict]]:
    """Returns (metrics per variant, one prediction row per test dialogue)."""
    dialogues, references, ids = group_references(test_split)
    if cfg.max_test_rows is not None:
        dialogues, references, ids = dialogues[: cfg.max_test_rows], references[: cfg.max_test_rows], ids[: cfg.max_test_rows]
    rows = [{"id": i, "dialogue": d, "references": r} for i, d, r in zip(ids, dialogues, references)]
    metrics: dict[str, dict] = {}
    for name, adapters in variants.items():
        summaries = summarize(model_dir, adapters, dialogues, base, cfg, desc=name)
        toxicity = {scorer.name: scorer.score(summaries) for scorer in scorers}
        metrics[name] = score_summaries(summaries, references, toxicity)
        for index, row in enumerate(rows):
            row[name] = summaries[index]
            row.update({f"{name}_toxicity_{scorer}": round(values[index], 4) for scorer, values in toxicity.items()})
    metrics["num_test_dialogues"] = len(dialogues)
    return metrics, rows


def summarize(model_dir: Path, adapters: list[Path], dialogues: list[str], base: BaseConfig,
              cfg: EvaluateConfig, desc: str) -> list[str]:
    model, tokenizer, family = load_with_adapters(model_dir, adapters)
    model.to(device())
    summarizer = Summarizer(model, tokenizer, family, GenerationSettings.from_configs(base, cfg))
    return summarizer.summarize(dialogues, show_progress=True, desc=desc)


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
