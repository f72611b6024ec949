"""evaluate: ROUGE-1/2/L/Lsum and toxicity of the base and LoRA models on the test split.

Run: `python -m detoxsum.stages.evaluate`. Reads `base` and `evaluate` from params.yaml, the fetched
model, the adapters and `data/filtered/test.jsonl`; writes `metrics/evaluate.json` (one flat block
per model) and `results/predictions.jsonl` (dialogue, references and each model's summary).
"""

from pathlib import Path

from transformers import set_seed

from detoxsum.config import load_stage_config
from detoxsum.data import read_jsonl_split
from detoxsum.evaluation import evaluate_variants
from detoxsum.outputs import run_stage, write_json_atomic, write_jsonl_atomic
from detoxsum.reward import build_scorer

MODEL_DIR = Path("artifacts/model")
LORA_DIR = Path("artifacts/lora")
TEST_FILE = Path("data/filtered/test.jsonl")
METRICS_FILE = Path("metrics/evaluate.json")
PREDICTIONS_FILE = Path("results/predictions.jsonl")


def main() -> None:
    base = load_stage_config("base")
    cfg = load_stage_config("evaluate")
    set_seed(base.seed)
    scorers = [build_scorer(spec) for spec in cfg.toxicity_classifiers]
    variants = {"base": [], "lora": [LORA_DIR]}
    metrics, rows = evaluate_variants(MODEL_DIR, variants, read_jsonl_split(TEST_FILE), base, cfg, scorers)
    write_jsonl_atomic(PREDICTIONS_FILE, rows)
    write_json_atomic(METRICS_FILE, metrics)
    for name in variants:
        print(f"evaluate: {name}: {metrics[name]}")


if __name__ == "__main__":
    run_stage(main)
