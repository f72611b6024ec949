"""Summarize the test split with each model variant, then score ROUGE and toxicity side by side.

Generation and scoring are separate steps (and separate DVC stages): each variant's summaries are
generated once, by `generate_variant`, and only regenerated when that variant's model or the
generation settings change; scoring reads every variant's summaries and is cheap.

Per variant and classifier, toxicity is reported three ways over the test dialogues: the mean of
the greedy summaries, the expected maximum toxicity (mean over dialogues of the most toxic of k
sampled summaries) and the toxicity probability (share of dialogues with a sample >= 0.5), as
RealToxicityPrompts (Gehman et al. 2020) and DExperts / Quark report detox. Each figure comes with a
95 % paired bootstrap interval over dialogues, on the whole test split and on its heated subset.

The base model is also prompted with k solved training examples (`evaluate.shots`), the
prompt-engineering baselines a tuned model has to beat; those variants (`base_<k>shot`) are greedy
only, so their toxicity is the greedy mean alone.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from datasets import Dataset

from detoxsum.config import BaseConfig, EvaluateConfig
from detoxsum.data.splits import group_references, heated_of
from detoxsum.distributed import shard
from detoxsum.errors import DataError
from detoxsum.scoring.metrics import (
    any_toxic, bootstrap_indices, change_interval, distinct_ngrams, expected_max_toxicity, mean_interval, rouge,
    rouge_per_dialogue,
)
from detoxsum.models.adapters import load_with_adapters
from detoxsum.models.loading import device
from detoxsum.scoring.reward import ToxicityScorer
from detoxsum.models.summarizer import GenerationSettings, Summarizer

# The toxicity figures per classifier: greedy mean, expected max over samples, toxicity probability.
TOXICITY_FIGURES = ("mean", "expected_max", "probability")


@dataclass(frozen=True)
class TestSet:
    """The unique test dialogues (first `evaluate.max_test_rows`), each with its references, id and
    whether it is a heated argument (None when the data has no `heated` column)."""

    __test__ = False  # a data class, not a pytest test class

    dialogues: list[str]
    references: list[list[str]]
    ids: list[str]
    heated: list[bool] | None = None

    @classmethod
    def from_split(cls, split: Dataset, max_rows: int | None) -> TestSet:
        dialogues, references, ids = group_references(split)
        flags = heated_of(split)
        heated = None
        if flags is not None:
            by_id = dict(zip(split["id"], flags))
            heated = [by_id[i] for i in ids][:max_rows]
        return cls(dialogues[:max_rows], references[:max_rows], ids[:max_rows], heated)

    def fingerprint(self) -> str:
        """sha256 of the dialogues, references and ids in order: equal only for the same test set, so
        the registry compares versions only on the same dialogues."""
        payload = json.dumps([self.ids, self.dialogues, self.references], ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()

    def shard(self, rank: int, world: int) -> TestSet:
        """This process's contiguous share of the launched processes (`distributed.gather` rejoins them)."""
        heated = None if self.heated is None else shard(self.heated, rank, world)
        return TestSet(*(shard(column, rank, world) for column in (self.dialogues, self.references, self.ids)), heated)


@dataclass(frozen=True)
class Examples:
    """Solved examples for few-shot prompts: training dialogues, each with one reference summary."""

    ids: list[str]
    dialogues: list[str]
    summaries: list[str]

    def pairs(self, count: int) -> list[tuple[str, str]]:
        """The first `count` as (dialogue, summary): a k-shot prompt's examples lead every larger one's."""
        return list(zip(self.dialogues, self.summaries))[:count]


def draw_examples(train: Dataset, count: int, seed: int, test_dialogues: set[str]) -> Examples:
    """`count` training dialogues drawn at random with `seed`, never one of `test_dialogues`.

    The same examples lead every test dialogue's prompt (as in the FLAN-T5 DialogSum course): the
    shot counts then differ in how many examples the model saw, not in which, and one draw serves
    every process of a parallel run.
    """
    dialogues, references, ids = group_references(train)
    # The filter stage already keeps test dialogues out of train; a baseline must not lean on that.
    candidates = [index for index, dialogue in enumerate(dialogues) if dialogue not in test_dialogues]
    if len(candidates) < count:
        raise DataError(f"evaluate.shots asks for {count} examples, but the train split has only "
                        f"{len(candidates)} dialogues outside the test split")
    chosen = random.Random(seed).sample(candidates, count)
    return Examples([ids[i] for i in chosen], [dialogues[i] for i in chosen], [references[i][0] for i in chosen])


