"""evaluate: ROUGE-1/2/L/Lsum and toxicity of the base, LoRA and PPO models on the test split.

Run: `python -m detoxsum.stages.evaluate`. Reads `base` and `evaluate` from params.yaml, the fetched
model, both adapters and `data/filtered/test.jsonl`; writes
- `metrics/evaluate.json`: one flat block per model (`base`, `lora`, `ppo`) with ROUGE and toxicity
  mean/std/share-above-0.5 per classifier, plus `detox`: % change of mean toxicity LoRA -> PPO;
- `results/predictions.jsonl`: dialogue, references, each model's summary and its toxicity;
- `plots/toxicity/<classifier>.csv`: how many LoRA and PPO summaries fall in each toxicity bin.
"""

from pathlib import Path

from transformers import set_seed

from detoxsum.config import load_stage_config
from detoxsum.data import read_jsonl_split
from detoxsum.evaluation import evaluate_variants, toxicity_change, toxicity_histogram
from detoxsum.outputs import atomic_dir, run_stage, write_json_atomic, write_jsonl_atomic
from detoxsum.reward import build_scorer

MODEL_DIR = Path("artifacts/model")
LORA_DIR = Path("artifacts/lora")
PPO_DIR = Path("artifacts/ppo")
TEST_FILE = Path("data/filtered/test.jsonl")
METRICS_FILE = Path("metrics/evaluate.json")
PREDICTIONS_FILE = Path("results/predictions.jsonl")
HISTOGRAM_DIR = Path("plots/toxicity")


def main() -> None:
    base = load_stage_config("base")
    cfg = load_stage_config("evaluate")
    set_seed(base.seed)
    scorers = [build_scorer(spec) for spec in cfg.toxicity_classifiers]
    variants = {"base": [], "lora": [LORA_DIR], "ppo": [LORA_DIR, PPO_DIR]}
    metrics, rows = evaluate_variants(MODEL_DIR, variants, read_jsonl_split(TEST_FILE), base, cfg, scorers)
    metrics["detox"] = toxicity_change(metrics, "lora", "ppo", scorers)
    with atomic_dir(HISTOGRAM_DIR) as tmp:
        for scorer in scorers:
            table = toxicity_histogram(rows, ["lora", "ppo"], scorer.name)
            lines = ["toxicity,lora,ppo"] + [f"{r['toxicity']},{r['lora']},{r['ppo']}" for r in table]
            (tmp / f"{scorer.name}.csv").write_text("\n".join(lines) + "\n")
    write_jsonl_atomic(PREDICTIONS_FILE, rows)
    write_json_atomic(METRICS_FILE, metrics)
    for name in variants:
        print(f"evaluate: {name}: {metrics[name]}")
    print(f"evaluate: detox LoRA -> PPO: {metrics['detox']}")


if __name__ == "__main__":
    run_stage(main)
