"""The one module that talks to MLflow: log a pipeline run, register its model, gate `champion`.

Embedded by default: tracking and registry live in a SQLite file, `mlflow.db` at the repository
root, with artifacts in `mlruns/` beside it; `MLFLOW_TRACKING_URI` points both at a team server.
Browse with `mlflow ui --backend-store-uri sqlite:///mlflow.db`.

`register_pipeline_run` logs params, every metrics file, the plots, the git commit and the dvc.lock
hash to one run, logs the model as a pyfunc (`DialogueSummarizer`: the base model *reference* plus
the adapter folders, so a version costs megabytes, not the base weights), registers it as a new
version and points alias `candidate` at it. Alias `champion` moves only when `promotion_decision`
says so. Every version carries a fingerprint of commit + params + metrics; a rerun with the same
fingerprint reuses that version instead of creating a new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from filelock import FileLock
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from detoxsum.config import RegisterConfig
from detoxsum.errors import DataError, ModelLoadError, ParamsError, first_line
from detoxsum.summarizer import GenerationSettings, load_summarizer

CANDIDATE, CHAMPION = "candidate", "champion"
FINGERPRINT_TAG = "fingerprint"
LOGGED_MODEL_NAME = "summarizer"
# What the pyfunc needs at load time, pinned to the versions that logged it. `detoxsum` itself is not
# on PyPI: the environment that loads the model must have this project installed (`make setup`).
RUNTIME_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "peft", "accelerate", "gguf",
                    "sentencepiece", "mlflow")
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string")]),  # one dialogue per row
    outputs=Schema([ColSpec("string")]),
    params=ParamSchema([ParamSpec("show_progress", "boolean", False)]),
)


# --- where MLflow lives -------------------------------------------------------------------------


def embedded_uri(root: Path) -> str:
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def tracking_uri(root: Path) -> str:
    """`MLFLOW_TRACKING_URI` if set (a team server), else the SQLite file in `root`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or embedded_uri(root)


def connect(uri: str) -> MlflowClient:
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(client: MlflowClient, name: str, root: Path, uri: str) -> str:
    """Get or create the experiment; the embedded store keeps artifacts in `root/mlruns`.

    The location is set explicitly because MLflow's default is relative to the working directory,
    which for a queued `dvc exp run` is a temporary copy that DVC deletes afterwards.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = (root / "mlruns").resolve().as_uri() if uri == embedded_uri(root) else None
    return client.create_experiment(name, artifact_location=location)


# --- the promotion gate (pure) ------------------------------------------------------------------


@dataclass(frozen=True)
class GateScores:
    """The two numbers the gate compares: a ROUGE score (0-100) and a mean toxicity (0-1)."""

    rouge: float
    toxicity: float


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def toxicity_key(cfg: RegisterConfig) -> str:
    return f"toxicity_{cfg.toxicity_classifier}_mean"


def promotion_decision(candidate: GateScores, champion: GateScores | None, cfg: RegisterConfig,
                       champion_name: str = "champion") -> Decision:
    """Promote when ROUGE >= champion's - rouge_tolerance and toxicity <= champion's + toxicity_tolerance.

    The reason spells out each comparison with its numbers, e.g.
    `rougeL 27.10 < 28.81 (champion v3 29.31 - tolerance 0.5)`.
    """
    if champion is None:
        return Decision(True, "no champion yet")
    rouge_floor = champion.rouge - cfg.rouge_tolerance
    toxicity_ceiling = champion.toxicity + cfg.toxicity_tolerance
    rouge_ok, toxicity_ok = candidate.rouge >= rouge_floor, candidate.toxicity <= toxicity_ceiling
    rouge_text = (f"{cfg.rouge_metric} {candidate.rouge:.2f} {'>=' if rouge_ok else '<'} {rouge_floor:.2f} "
                  f"({champion_name} {champion.rouge:.2f} - tolerance {cfg.rouge_tolerance:g})")
    toxicity_text = (f"{toxicity_key(cfg)} {candidate.toxicity:.4f} {'<=' if toxicity_ok else '>'} "
                     f"{toxicity_ceiling:.4f} ({champion_name} {champion.toxicity:.4f} + tolerance "
                     f"{cfg.toxicity_tolerance:g})")
    if rouge_ok and toxicity_ok:
        return Decision(True, f"{rouge_text} and {toxicity_text}")
    failures = [text for text, ok in ((rouge_text, rouge_ok), (toxicity_text, toxicity_ok)) if not ok]
    return Decision(False, "; ".join(failures))


def gate_scores(evaluate_metrics: dict, cfg: RegisterConfig) -> GateScores:
    """Read the gated numbers of model `cfg.model` out of metrics/evaluate.json's content."""
    block = evaluate_metrics.get(cfg.model)
    if not isinstance(block, dict):
        raise DataError(f"metrics/evaluate.json: no block '{cfg.model}' (register.model); run the evaluate stage")
    if toxicity_key(cfg) not in block:
        found = sorted(key[len("toxicity_"):-len("_mean")] for key in block
                       if key.startswith("toxicity_") and key.endswith("_mean"))
        raise ParamsError(f"params key 'register.toxicity_classifier' is {cfg.toxicity_classifier!r}, but "
                          f"metrics/evaluate.json has toxicity only for {found} (evaluate.toxicity_classifiers)")
    return GateScores(rouge=float(block[cfg.rouge_metric]), toxicity=float(block[toxicity_key(cfg)]))


