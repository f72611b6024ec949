"""End to end: real `dvc repro`, `dvc exp run` and a queued sweep on a copy of the repo with tiny
models of both families. T5 runs train_lora and generation on two processes (`accelerate launch
--cpu`, gloo); Llama runs on one and goes on to experiments and the MLflow registry.

Each `dvc repro` of the tiny pipeline spends most of its minute or so importing torch and
transformers once per stage, so the checks share as few repros as they can."""

import json
import time

import pytest
from mlflow import MlflowClient
from pipeline import copy_project, init_repo, run, run_stage_module, shrunk_params, update_params

from detoxsum.distributed import available_devices
from detoxsum.precision import Machine, resolve_precision
from detoxsum.registry import embedded_uri

ROUGE_KEYS = {"rouge1", "rouge2", "rougeL", "rougeLsum"}
STAGES = ("fetch", "filter", "tokenize", "train_lora", "train_ppo", "generate_base", "generate_lora",
          "generate_ppo", "evaluate", "register")
MODEL_NAME = "detoxsum-summarizer"


@pytest.fixture(params=["t5", "llama"])
def family(request):
    return request.param


@pytest.fixture
def project(family, tmp_path, tiny_t5_dir, tiny_llama_dir, tiny_reward_dir, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # register into the copy's own mlflow.db
    project = copy_project(tmp_path / "repo")
    params = shrunk_params(tiny_t5_dir if family == "t5" else tiny_llama_dir, tiny_reward_dir)
    if family == "t5":
        params["base"]["num_processes"] = 2
        params["fetch"]["max_test_rows"] = 5  # does not divide by 2
    update_params(project, params)
    init_repo(project)
    return project


def read_json(path):
    return json.loads(path.read_text())


def test_dvc_repro_runs_every_stage_then_nothing(family, project):
    first = run(["dvc", "repro"], project)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first.stdout, first.stdout
    check_outputs(project, family)
    if family == "t5":
        check_two_processes_wrote_what_one_would(project)

    second = run(["dvc", "repro"], project)
    assert "Running stage" not in second.stdout, second.stdout  # mlflow.db is no output to rerun for
    assert "changed" not in run(["dvc", "status"], project).stdout

    if family == "llama":  # one family is enough for experiments and the registry
        check_failed_training_keeps_the_tracked_outputs(project)
        check_registry_versions(project, [1])
        check_exp_run_changes_metrics_and_reruns_only_downstream(project)
        check_queued_sweep_registers_each_experiment(project)


def check_failed_training_keeps_the_tracked_outputs(project):
    """DVC deletes a stage's outputs before running it unless they persist: a training stage that
    fails before training must leave its git-tracked curves and metrics as they were (its cached
    outputs stay in the DVC cache, for `dvc checkout`)."""
    params = (project / "params.yaml").read_text()
    for stage in ("train_lora", "train_ppo"):
        tracked = {path: path.read_bytes() for path in sorted((project / "dvclive" / stage).rglob("*"))
                   if path.is_file()}
        tracked[project / "metrics" / f"{stage}.json"] = (project / "metrics" / f"{stage}.json").read_bytes()
        update_params(project, {stage: {"target_modules": ["nonexistent_proj"]}})
        failed = run(["dvc", "repro", stage], project, check=False)
        assert failed.returncode != 0 and "nonexistent_proj" in failed.stderr, failed.stderr[-2000:]
        assert {path: path.read_bytes() for path in tracked} == tracked, stage
        (project / "params.yaml").write_text(params)
        run(["dvc", "checkout"], project)  # the cached outputs DVC removed before the run come back
    assert "changed" not in run(["dvc", "status"], project).stdout


def check_outputs(project, family):
    metrics = read_json(project / "metrics" / "evaluate.json")
    auto = resolve_precision("auto", Machine.current(), encoder_decoder=family == "t5")  # bf16 or fp32, per CPU
    for variant in ("base", "lora", "ppo"):
        assert ROUGE_KEYS <= set(metrics[variant])
        assert metrics[variant]["precision"] == auto
        assert 0.0 <= metrics[variant]["toxicity_profanity_check_mean"] <= 1.0
    test_rows = 5 if family == "t5" else 4
    assert metrics["num_test_dialogues"] == test_rows
    assert "toxicity_profanity_check_mean_change_pct" in metrics["detox"]
    assert read_json(project / "metrics" / "train_ppo.json")["steps"] == 2
    assert read_json(project / "metrics" / "train_ppo.json")["precision"] == auto
    assert (project / "dvclive" / "train_ppo" / "plots" / "metrics" / "kl.tsv").is_file()
    assert (project / "plots" / "toxicity" / "profanity_check.csv").read_text().startswith("toxicity,lora,ppo")
    assert (project / "artifacts" / "ppo" / "value_head.safetensors").is_file()
    assert read_json(project / "metrics" / "filter.json")["train"]["rows_in"] == 12
    lora = read_json(project / "metrics" / "train_lora.json")
    assert lora["steps"] == 2 and lora["precision"] == auto
    assert (project / "dvclive" / "train_lora" / "plots" / "metrics" / "train" / "loss.tsv").is_file()
    predictions = [json.loads(line) for line in (project / "results" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == test_rows and {"dialogue", "references", "base", "lora", "ppo"} <= set(predictions[0])
    assert (project / "artifacts" / "lora" / "adapter_config.json").is_file()
    decision = read_json(project / "metrics" / "register.json")
    assert decision["version"] == 1 and decision["promoted"] is True


def check_two_processes_wrote_what_one_would(project):
    """train_lora and the generate stages ran under `accelerate launch` on 2 processes: the same files
    as one process, written once, every test dialogue summarized once and in order."""
    assert read_json(project / "metrics" / "train_lora.json")["num_processes"] == 2
    loss_rows = (project / "dvclive" / "train_lora" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    steps = [row.split("\t")[0] for row in loss_rows[1:]]
    assert steps and len(steps) == len(set(steps))  # rank 0 alone logged: no step twice
    test_split = (project / "data" / "filtered" / "test.jsonl").read_text().splitlines()
    test_ids = [json.loads(line)["id"] for line in test_split]
    for variant in ("base", "lora", "ppo"):
        generated = read_json(project / "results" / "summaries" / f"{variant}.json")
        assert [row["id"] for row in generated["summaries"]] == test_ids, variant


def check_exp_run_changes_metrics_and_reruns_only_downstream(project):
    commit(project, "baseline")
    exp = run(["dvc", "exp", "run", "-S", "train_lora.max_steps=3"], project)
    assert "Running stage 'fetch'" not in exp.stdout and "Running stage 'train_lora'" in exp.stdout
    assert "Running stage 'generate_base'" not in exp.stdout  # the base model did not change
    assert read_json(project / "metrics" / "train_lora.json")["steps"] == 3
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], project).stdout)
    assert diff["metrics/train_lora.json"]["steps"] == {"old": 2, "new": 3, "diff": 1}
    table = run(["dvc", "exp", "show", "--md", "--no-pager"], project).stdout
    assert "max_steps" in table
    check_registry_versions(project, [1, 2])


def check_queued_sweep_registers_each_experiment(project):
    """Queued experiments run in temporary copies and register into the *parent* repository's
    registry. The sweep changes a PPO key, so fetch through generate_lora are reused."""
    commit(project, "max_steps 3")
    run(["dvc", "exp", "run", "--queue", "-S", "train_ppo.kl_coef=0.04,0.06"], project)
    run(["dvc", "queue", "start"], project)
    status = wait_for_queue(project)
    assert status.count("Success") == 2, status

    table = run(["dvc", "exp", "show", "--md", "--only-changed", "--no-pager"], project).stdout
    assert "train_ppo.kl_coef" in table and "train_lora.lr" not in table  # only what changed
    client = check_registry_versions(project, [1, 2, 3, 4])
    assert client.get_registered_model(MODEL_NAME).aliases["candidate"] in (3, 4)
    runs = client.search_runs([client.get_experiment_by_name("detoxsum").experiment_id])
    queued = [r for r in runs if r.data.params.get("train_ppo.kl_coef") in ("0.04", "0.06")]
    assert len(queued) == 2 and all(r.data.tags.get("dvc_exp_name") for r in queued)
    assert all(r.info.artifact_uri.startswith((project / "mlruns").as_uri()) for r in runs)


def commit(project, message):
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", message], project)


def check_registry_versions(project, expected) -> MlflowClient:
    uri = embedded_uri(project)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions(f"name = '{MODEL_NAME}'")
    assert sorted(int(v.version) for v in versions) == expected
    return client


def wait_for_queue(project, timeout_s=600):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], project).stdout
        if not any(state in status for state in ("Queued", "Running")):
            return status
        time.sleep(3)
    raise AssertionError(f"queue still busy after {timeout_s}s:\n{status}")


def test_more_processes_than_devices_fail_before_any_work(tmp_path, tiny_llama_dir):
    project = copy_project(tmp_path / "repo")
    params = shrunk_params(tiny_llama_dir)
    params["base"]["num_processes"] = 4096
    update_params(project, params)
    result = run_stage_module("train_lora", project)
    assert result.returncode == 1
    count, kind = available_devices()
    assert result.stderr.strip().splitlines()[-1] == \
        f"error: params key 'base.num_processes' is 4096, but this machine has {count} {kind}"
