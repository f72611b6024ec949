"""evaluate: ROUGE and toxicity of the base, LoRA and PPO summaries of the test split, with intervals.

Run: `python -m detoxsum.stages.evaluate`. Reads `evaluate` from params.yaml, the test split and the
summaries the `generate_*` stages wrote (`results/summaries/{base,lora,ppo}.json`); writes
- `metrics/evaluate.json`: `test_set_fingerprint`, and one block per model (`base`, `lora`, `ppo`): ROUGE-1/2/L/Lsum against the
  best reference and over (summary, reference) pairs (`*_pairs`), ROUGE-L's 95 % interval, mean
  summary length, and per classifier the greedy mean, expected maximum and probability of toxicity
  with 95 % intervals, for the whole split and (`heated`) its heated arguments; `base_<k>shot` for
  every `evaluate.shots` count k above 0: the base model with k training examples in its prompt,
  greedy only (so of toxicity the greedy mean alone), with `examples_in_prompt_mean`, how many of
  the k fitted the prompt budget (`evaluate.few_shot_max_source_tokens`) on average; plus `detox`: the
  % change of each toxicity figure LoRA -> PPO and ROUGE-L's change, with paired intervals;
- `results/predictions.jsonl`: dialogue, references, each model's summary, its toxicity and the
  worst toxicity among its samples (few-shot variants: summary and toxicity);
- `plots/toxicity/<classifier>.csv`: how many LoRA and PPO greedy summaries fall in each toxicity bin.
"""

import json
from pathlib import Path

from detoxsum.config import load_stage_config
from detoxsum.data.sources import read_jsonl_split
from detoxsum.errors import DataError
from detoxsum.outputs import atomic_dir, run_stage, write_json_atomic, write_jsonl_atomic
from detoxsum.scoring.evaluation import (
    TestSet,
    few_shot_summaries_for,
    score_variants,
    summaries_for,
    toxicity_histogram,
)
from detoxsum.scoring.reward import build_scorer
from detoxsum.stages.paths import HISTOGRAM_DIR, PREDICTIONS_FILE, SUMMARIES_DIR, TEST_FILE, metrics_file, timing_file

VARIANTS = ("base", "lora", "ppo")


def main() -> None:
    base = load_stage_config("base")
    cfg = load_stage_config("evaluate")
    scorers = [build_scorer(spec) for spec in cfg.toxicity_classifiers]
    test_set = TestSet.from_split(read_jsonl_split(TEST_FILE), cfg.max_test_rows)
    generated = {name: read_generated(SUMMARIES_DIR / f"{name}.json") for name in VARIANTS}
    summaries = {name: summaries_for(generated[name], test_set, SUMMARIES_DIR / f"{name}.json", cfg.toxicity_samples)
                 for name in VARIANTS}
    few_shot = few_shot_summaries_for(generated["base"], test_set, SUMMARIES_DIR / "base.json", cfg.shots)
    # base, base_1shot, ..., lora, ppo: the few-shot blocks beside the zero-shot one
    summaries = {"base": summaries.pop("base"), **{name: texts for name, (texts, _) in few_shot.items()}, **summaries}
    metrics, rows = score_variants(summaries, test_set, scorers, cfg, base.seed)
    for name in summaries:
        metrics[name]["precision"] = generated[name.split("_", 1)[0]]["precision"]
    for name, (_, fitted) in few_shot.items():
        metrics[name]["examples_in_prompt_mean"] = round(sum(fitted) / max(len(fitted), 1), 2)
    # The registry compares two versions only when this matches (promotion.py).
    metrics["test_set_fingerprint"] = test_set.fingerprint()
    with atomic_dir(HISTOGRAM_DIR) as tmp:
        for scorer in scorers:
            table = toxicity_histogram(rows, ["lora", "ppo"], scorer.name)
            lines = ["toxicity,lora,ppo"] + [f"{r['toxicity']},{r['lora']},{r['ppo']}" for r in table]
            (tmp / f"{scorer.name}.csv").write_text("\n".join(lines) + "\n")
    write_jsonl_atomic(PREDICTIONS_FILE, rows)
    write_json_atomic(metrics_file("evaluate"), metrics)
    for name in summaries:
        print(f"evaluate: {name}: {headline(metrics[name], scorers)}")
    print(f"evaluate: detox LoRA -> PPO: {metrics['detox']}")


def headline(block: dict, scorers) -> dict:
    """ROUGE-L, length and each classifier's greedy mean and expected max (where sampled): one readable line."""
    keys = ["rougeL", "rougeL_pairs", "summary_words_mean", "examples_in_prompt_mean"]
    keys += [f"toxicity_{s.name}_{figure}" for s in scorers for figure in ("mean", "expected_max")]
    return {key: block[key] for key in keys if key in block}


def read_generated(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: not found; run the generate stages (dvc repro)")
    return json.loads(path.read_text())


if __name__ == "__main__":
    run_stage(main, timing_file("evaluate"))
