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
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import mlflow
import pandas as pd
from filelock import FileLock
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from detoxsum.config import RegisterConfig
from detoxsum.errors import ModelLoadError, first_line
from detoxsum.outputs import jsonl_text, read_jsonl
from detoxsum.ship.promotion import (
    Decision, GateScores, gate_scores, paired_changes, paired_decision, promotion_decision, test_set_fingerprint, toxicity_key,
)
from detoxsum.ship.serving import INPUT_COLUMN, OUTPUT_COLUMN
from detoxsum.models.summarizer import GenerationSettings

CANDIDATE, CHAMPION = "candidate", "champion"
FINGERPRINT_TAG = "fingerprint"
TEST_SET_TAG = "test_set_fingerprint"
PREDICTIONS_ARTIFACT = "results/predictions.jsonl"  # per-dialogue summaries and toxicity: the paired gate
# The input example when a run has no test predictions at hand (written for the project).
EXAMPLE_DIALOGUE = ("#Person1#: Did you book the room for Thursday's review?\n"
                    "#Person2#: Not yet. The big one is taken, so I'll ask for the one by the kitchen.\n"
                    "#Person1#: Fine, as long as the projector works this time.")
LOGGED_MODEL_NAME = "summarizer"
# What loading the model imports (serving.py and summarizer.py's imports), pinned to the versions
# that logged it, without local labels such as `+cpu` that no package index serves. The project's
# own code travels with the model (`code_paths`), so `detoxsum` is not among them.
RUNTIME_PACKAGES = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "huggingface-hub", "peft",
                    "accelerate", "sentencepiece", "PyYAML", "tqdm")
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the detoxsum package, logged as code
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", INPUT_COLUMN)]),  # one dialogue per row
    outputs=Schema([ColSpec("string", OUTPUT_COLUMN)]),
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


# --- the pyfunc model ---------------------------------------------------------------------------


def pinned_requirements() -> list[str]:
    pins = []
    for package in RUNTIME_PACKAGES:
        try:
            pins.append(f"{package}=={public_version(version(package))}")
        except PackageNotFoundError:
            continue
    return pins


def public_version(installed: str) -> str:
    """`2.13.0+cpu` -> `2.13.0`: a local version label names a build no package index serves."""
    return installed.split("+", 1)[0]


def load_model(uri: str, root: Path):
    """Load a logged summarizer (`models:/name@champion`, `runs:/…`, a folder) as a pyfunc model.

    `root` holds the embedded `mlflow.db`; a missing one is an error rather than a new, empty
    database that MLflow would otherwise create in whatever folder the command ran from.
    """
    tracking = tracking_uri(root)
    if tracking == embedded_uri(root) and uri.startswith(("models:/", "runs:/")) and not (root / "mlflow.db").is_file():
        raise ModelLoadError(f"cannot resolve {uri!r}: no registry here ({(root / 'mlflow.db').resolve()} not found); "
                             "run `dvc repro` in this folder or set MLFLOW_TRACKING_URI")
    client = connect(tracking)
    registered = registered_version(client, uri)
    location = uri if registered is None else local_files(client, *registered) or uri
    try:
        return mlflow.pyfunc.load_model(location)
    except (MlflowException, OSError) as exc:
        raise ModelLoadError(f"unknown model URI {uri!r} ({first_line(exc)})") from exc


def registered_version(client: MlflowClient, uri: str) -> tuple[str, str] | None:
    """(name, version) of `models:/name@alias` or `models:/name/N` (None for other URIs); a model,
    alias or version that does not exist is one line saying which part is missing and what there is."""
    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", uri)
    if match is None:
        return None
    name, alias, number = match.groups()
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        found = [m.name for m in client.search_registered_models()]
        raise ModelLoadError(f"{uri}: no registered model {name!r} (registered: {', '.join(found) or 'none'})") from None
    if alias is not None and alias not in model.aliases:
        aliases = ", ".join(f"{a} -> v{v}" for a, v in sorted(model.aliases.items())) or "none"
        raise ModelLoadError(f"{uri}: model {name!r} has no alias {alias!r} (aliases: {aliases})")
    if number is not None:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        if int(number) not in versions:
            raise ModelLoadError(f"{uri}: model {name!r} has no version {number} (versions: "
                                 f"{', '.join(map(str, versions)) or 'none'})")
    return name, str(model.aliases[alias] if alias is not None else number)


def local_files(client: MlflowClient, name: str, version: str) -> str | None:
    """The folder of a registered version when its artifacts are local files (the embedded store):
    loaded in place, since MLflow would otherwise copy the model, base weights included, into a
    temporary folder on every load and delete it at exit (about 3 s of a cold `summarize`)."""
    source = client.get_model_version_download_uri(name, version)
    parsed = urlparse(source)
    if parsed.scheme not in ("", "file"):
        return None
    folder = Path(unquote(parsed.path))
    return str(folder) if (folder / "MLmodel").is_file() else None


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
    base_model_revision: str | None = None  # the Hub commit fetch resolved base_model to
    predictions: list[dict] = field(default_factory=list)  # rows of results/predictions.jsonl
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
    gate_scores(run.metrics.get("evaluate", {}), cfg)  # a gate that cannot read its metrics fails before logging
    client = connect(uri)
    fingerprint = run.fingerprint()
    existing = find_version(client, cfg.model_name, fingerprint)
    model_version = existing or log_and_register(run, cfg, fingerprint, experiment_id(client, cfg.experiment, root, uri))
    client.set_registered_model_alias(cfg.model_name, CANDIDATE, model_version.version)
    previous = current_version(client, cfg.model_name, CHAMPION)
    decision = decide(client, model_version, previous, run, cfg)
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


