"""Helpers for tests that run the real stage commands and `dvc` in a throwaway copy of the repo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["dvc.yaml", "params.yaml", ".gitignore", ".dvcignore", "src", "data/sample", "data/preferences", "data/calibration",
                 "recipes"]


def tool_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", DVC_NO_ANALYTICS="1",
               TOKENIZERS_PARALLELISM="false", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # stages call `python`
    return env


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def copy_project(dest: Path) -> Path:
    for name in PROJECT_FILES:
        source = REPO / name
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(source, target)
    return dest


def init_repo(project: Path) -> None:
    run(["git", "init", "-q", "-b", "main"], project)
    run(["dvc", "init", "-q"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "init"], project)


def update_params(project: Path, overrides: dict) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for stage, values in overrides.items():
        params.setdefault(stage, {}).update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def shrunk_params(model_dir: Path, reward_dir: Path | None = None) -> dict:
    """The committed params, cut down to seconds: tiny models, a few rows, a couple of steps."""
    reward = {} if reward_dir is None else {"train": "always", "model": str(reward_dir), "max_pairs": 24, "batch_size": 4,
                                             "max_length": 64, "logging_steps": 1, "eval_steps": 2}
    return {
        "train_reward": reward,
        "base": {"max_source_tokens": 96, "max_target_tokens": 16},
        "fetch": {"model": str(model_dir), "max_train_rows": 12, "max_validation_rows": 4, "max_test_rows": 4},
        "train_lora": {"max_steps": 2, "batch_size": 4, "logging_steps": 1, "eval_steps": 1},
        "evaluate": {"batch_size": 4, "max_new_tokens": 8},
        "train_ppo": {"steps": 2, "batch_size": 4, "minibatch_size": 2, "ppo_epochs": 1, "max_new_tokens": 8},
    }


def run_stage_module(stage: str, cwd: Path) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", f"detoxsum.stages.{stage}"], cwd, check=False)


def git_tracked_outputs(project: Path) -> list[tuple[str, str, dict]]:
    """(stage, path, properties) of every git-tracked (`cache: false`) output in `project`'s dvc.yaml."""
    found = []
    for name, stage in yaml.safe_load((project / "dvc.yaml").read_text())["stages"].items():
        for entry in stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", []):
            if isinstance(entry, dict):
                (path, props), = entry.items()
                if props.get("cache") is False:
                    found.append((name, path, props))
    return found
