"""fetch: materialise the base model and the raw data locally, so every later stage is offline.

Run: `python -m detoxsum.stages.fetch` (or `dvc repro fetch`). Reads `base` and `fetch` from
params.yaml; writes `artifacts/model/` (safetensors + config + tokenizer) and
`data/raw/{train,validation,test}.jsonl` with columns id, dialogue, summary.
"""

from pathlib import Path

from transformers import set_seed

from detoxsum.config import load_stage_config
from detoxsum.data import SPLITS, load_raw_splits
from detoxsum.modeling import load_source_model, save_model
from detoxsum.outputs import atomic_dir, run_stage

MODEL_DIR = Path("artifacts/model")
RAW_DIR = Path("data/raw")


def main() -> None:
    base = load_stage_config("base")
    cfg = load_stage_config("fetch")
    set_seed(base.seed)
    splits = load_raw_splits(cfg, base.seed)  # data first: it fails faster than a model download
    model, tokenizer = load_source_model(cfg.model, cfg.trust_remote_code)
    with atomic_dir(RAW_DIR) as tmp:
        for name in SPLITS:
            splits[name].to_json(tmp / f"{name}.jsonl", lines=True, force_ascii=False)
    with atomic_dir(MODEL_DIR) as tmp:
        save_model(model, tokenizer, tmp)
    print(f"fetch: {', '.join(f'{n}={len(splits[n])}' for n in SPLITS)} rows; model {cfg.model!r} -> {MODEL_DIR}")


if __name__ == "__main__":
    run_stage(main)
