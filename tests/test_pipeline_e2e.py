"""End to end: real `dvc repro` and `dvc exp run` on a copy of the repo with tiny models of both families."""

import json

import pytest
from pipeline import copy_project, init_repo, run, run_stage_module, shrunk_params, update_params

from detoxsum.distributed import available_devices

ROUGE_KEYS = {"rouge1", "rouge2", "rougeL", "rougeLsum"}


@pytest.fixture(params=["t5", "llama"])
def family(request):
    return request.param


@pytest.fixture
def project(family, tmp_path, tiny_t5_dir, tiny_llama_dir):
    project = copy_project(tmp_path / "repo")
    update_params(project, shrunk_params(tiny_t5_dir if family == "t5" else tiny_llama_dir))
    init_repo(project)
    return project


def read_json(path):
    return json.loads(path.read_text())


def test_dvc_repro_runs_every_stage_then_nothing(family, project):
    first = run(["dvc", "repro"], project)
    for stage in ("fetch", "filter", "tokenize", "train_lora", "train_ppo", "generate_base", "generate_lora",
                  "generate_ppo", "evaluate", "register"):
        assert f"Running stage '{stage}'" in first.stdout, first.stdout

    metrics = read_json(project / "metrics" / "evaluate.json")
    for variant in ("base", "lora", "ppo"):
        assert ROUGE_KEYS <= set(metrics[variant])
        assert metrics[variant]["precision"] == "fp32"
        assert 0.0 <= metrics[variant]["toxicity_profanity_check_mean"] <= 1.0
    assert metrics["num_test_dialogues"] == 4
    assert "toxicity_profanity_check_mean_change_pct" in metrics["detox"]
    assert read_json(project / "metrics" / "train_ppo.json")["steps"] == 2
    assert (project / "dvclive" / "train_ppo" / "plots" / "metrics" / "kl.tsv").is_file()
    assert (project / "plots" / "toxicity" / "profanity_check.csv").read_text().startswith("toxicity,lora,ppo")
    assert (project / "artifacts" / "ppo" / "value_head.safetensors").is_file()
    assert read_json(project / "metrics" / "filter.json")["train"]["rows_in"] == 12
    assert read_json(project / "metrics" / "train_lora.json")["steps"] == 2
    assert (project / "dvclive" / "train_lora" / "plots" / "metrics" / "train" / "loss.tsv").is_file()
    predictions = [json.loads(line) for line in (project / "results" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 4 and {"dialogue", "references", "base", "lora", "ppo"} <= set(predictions[0])
    assert (project / "artifacts" / "lora" / "adapter_config.json").is_file()

    second = run(["dvc", "repro"], project)
    assert "Running stage" not in second.stdout, second.stdout
    assert "changed" not in run(["dvc", "status"], project).stdout

    if family == "llama":  # one family is enough for experiments
        check_exp_run_changes_metrics_and_reruns_only_downstream(project)


def check_exp_run_changes_metrics_and_reruns_only_downstream(project):
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "baseline"], project)
    exp = run(["dvc", "exp", "run", "-S", "train_lora.max_steps=3"], project)
    assert "Running stage 'fetch'" not in exp.stdout and "Running stage 'train_lora'" in exp.stdout
    assert read_json(project / "metrics" / "train_lora.json")["steps"] == 3
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], project).stdout)
    assert diff["metrics/train_lora.json"]["steps"] == {"old": 2, "new": 3, "diff": 1}
    table = run(["dvc", "exp", "show", "--md", "--no-pager"], project).stdout
    assert "max_steps" in table


def test_train_lora_and_generation_run_on_two_processes(tmp_path, tiny_llama_dir):
    """`base.num_processes: 2` runs train_lora and generation under `accelerate launch --cpu` (gloo):
    the same files as one process, written once, every test dialogue summarized once, in order."""
    project = copy_project(tmp_path / "repo")
    params = shrunk_params(tiny_llama_dir)
    params["base"]["num_processes"] = 2
    params["fetch"]["max_test_rows"] = 5  # does not divide by 2
    update_params(project, params)
    init_repo(project)
    run(["dvc", "repro", "generate_lora"], project)

    lora = read_json(project / "metrics" / "train_lora.json")
    assert lora["num_processes"] == 2 and lora["steps"] == 2
    assert (project / "dvclive" / "train_lora" / "plots" / "metrics" / "train" / "loss.tsv").is_file()
    assert (project / "artifacts" / "lora" / "adapter_config.json").is_file()
    test_ids = [json.loads(line)["id"] for line in (project / "data" / "filtered" / "test.jsonl").read_text().splitlines()]
    generated = read_json(project / "results" / "summaries" / "lora.json")
    assert [row["id"] for row in generated["summaries"]] == test_ids


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