def few_shot_name(shots: int) -> str:
    """The metrics block of the base model with `shots` examples: `base`, `base_1shot`, ..."""
    return "base" if shots == 0 else f"base_{shots}shot"


def generate_few_shot(summarizer: Summarizer, test_set: TestSet, examples: Examples, shots: list[int],
                      summarized: dict[str, str]) -> dict:
    """Greedy summaries of the test dialogues with k examples before each, for every k > 0 in
    `shots`: {"<k>": {"examples": ids, "runtime_s", "summaries": [{"id", "summary",
    "examples_in_prompt"}]}}; `summarized` maps prompts already summarized (the zero-shot ones) to
    their summaries.

    A prompt met before is not generated again, as greedy decoding would repeat itself: where no
    example fits the budget the prompt is the zero-shot one, where one fits the 3-shot prompt is
    the 1-shot one.
    """
    summarized = dict(summarized)
    generated = {}
    for count in sorted(k for k in shots if k > 0):
        started = time.perf_counter()
        prompts, fitted = summarizer.few_shot_prompts(test_set.dialogues, examples.pairs(count))
        new = [prompt for prompt in dict.fromkeys(prompts) if prompt not in summarized]
        # The examples lead every prompt: each batch runs them once (decoder-only models).
        summarized.update(zip(new, summarizer.complete(new, show_progress=True, desc=f"base {count}-shot greedy",
                                                       share_prefix=True)))
        generated[str(count)] = {
            "examples": examples.ids[:count],
            "runtime_s": round(time.perf_counter() - started, 1),
            "summaries": [{"id": i, "summary": summarized[prompt], "examples_in_prompt": n}
                          for i, prompt, n in zip(test_set.ids, prompts, fitted)],
        }
    return generated


def generate_variant(model_dir: Path, adapters: list[Path], test_set: TestSet, base: BaseConfig,
                     cfg: EvaluateConfig, name: str, seed: int, examples: Examples | None = None) -> dict:
    """Greedy summaries and `toxicity_samples` sampled ones of every test dialogue by one variant
    (adapters merged), with the precision used and the time it took: `results/summaries/<name>.json`.
    Given `examples`, also the greedy few-shot summaries for `evaluate.shots` (`few_shot`, see
    `generate_few_shot`)."""
    model, tokenizer, family = load_with_adapters(model_dir, adapters, merge_all=True)
    model.to(device())
    summarizer = Summarizer(model, tokenizer, family, GenerationSettings.from_configs(base, cfg))
    started = time.perf_counter()
    torch.manual_seed(seed)
    summaries, samples = summarizer.summarize_and_sample(test_set.dialogues, cfg.toxicity_samples, cfg.top_p,
                                                         show_progress=True, desc=name)
    generated = {
        "model": name,
        "precision": summarizer.precision,
        "runtime_s": round(time.perf_counter() - started, 1),
        "summaries": [{"id": i, "summary": s, "samples": k} for i, s, k in zip(test_set.ids, summaries, samples)],
    }
    if examples is not None:
        budget = cfg.few_shot_max_source_tokens or base.max_source_tokens
        few_shot = Summarizer(model, tokenizer, family, replace(summarizer.settings, max_source_tokens=budget))
        zero_shot = dict(zip(summarizer.prompts(test_set.dialogues), summaries))
        generated["few_shot"] = generate_few_shot(few_shot, test_set, examples, cfg.shots, zero_shot)
    return generated


@dataclass(frozen=True)
class VariantSummaries:
    greedy: list[str]
    # Per dialogue, `evaluate.toxicity_samples` of them; None for a greedy-only variant (few-shot).
    samples: list[list[str]] | None = None


def summaries_for(generated: dict, test_set: TestSet, source: Path, samples: int) -> VariantSummaries:
    """The summaries of a `generate_variant` result, checked to be of these test dialogues."""
    rows = generated["summaries"]
    if [row["id"] for row in rows] != test_set.ids:
        raise DataError(f"{source}: summaries of other test dialogues than data/filtered/test.jsonl "
                        f"(evaluate.max_test_rows or the data changed); run dvc repro")
    if any(len(row.get("samples", [])) != samples for row in rows):
        raise DataError(f"{source}: not {samples} sampled summaries per dialogue (evaluate.toxicity_samples "
                        f"changed); run dvc repro")
    return VariantSummaries([row["summary"] for row in rows], [row["samples"] for row in rows])