def decide(client: MlflowClient, candidate, champion, run: PipelineRun, cfg: RegisterConfig) -> Decision:
    """The gate against the champion version: only on the same test set; paired (95 % intervals)
    where both runs logged their predictions, else with the fixed tolerances on the version tags."""
    if champion is None:
        return Decision(True, "no champion yet")
    if champion.version == candidate.version:
        return Decision(True, f"v{candidate.version} is already the champion")
    label = f"champion v{champion.version}"
    ours, theirs = test_set_fingerprint(run.metrics.get("evaluate", {})), champion.tags.get(TEST_SET_TAG)
    if ours is None or ours != theirs:
        return Decision(False, f"{label} was evaluated on another test set (test_set_fingerprint "
                               f"{short(theirs)}, this run {short(ours)}): scores on different dialogues do not "
                               f"compare; move the alias by hand if v{candidate.version} should replace it")
    champion_rows = logged_predictions(client, champion.run_id)
    if run.predictions and champion_rows:
        champion_model = champion.tags.get("pipeline_model", cfg.model)
        seed = int(run.params.get("base", {}).get("seed", 0))
        rouge, toxicity, dialogues = paired_changes(run.predictions, cfg.model, champion_rows, champion_model, cfg, seed)
        return paired_decision(rouge, toxicity, cfg, dialogues, label)
    try:
        champion_scores = GateScores(rouge=float(champion.tags[cfg.rouge_metric]),
                                     toxicity=float(champion.tags[toxicity_key(cfg)]))
    except (KeyError, ValueError):
        return Decision(False, f"{label} has no tags {cfg.rouge_metric!r} and {toxicity_key(cfg)!r} to compare "
                               f"with; move the alias by hand if v{candidate.version} should replace it")
    return promotion_decision(gate_scores(run.metrics.get("evaluate", {}), cfg), champion_scores, cfg, label)


def short(fingerprint: str | None) -> str:
    return fingerprint[:12] if fingerprint else "not recorded"


def logged_predictions(client: MlflowClient, run_id: str | None) -> list[dict] | None:
    """The per-dialogue predictions a run logged (None for runs that logged none)."""
    if not run_id:
        return None
    try:
        with tempfile.TemporaryDirectory() as folder:
            # connect() set the tracking URI this client talks to
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=PREDICTIONS_ARTIFACT, dst_path=folder)
            return read_jsonl(path)
    except (MlflowException, OSError, json.JSONDecodeError):
        return None


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
        "base_model_revision": run.base_model_revision or "",
        "pipeline_model": cfg.model,
        TEST_SET_TAG: test_set_fingerprint(run.metrics["evaluate"]) or "",
    }
    run_tags = {**run.tags, **{key: version_tags[key] for key in (FINGERPRINT_TAG, "git_commit", "dvc_lock_sha256")},
                **source_tags(run.metrics.get("fetch", {}))}
    with mlflow.start_run(experiment_id=experiment, run_name=f"{cfg.model}-{run.git_commit[:8]}", tags=run_tags):
        mlflow.log_params(flatten(run.params))
        mlflow.log_metrics(numeric_metrics(run.metrics))
        for path in run.artifact_files:
            log_artifact_path(path)
        if run.predictions:
            mlflow.log_text(jsonl_text(run.predictions), PREDICTIONS_ARTIFACT)
        model_info = log_summarizer(run)
    return mlflow.register_model(model_info.model_uri, cfg.model_name, tags=version_tags)


def source_tags(fetch_metrics: dict) -> dict[str, str]:
    """What fetch read, as run tags: `fetch.model.source`, `fetch.model.revision` (the Hub commit or
    package version it resolved to), and the same for the dataset (metrics/fetch.json)."""
    return {f"fetch.{what}.{key}": str(value) for what in ("model", "dataset")
            for key, value in (fetch_metrics.get(what) or {}).items() if key in ("source", "revision") and value}


def log_summarizer(run: PipelineRun):
    """Log the pyfunc model into the active run, loadable on a machine with only MLflow and a package
    index: this package as code, adapters (and the base model, when bundled) as artifacts, the base
    model otherwise as a Hub id with its resolved commit, requirements as pip can install them, and
    an input example, which MLflow also runs once through the model as its serving check."""
    return mlflow.pyfunc.log_model(
        name=LOGGED_MODEL_NAME,
        python_model=str(PACKAGE_DIR / "ship" / "serving_entry.py"),
        artifacts=model_artifacts(run),
        model_config={"base_model": run.base_model, "base_model_revision": run.base_model_revision,
                      "adapters": list(run.adapters), "generation": run.settings.to_dict()},
        signature=SIGNATURE,
        input_example=pd.DataFrame({INPUT_COLUMN: [example_dialogue(run)]}),
        code_paths=[str(PACKAGE_DIR)],
        pip_requirements=pinned_requirements(),
    )


def example_dialogue(run: PipelineRun) -> str:
    """A test dialogue of the run (what the model was evaluated on), else one written for the project."""
    return run.predictions[0]["dialogue"] if run.predictions else EXAMPLE_DIALOGUE


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
