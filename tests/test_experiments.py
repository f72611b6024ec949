"""Experiments end to end: `dvc repro` registers into the repo's mlflow.db, then a queued sweep
(`dvc exp run --queue -S 'key=a,b'` + `dvc queue start`) registers one version per experiment into
the *parent* repository's registry, and `dvc exp show --md --only-changed` compares them.
Tiny Llama, a few rows: two to three minutes on 2 shared cores."""

import json
import time

import pytest
from mlflow import MlflowClient
from pipeline import copy_project, init_repo, run, shrunk_params, update_params

MODEL_NAME = "detoxsum-summarizer"


@pytest.fixture
def project(tmp_path, tiny_llama_dir):
    project = copy_project(tmp_path / "repo")
    update_params(project, shrunk_params(tiny_llama_dir))
    init_repo(project)
    return project


def decision(project):
    return json.loads((project / "metrics" / "register.json").read_text())


def registry(project) -> MlflowClient:
    uri = f"sqlite:///{project / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def wait_for_queue(project, timeout_s=600):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], project).stdout
        if not any(state in status for state in ("Queued", "Running")):
            return status
        time.sleep(3)
    raise AssertionError(f"queue still busy after {timeout_s}s:\n{status}")


def test_repro_registers_once_and_a_queued_sweep_registers_each_experiment(project, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = run(["dvc", "repro"], project)
    assert "Running stage 'register'" in first.stdout
    assert decision(project)["version"] == 1 and decision(project)["promoted"] is True
    assert "Running stage" not in run(["dvc", "repro"], project).stdout  # mlflow.db is no output to rerun for

    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "baseline"], project)
    run(["dvc", "exp", "run", "--queue", "-S", "evaluate.max_new_tokens=4,6"], project)
    run(["dvc", "queue", "start"], project)
    status = wait_for_queue(project)
    assert status.count("Success") == 2, status

    table = run(["dvc", "exp", "show", "--md", "--only-changed", "--no-pager"], project).stdout
    assert "evaluate.max_new_tokens" in table and "train_lora.lr" not in table  # only what changed
    client = registry(project)
    versions = client.search_model_versions(f"name = '{MODEL_NAME}'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3]
    assert client.get_registered_model(MODEL_NAME).aliases["candidate"] in (2, 3)
    runs = client.search_runs([client.get_experiment_by_name("detoxsum").experiment_id])
    assert sum(1 for r in runs if r.data.tags.get("dvc_exp_name")) == 2
    assert all(r.info.artifact_uri.startswith((project / "mlruns").as_uri()) for r in runs)