def few_shot_summaries_for(generated: dict, test_set: TestSet, source: Path,
                           shots: list[int]) -> dict[str, tuple[VariantSummaries, list[int]]]:
    """The base model's few-shot summaries in a `generate_variant` result, per variant name
    (`base_<k>shot`): greedy only, with how many examples each prompt held."""
    variants = {}
    for count in sorted(k for k in shots if k > 0):
        block = generated.get("few_shot", {}).get(str(count))
        if block is None:
            raise DataError(f"{source}: no {count}-shot summaries (evaluate.shots changed); run dvc repro")
        rows = block["summaries"]
        if [row["id"] for row in rows] != test_set.ids:
            raise DataError(f"{source}: {count}-shot summaries of other test dialogues than the test split; "
                            f"run dvc repro")
        variants[few_shot_name(count)] = (VariantSummaries([row["summary"] for row in rows]),
                                          [row["examples_in_prompt"] for row in rows])
    return variants


@dataclass(frozen=True)
class ToxicityScores:
    """One classifier's scores of one variant: per dialogue, its greedy summary and its samples."""

    greedy: list[float]
    samples: list[list[float]] | None

    @classmethod
    def score(cls, scorer: ToxicityScorer, summaries: VariantSummaries) -> ToxicityScores:
        if summaries.samples is None:
            return cls(scorer.score(summaries.greedy), None)
        k = len(summaries.samples[0]) if summaries.samples else 0
        flat = scorer.score(summaries.greedy + [text for texts in summaries.samples for text in texts])
        greedy, sampled = flat[: len(summaries.greedy)], flat[len(summaries.greedy):]
        return cls(greedy, [sampled[i * k : (i + 1) * k] for i in range(len(summaries.greedy))])

    def per_dialogue(self) -> dict[str, list[float]]:
        """The per-dialogue values whose means are the `TOXICITY_FIGURES` (the greedy mean alone
        for a variant without samples)."""
        if self.samples is None:
            return {"mean": self.greedy}
        return {"mean": self.greedy, "expected_max": expected_max_toxicity(self.samples),
                "probability": any_toxic(self.samples)}


def score_variants(summaries: dict[str, VariantSummaries], test_set: TestSet, scorers: list[ToxicityScorer],
                   cfg: EvaluateConfig, seed: int) -> tuple[dict, list[dict]]:
    """Returns (metrics per variant with intervals, plus `detox`: LoRA -> PPO; one prediction row per
    test dialogue)."""
    subsets = {"all": list(range(len(test_set.dialogues)))}
    if test_set.heated is not None:
        subsets["heated"] = [i for i, flag in enumerate(test_set.heated) if flag]
    toxicity = {name: {s.name: ToxicityScores.score(s, texts) for s in scorers} for name, texts in summaries.items()}
    metrics: dict = {"num_test_dialogues": len(test_set.dialogues), "toxicity_samples": cfg.toxicity_samples}
    if "heated" in subsets:
        metrics["num_heated_dialogues"] = len(subsets["heated"])
    for name, texts in summaries.items():
        metrics[name] = variant_metrics(texts, test_set.references, toxicity[name], subsets, seed, cfg)
    if {"lora", "ppo"} <= set(summaries):
        metrics["detox"] = detox_metrics(summaries, test_set.references, toxicity, subsets, seed, cfg)
    return metrics, prediction_rows(summaries, test_set, toxicity)


def subset_indices(subset: list[int], cfg: EvaluateConfig, seed: int):
    """Bootstrap draws within a subset of dialogues, as positions into the subset's values."""
    return bootstrap_indices(len(subset), cfg.bootstrap_resamples, seed)


def pick(values: list[float], subset: list[int]) -> list[float]:
    return [values[i] for i in subset]


def variant_metrics(texts: VariantSummaries, references: list[list[str]], toxicity: dict[str, ToxicityScores],
                    subsets: dict[str, list[int]], seed: int, cfg: EvaluateConfig) -> dict:
    """ROUGE both ways (whole split, ROUGE-L with its interval), summary length, and every toxicity
    figure with its interval for each subset (`heated` nested)."""
    block = rouge(texts.greedy, references)
    rouge_l = rouge_per_dialogue(texts.greedy, references)["best"]["rougeL"]
    interval = mean_interval(rouge_l, subset_indices(subsets["all"], cfg, seed))
    block.update(rougeL_ci_low=round(interval["ci_low"], 2), rougeL_ci_high=round(interval["ci_high"], 2))
    block["summary_words_mean"] = round(sum(len(s.split()) for s in texts.greedy) / max(len(texts.greedy), 1), 2)
    block.update(repetition_figures(texts, subsets["all"], cfg, seed))
    for subset_name, subset in subsets.items():
        target = block if subset_name == "all" else block.setdefault(subset_name, {})
        draws = subset_indices(subset, cfg, seed)
        for scorer, scores in toxicity.items():
            for figure, values in scores.per_dialogue().items():
                stats = mean_interval(pick(values, subset), draws)
                target.update(rounded_interval(f"toxicity_{scorer}_{figure}", stats))
    return block