# --- the pyfunc model ---------------------------------------------------------------------------


class DialogueSummarizer(mlflow.pyfunc.PythonModel):
    """MLflow model: dialogues in (a list of strings, or a DataFrame with a `dialogue` column),
    summaries out. Loads the base model from the bundled folder if the version has one, else from
    the recorded `fetch.model` reference, then applies the logged adapters in order."""

    def load_context(self, context) -> None:
        config = context.model_config
        base_model = context.artifacts.get("base_model", config["base_model"])
        adapters = [context.artifacts[name] for name in config["adapters"]]
        self.summarizer = load_summarizer(base_model, adapters, GenerationSettings.from_dict(config["generation"]))

    # A DataFrame hint, not list[str]: MLflow would infer the signature from list[str] and drop the
    # explicit one's `show_progress` param; its schema enforcement hands over a DataFrame anyway.
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list[str]:
        show_progress = bool((params or {}).get("show_progress", False))
        return self.summarizer.summarize(dialogues_of(model_input), show_progress=show_progress)


def dialogues_of(model_input: Any) -> list[str]:
    """The dialogues in a DataFrame (`dialogue` column, else the first), a list, or one string."""
    if hasattr(model_input, "columns"):  # a DataFrame, as MLflow's schema enforcement hands it over
        column = "dialogue" if "dialogue" in model_input.columns else model_input.columns[0]
        return [str(text) for text in model_input[column]]
    if isinstance(model_input, str):
        return [model_input]
    return [str(text) for text in model_input]


def pinned_requirements() -> list[str]:
    pins = []
    for package in RUNTIME_PACKAGES:
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return pins


def load_model(uri: str, root: Path):
    """Load a logged summarizer (`models:/name@champion`, `runs:/…`, a folder) as a pyfunc model.

    `root` holds the embedded `mlflow.db`; a missing one is an error rather than a new, empty
    database that MLflow would otherwise create in whatever folder the command ran from.
    """
    tracking = tracking_uri(root)
    if tracking == embedded_uri(root) and uri.startswith(("models:/", "runs:/")) and not (root / "mlflow.db").is_file():
        raise ModelLoadError(f"cannot resolve {uri!r}: no registry here ({(root / 'mlflow.db').resolve()} not found); "
                             "run `dvc repro` in this folder or set MLFLOW_TRACKING_URI")
    connect(tracking)
    try:
        return mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as exc:
        raise ModelLoadError(f"unknown model URI {uri!r} ({first_line(exc)})") from exc


