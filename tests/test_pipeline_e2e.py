"""End to end: real `dvc repro`, `dvc exp run` and a queued sweep on a copy of the repo with tiny
models of both families. T5 runs train_lora and generation on two processes (torch's launcher,
gloo); Llama runs on one and goes on to experiments and the MLflow registry.

Each `dvc repro` of the tiny pipeline spends most of its minute or so importing torch and
transformers once per stage, so the checks share as few repros as they can."""

import json
import os
import signal
import subprocess
import time

import pytest
from mlflow import MlflowClient
from pipeline import (
    REPO,
    copy_project,
    git_tracked_outputs,
    init_repo,
    run,
    run_stage_module,
    shrunk_params,
    tool_env,
    update_params,
)

from detoxsum.distributed import available_devices
from detoxsum.precision import Machine, resolve_precision
from detoxsum.ship.registry import embedded_uri

ROUGE_KEYS = {"rouge1", "rouge2", "rougeL", "rougeLsum"}
STAGES = ("fetch", "filter", "tokenize", "train_lora", "train_reward", "select_reward", "train_ppo", "generate_base",
          "generate_lora", "generate_ppo", "calibrate", "evaluate", "register")
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
        check_staleness_table_in_the_guide(project)
        check_failed_training_keeps_the_tracked_outputs(project)
        check_an_unused_reward_model_does_not_rerun_ppo(project)
        check_registry_versions(project, [1])
        check_exp_run_changes_metrics_and_reruns_only_downstream(project)
        check_queued_sweep_registers_each_experiment(project)


# One file of each subpackage (and of the core): the stages `dvc status` lists once it changes.
TOUCHED = ("config.py", "data/splits.py", "models/generation.py", "training/lora.py", "ppo/trainer.py",
           "scoring/metrics.py", "ship/registry.py", "tools/report.py", "stages/paths.py")
TABLE_HEADER = "| file edited (under src/detoxsum/) | stages `dvc status` lists |"


def check_staleness_table_in_the_guide(project):
    """docs/guide.md's table of which stages go stale after an edit in each subpackage is what real
    `dvc status` says on this copy: each file gets a comment line appended, then is restored."""
    measured = {}
    for name in TOUCHED:
        path = project / "src" / "detoxsum" / name
        original = path.read_text()
        path.write_text(original + "\n# edited\n")
        status = json.loads(run(["dvc", "status", "--json"], project).stdout or "{}")
        path.write_text(original)
        measured[name] = [stage for stage, changes in status.items()
                          if any("changed deps" in change for change in changes if isinstance(change, dict))]
    rows = [TABLE_HEADER, "|---|---|"] + [f"| `{name}` | {', '.join(stages) or 'none'} |" for name, stages in measured.items()]
    guide = (REPO / "docs" / "guide.md").read_text()
    assert "\n".join(rows) in guide, "docs/guide.md should hold this table:\n" + "\n".join(rows)
    assert "changed" not in run(["dvc", "status"], project).stdout


def check_failed_training_keeps_the_tracked_outputs(project):
    """DVC deletes a stage's outputs before running it unless they persist, and DVCLive empties the
    folder it opens: a stage that fails before or during training, or is killed, must leave every
    git-tracked output as it was (its cached outputs stay in the DVC cache, for `dvc checkout`)."""
    params = (project / "params.yaml").read_text()
    tracked = tracked_outputs(project)
    failures = [("train_lora", {"target_modules": ["nonexistent_proj"]}, "nonexistent_proj"),  # before training
                ("train_ppo", {"target_modules": ["nonexistent_proj"]}, "nonexistent_proj"),
                ("train_lora", {"lr": 1.0e30}, "diverged")]  # during training: a non-finite loss
    for stage, overrides, message in failures:
        update_params(project, {stage: overrides})
        failed = run(["dvc", "repro", stage], project, check=False)
        assert failed.returncode != 0 and message in failed.stderr, failed.stderr[-2000:]
        assert tracked_outputs(project) == tracked, (stage, overrides)
        (project / "params.yaml").write_text(params)
        run(["dvc", "checkout"], project)  # the cached outputs DVC removed before the run come back
    update_params(project, {"train_ppo": {"steps": 200}})  # killed after its first step
    interrupt_repro(project, "train_ppo", lambda: any(project.glob("dvclive/.train_ppo.tmp-*/plots/metrics/*.tsv")))
    assert tracked_outputs(project) == tracked, "train_ppo killed during training"
    (project / "params.yaml").write_text(params)
    run(["dvc", "checkout"], project)
    interrupt_repro(project, "generate_ppo", running_for(project, "generate_ppo"))
    assert tracked_outputs(project) == tracked, "generate_ppo killed"
    assert "changed" not in run(["dvc", "status"], project).stdout


def check_an_unused_reward_model_does_not_rerun_ppo(project):
    """With a classifier reward (the default), retraining the reward model reruns train_reward and
    select_reward, whose output stays the same, and nothing after them."""
    update_params(project, {"train_reward": {"lr": 2.0e-4}})
    rerun = run(["dvc", "repro"], project).stdout
    assert "Running stage 'train_reward'" in rerun and "Running stage 'select_reward'" in rerun, rerun
    assert "Running stage 'train_ppo'" not in rerun and "Running stage 'evaluate'" not in rerun, rerun


def tracked_outputs(project) -> dict:
    """The bytes of every file of the stages' git-tracked (`cache: false`) outputs."""
    files = {}
    for _, name, _ in git_tracked_outputs(project):
        path = project / name
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file():
                files[file.relative_to(project)] = file.read_bytes()
    return files


def interrupt_repro(project, stage, ready, timeout_s=300):
    """`dvc repro -f -s <stage>`, sent SIGTERM (as Ctrl-C or a CI cancel would) once `ready()`."""
    log = project / "repro.log"
    with log.open("w") as out:
        repro = subprocess.Popen(["dvc", "repro", "-f", "-s", stage], cwd=project, env=tool_env(), stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while not ready() and repro.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert repro.poll() is None, f"{stage} ended before it could be interrupted:\n{log.read_text()[-3000:]}"
    os.killpg(repro.pid, signal.SIGTERM)
    assert repro.wait(timeout=120) != 0
    log.unlink()


def running_for(project, stage, seconds=3.0):
    """A `ready` for `interrupt_repro`: true once `dvc repro` has run `stage`'s command for
    `seconds` (DVC removes the stage's non-persistent outputs just before it starts it)."""
    seen = []

    def ready() -> bool:
        if not seen and f"Running stage '{stage}'" in (project / "repro.log").read_text():
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() - seen[0] >= seconds

    return ready


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
    """train_lora and the generate stages ran on 2 processes (the world size each process was
    launched into, not the params key): the same files as one process, written once, every test
    dialogue summarized once and in order."""
    assert read_json(project / "metrics" / "train_lora.json")["num_processes"] == 2
    for stage in ("train_lora", "generate_base", "generate_lora", "generate_ppo"):
        assert read_json(project / "metrics" / "timing" / f"{stage}.json")["processes"] == 2, stage
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