def repetition_figures(texts: VariantSummaries, dialogues: list[int], cfg: EvaluateConfig, seed: int) -> dict:
    """distinct-2 of the greedy summaries and, where there are samples, of the sampled ones (per
    dialogue the mean over its samples), each with its interval: a "detox" by looping shows here."""
    per_dialogue = {"distinct_2": [distinct_ngrams(text) for text in texts.greedy]}
    if texts.samples is not None:
        per_dialogue["distinct_2_samples"] = [sum(map(distinct_ngrams, group)) / len(group) for group in texts.samples]
    draws = subset_indices(dialogues, cfg, seed)
    figures = {}
    for key, values in per_dialogue.items():
        figures.update(rounded_interval(key, mean_interval(values, draws)))
    return figures


def rounded_interval(key: str, stats: dict[str, float]) -> dict[str, float]:
    """`key`, `key_ci_low` and `key_ci_high` of a `mean_interval`, to 4 decimals."""
    return {key: round(stats["mean"], 4), f"{key}_ci_low": round(stats["ci_low"], 4),
            f"{key}_ci_high": round(stats["ci_high"], 4)}


def detox_metrics(summaries: dict[str, VariantSummaries], references: list[list[str]],
                  toxicity: dict[str, dict[str, ToxicityScores]], subsets: dict[str, list[int]], seed: int,
                  cfg: EvaluateConfig) -> dict:
    """LoRA -> PPO: % change of every toxicity figure per subset, and ROUGE-L's change in points,
    each with a paired bootstrap interval (the same resampled dialogues for both models)."""
    rouge_l = {name: rouge_per_dialogue(summaries[name].greedy, references)["best"]["rougeL"] for name in ("lora", "ppo")}
    rouge_change = change_interval(rouge_l["lora"], rouge_l["ppo"], subset_indices(subsets["all"], cfg, seed))
    detox: dict = {f"rougeL_{key}": value for key, value in rouge_change.items() if not key.startswith("change_pct")}
    for subset_name, subset in subsets.items():
        target = detox if subset_name == "all" else detox.setdefault(subset_name, {})
        draws = subset_indices(subset, cfg, seed)
        for scorer in toxicity["lora"]:
            before, after = toxicity["lora"][scorer].per_dialogue(), toxicity["ppo"][scorer].per_dialogue()
            for figure in TOXICITY_FIGURES:
                change = change_interval(pick(before[figure], subset), pick(after[figure], subset), draws)
                # relative and absolute: a judge with a high floor cannot show a large relative change
                target.update({f"toxicity_{scorer}_{figure}_{key}": value for key, value in change.items()})
    return detox


def prediction_rows(summaries: dict[str, VariantSummaries], test_set: TestSet,
                    toxicity: dict[str, dict[str, ToxicityScores]]) -> list[dict]:
    """One row per test dialogue: its references and, per variant, the greedy summary with its
    toxicity and the sampled summaries' worst toxicity per classifier."""
    rows = []
    for index, (dialogue_id, dialogue, refs) in enumerate(zip(test_set.ids, test_set.dialogues, test_set.references)):
        row = {"id": dialogue_id, "dialogue": dialogue, "references": refs}
        if test_set.heated is not None:
            row["heated"] = test_set.heated[index]
        for name, texts in summaries.items():
            row[name] = texts.greedy[index]
            for scorer, scores in toxicity[name].items():
                row[f"{name}_toxicity_{scorer}"] = round(scores.greedy[index], 4)
                if scores.samples is not None:
                    row[f"{name}_toxicity_{scorer}_sample_max"] = round(max(scores.samples[index]), 4)
        rows.append(row)
    return rows


def toxicity_histogram(rows: list[dict], variants: list[str], scorer: str, bins: int = 10) -> list[dict]:
    """Counts of greedy summaries per toxicity bin ([0, 0.1), ..., [0.9, 1.0]) for each variant: a DVC plot."""
    table = [{"toxicity": round((b + 0.5) / bins, 3), **dict.fromkeys(variants, 0)} for b in range(bins)]
    for row in rows:
        for variant in variants:
            index = min(int(row[f"{variant}_toxicity_{scorer}"] * bins), bins - 1)
            table[index][variant] += 1
    return table