# --- logging and registering a pipeline run -----------------------------------------------------


@dataclass(frozen=True)
class PipelineRun:
    """Everything `register` records about one pipeline result (the stage gathers it)."""

    params: dict  # params.yaml as a mapping
    metrics: dict[str, dict]  # metrics file stem ("evaluate", "train_lora", ...) -> its content
    git_commit: str
    dvc_lock_sha256: str
    base_model: str  # the fetch.model reference
    adapters: dict[str, Path]  # name -> adapter folder, in the order they are applied
    settings: GenerationSettings
    bundled_base_dir: Path | None = None  # copied into the version when set (self-contained model)
    artifact_files: list[Path] = field(default_factory=list)  # params.yaml, dvc.lock, metrics files, plots
    tags: dict[str, str] = field(default_factory=dict)  # e.g. the DVC experiment name

    def fingerprint(self) -> str:
        """sha256 of commit + params (without `register`) + metrics: equal means same result."""
        params = {key: value for key, value in self.params.items() if key != "register"}
        payload = json.dumps({"commit": self.git_commit, "params": params, "metrics": self.metrics},
                             sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()


@contextlib.contextmanager
def registry_lock(uri: str, root: Path) -> Iterator[None]:
    """Hold `mlflow.db.lock` while registering into the embedded SQLite store: two queued experiments
    registering at once (`dvc queue start -j 2`) would otherwise race to create the model, number
    versions and move the champion alias. A tracking server orders requests itself."""
    if uri != embedded_uri(root):
        yield
        return
    with FileLock(str(root / "mlflow.db.lock")):
        yield


def register_pipeline_run(run: PipelineRun, cfg: RegisterConfig, uri: str, root: Path) -> dict:
    """Log + register `run` (or reuse its version), set `candidate`, gate `champion`; returns the decision."""
    with registry_lock(uri, root):
        return _register(run, cfg, uri, root)


def _register(run: PipelineRun, cfg: RegisterConfig, uri: str, root: Path) -> dict:
    candidate_scores = gate_scores(run.metrics.get("evaluate", {}), cfg)
    client = connect(uri)
    fingerprint = run.fingerprint()
    existing = find_version(client, cfg.model_name, fingerprint)
    model_version = existing or log_and_register(run, cfg, fingerprint, experiment_id(client, cfg.experiment, root, uri))
    client.set_registered_model_alias(cfg.model_name, CANDIDATE, model_version.version)
    previous = current_version(client, cfg.model_name, CHAMPION)
    decision = decide(model_version, previous, candidate_scores, cfg)
    if decision.promote:
        client.set_registered_model_alias(cfg.model_name, CHAMPION, model_version.version)
    client.set_model_version_tag(cfg.model_name, model_version.version, "promotion", decision.reason[:4000])
    # Few keys: `dvc metrics show` and `dvc exp show` make a column of each.
    return {
        "model_name": cfg.model_name,
        "version": int(model_version.version),
        "reused_version": existing is not None,
        "promoted": decision.promote,
        "reason": decision.reason,
        "champion_version": int(model_version.version if decision.promote else previous.version),
        "previous_champion_version": int(previous.version) if previous else None,
    }


def decide(candidate, champion, candidate_scores: GateScores, cfg: RegisterConfig) -> Decision:
    """The gate against the champion version, whose scores are read from its tags."""
    if champion is None:
        return promotion_decision(candidate_scores, None, cfg)
    if champion.version == candidate.version:
        return Decision(True, f"v{candidate.version} is already the champion")
    label = f"champion v{champion.version}"
    try:
        champion_scores = GateScores(rouge=float(champion.tags[cfg.rouge_metric]),
                                     toxicity=float(champion.tags[toxicity_key(cfg)]))
    except (KeyError, ValueError):
        return Decision(False, f"{label} has no tags {cfg.rouge_metric!r} and {toxicity_key(cfg)!r} to compare "
                               f"with; move the alias by hand if v{candidate.version} should replace it")
    return promotion_decision(candidate_scores, champion_scores, cfg, label)


def find_version(client: MlflowClient, model_name: str, fingerprint: str):
    """The version already registered for this fingerprint, if any."""
    if not _registered_model_exists(client, model_name):
        return None
    found = client.search_model_versions(f"name = '{model_name}' and tags.{FINGERPRINT_TAG} = '{fingerprint}'")
    return min(found, key=lambda mv: int(mv.version)) if found else None


def current_version(client: MlflowClient, model_name: str, alias: str):
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException:  # no such alias yet
        return None


def log_and_register(run: PipelineRun, cfg: RegisterConfig, fingerprint: str, experiment: str):
    """One MLflow run with params, metrics, artifacts and the pyfunc model; then a new version.

    The version is tagged with its model's evaluate.json block (every ROUGE and toxicity number), so
    a later gate can compare against it whichever metric the gate is set to by then.
    """
    scores = {key: repr(value) for key, value in run.metrics["evaluate"][cfg.model].items()
              if isinstance(value, (int, float)) and not isinstance(value, bool)}
    version_tags = {
        **scores,
        FINGERPRINT_TAG: fingerprint,
        "git_commit": run.git_commit,
        "dvc_lock_sha256": run.dvc_lock_sha256,
        "base_model": run.base_model,
        "pipeline_model": cfg.model,
    }
    run_tags = {**run.tags, **{key: version_tags[key] for key in (FINGERPRINT_TAG, "git_commit", "dvc_lock_sha256")}}
    with mlflow.start_run(experiment_id=experiment, run_name=f"{cfg.model}-{run.git_commit[:8]}", tags=run_tags):
        mlflow.log_params(flatten(run.params))
        mlflow.log_metrics(numeric_metrics(run.metrics))
        for path in run.artifact_files:
            log_artifact_path(path)
        with warnings.catch_warnings():
            # MLflow suggests an input example; logging one would load and run the model at log time.
            warnings.filterwarnings("ignore", message=r".*input example was not provided", category=UserWarning)
            model_info = log_summarizer(run)
    return mlflow.register_model(model_info.model_uri, cfg.model_name, tags=version_tags)


def log_summarizer(run: PipelineRun):
    """Log the pyfunc model into the active run: adapters (and the base model, if bundled) as artifacts."""
    return mlflow.pyfunc.log_model(
        name=LOGGED_MODEL_NAME,
        python_model=DialogueSummarizer(),
        artifacts=model_artifacts(run),
        model_config={"base_model": run.base_model, "adapters": list(run.adapters),
                      "generation": run.settings.to_dict()},
        signature=SIGNATURE,
        pip_requirements=pinned_requirements(),
    )


def model_artifacts(run: PipelineRun) -> dict[str, str]:
    artifacts = {name: str(path) for name, path in run.adapters.items()}
    if run.bundled_base_dir is not None:
        artifacts["base_model"] = str(run.bundled_base_dir)
    return artifacts


def log_artifact_path(path: Path) -> None:
    """Log a file or folder under its own relative path, so the run mirrors the repository layout."""
    parent = path.parent.as_posix()
    destination = None if parent in ("", ".") else parent
    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path=path.as_posix())
    elif path.is_file():
        mlflow.log_artifact(str(path), artifact_path=destination)


def flatten(mapping: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists become JSON text (MLflow params are strings)."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list) else value
    return flat


def numeric_metrics(metrics: dict[str, dict]) -> dict[str, float]:
    """Every number of every metrics file, as `<file stem>.<key path>` (e.g. `evaluate.ppo.rougeL`)."""
    flat = flatten(metrics)
    return {key: float(value) for key, value in flat.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def _registered_model_exists(client: MlflowClient, model_name: str) -> bool:
    try:
        client.get_registered_model(model_name)
    except MlflowException:
        return False
    return True
