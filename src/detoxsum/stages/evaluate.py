"""evaluate: ROUGE-1/2/L/Lsum and toxicity of the base, LoRA and PPO summaries of the test split.

Run: `python -m detoxsum.stages.evaluate`. Reads `evaluate` from params.yaml, the test split and the
summaries the `generate_*` stages wrote (`results/summaries/{base,lora,ppo}.json`); writes
- `metrics/evaluate.json`: one flat block per model (`base`, `lora`, `ppo`) with ROUGE, toxicity
  mean/std/share-above-0.5 per classifier and the precision its summaries were generated in, plus
  `detox`: % change of mean toxicity LoRA -> PPO;
- `results/predictions.jsonl`: dialogue, references, each model's summary and its toxicity;
- `plots/toxicity/<classifier>.csv`: how many LoRA and PPO summaries fall in each toxicity bin.
"""

import json
from pathlib import Path

from detoxsum.config import load_stage_config
from detoxsum.data import read_jsonl_split
from detoxsum.errors import DataError
from detoxsum.evaluation import TestSet, score_variants, summaries_for, toxicity_change, toxicity_histogram
from detoxsum.outputs import atomic_dir, run_stage, write_json_atomic, write_jsonl_atomic
from detoxsum.reward import build_scorer

TEST_FILE = Path("data/filtered/test.jsonl")
SUMMARIES_DIR = Path("results/summaries")
VARIANTS = ("base", "lora", "ppo")
METRICS_FILE = Path("metrics/evaluate.json")
PREDICTIONS_FILE = Path("results/predictions.jsonl")
HISTOGRAM_DIR = Path("plots/toxicity")


def main() -> None:
    cfg = load_stage_config("evaluate")
    scorers = [build_scorer(spec) for spec in cfg.toxicity_classifiers]
    test_set = TestSet.from_split(read_jsonl_split(TEST_FILE), cfg.max_test_rows)
    generated = {name: read_generated(SUMMARIES_DIR / f"{name}.json") for name in VARIANTS}
    summaries = {name: summaries_for(generated[name], test_set, SUMMARIES_DIR / f"{name}.json") for name in VARIANTS}
    metrics, rows = score_variants(summaries, test_set, scorers)
    for name in VARIANTS:
        metrics[name]["precision"] = generated[name]["precision"]
    metrics["detox"] = toxicity_change(metrics, "lora", "ppo", scorers)
    with atomic_dir(HISTOGRAM_DIR) as tmp:
        for scorer in scorers:
            table = toxicity_histogram(rows, ["lora", "ppo"], scorer.name)
            lines = ["toxicity,lora,ppo"] + [f"{r['toxicity']},{r['lora']},{r['ppo']}" for r in table]
            (tmp / f"{scorer.name}.csv").write_text("\n".join(lines) + "\n")
    write_jsonl_atomic(PREDICTIONS_FILE, rows)
    write_json_atomic(METRICS_FILE, metrics)
    for name in VARIANTS:
        print(f"evaluate: {name}: {metrics[name]}")
    print(f"evaluate: detox LoRA -> PPO: {metrics['detox']}")


def read_generated(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: not found; run the generate stages (dvc repro)")
    return json.loads(path.read_text())


if __name__ == "__main__":
    run_stage(main)
