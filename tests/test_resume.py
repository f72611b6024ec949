"""A killed training stage continues from its last checkpoint and ends where an uninterrupted run
with the same seed ends: the stage commands `dvc repro` runs, on tiny models, killed for real."""

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml
from pipeline import REPO, run_stage_module, tool_env
from safetensors.torch import load_file

from conftest import fixture_rows


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_llama_dir):
    """A workspace after fetch, filter and tokenize, with training long enough to be killed midway."""
    workdir = tmp_path_factory.mktemp("resume") / "ws"
    workdir.mkdir()
    shutil.copy(REPO / "params.yaml", workdir / "params.yaml")
    (workdir / "input.jsonl").write_text("".join(json.dumps(row) + "\n" for row in fixture_rows(40)))
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["base"].update(max_source_tokens=96, max_target_tokens=16)
    params["fetch"].update(model=str(tiny_llama_dir), dataset=str(workdir / "input.jsonl"))
    params["train_lora"].update(max_steps=60, batch_size=2, logging_steps=1, eval_steps=1000, checkpoint_steps=4)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ("fetch", "filter", "tokenize"):
        assert run_stage_module(stage, workdir).returncode == 0
    return workdir


def copy_of(workdir, dest):
    shutil.copytree(workdir, dest)
    return dest


def kill_once_checkpointed(stage, workdir, checkpoint_glob, kill_signal):
    """Start the stage, wait for a checkpoint to appear, then kill it with `kill_signal`."""
    process = subprocess.Popen([sys.executable, "-m", f"detoxsum.stages.{stage}"], cwd=workdir, env=tool_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(workdir.glob(checkpoint_glob)):
        assert process.poll() is None, f"{stage} ended before its first checkpoint: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"no {checkpoint_glob} within 120 s"
        time.sleep(0.02)
    process.send_signal(kill_signal)
    process.wait(timeout=60)
    assert process.returncode == -kill_signal, "the stage finished before it could be killed"


def run_straight_and_killed(stage, prepared, tmp_path, checkpoint_glob, kill_signal, output):
    """Run the stage once straight through and once killed after `checkpoint_glob` appeared and then
    rerun; returns both workspaces."""
    straight = copy_of(prepared, tmp_path / "straight")
    assert run_stage_module(stage, straight).returncode == 0
    killed = copy_of(prepared, tmp_path / "killed")
    kill_once_checkpointed(stage, killed, checkpoint_glob, kill_signal)
    assert not (killed / output).exists()
    resumed = run_stage_module(stage, killed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{stage}: resuming from" in resumed.stdout
    assert not (killed / "checkpoints").exists()  # removed once the outputs are written
    return straight, killed


def assert_same_weights(straight, killed, output, files):
    for name in files:
        expected, got = load_file(str(straight / output / name)), load_file(str(killed / output / name))
        assert expected.keys() == got.keys()
        for key in expected:
            assert (got[key] == expected[key]).all(), f"{name}: {key}"


@pytest.mark.parametrize("kill_signal", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_train_lora_resumes_and_ends_with_the_uninterrupted_adapter(prepared, tmp_path, kill_signal):
    # checkpoint-8's folder appears before its files: a kill then often lands mid-save
    straight, killed = run_straight_and_killed("train_lora", prepared, tmp_path,
                                               "checkpoints/train_lora/*/checkpoint-8", kill_signal, "artifacts/lora")
    assert_same_weights(straight, killed, "artifacts/lora", ["adapter_model.safetensors"])
    assert curves(killed, "train_lora") == curves(straight, "train_lora")
    assert metrics(killed, "train_lora")["train_loss"] == metrics(straight, "train_lora")["train_loss"]


def metrics(workdir, stage):
    return json.loads((workdir / "metrics" / f"{stage}.json").read_text())


def curves(workdir, stage):
    """A stage's DVCLive curves as {file: [(step, value), ...]}, without what measures the clock
    (timestamps, runtime, throughput)."""
    found = {}
    for tsv in sorted((workdir / "dvclive" / stage / "plots" / "metrics").rglob("*.tsv")):
        header, *rows = [line.split("\t") for line in tsv.read_text().splitlines()]
        if not any(word in tsv.name for word in ("runtime", "per_second", "time_")):
            step, value = header.index("step"), len(header) - 1
            found[str(tsv.relative_to(workdir))] = [(row[step], round(float(row[value]), 4)) for row in rows]
    assert found, f"no curves under dvclive/{stage}"
    return found


def test_a_checkpoint_of_other_params_is_not_resumed(prepared, tmp_path):
    workdir = copy_of(prepared, tmp_path / "ws")
    kill_once_checkpointed("train_lora", workdir, "checkpoints/train_lora/*/checkpoint-4", signal.SIGKILL)
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["train_lora"]["lr"] = 2e-3
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    rerun = run_stage_module("train_lora", workdir)
    assert rerun.returncode == 0 and "resuming" not in rerun.stdout


@pytest.fixture(scope="module")
def prepared_ppo(prepared, tmp_path_factory):
    """A workspace with a trained LoRA adapter and a PPO run of 12 steps, checkpointed every 3."""
    workdir = copy_of(prepared, tmp_path_factory.mktemp("resume_ppo") / "ws")
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["train_lora"].update(max_steps=4)
    params["train_ppo"].update(steps=12, checkpoint_steps=3, batch_size=4, minibatch_size=2, ppo_epochs=2,
                               max_new_tokens=8, hardest_prompts=8)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    assert run_stage_module("train_lora", workdir).returncode == 0
    return workdir


@pytest.mark.parametrize("kill_signal", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_train_ppo_resumes_and_ends_with_the_uninterrupted_adapter(prepared_ppo, tmp_path, kill_signal):
    straight, killed = run_straight_and_killed("train_ppo", prepared_ppo, tmp_path,
                                               "checkpoints/train_ppo/*/state.pt", kill_signal, "artifacts/ppo")
    assert_same_weights(straight, killed, "artifacts/ppo", ["adapter_model.safetensors", "value_head.safetensors"])
    assert curves(killed, "train_ppo") == curves(straight, "train_ppo")
    assert metrics(killed, "train_ppo")["reward_mean_last"] == metrics(straight, "train_ppo")["reward_mean_last"]
