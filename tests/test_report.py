"""The pull-request report: metric/params diffs of a real two-commit repo, the comment marker, a fake
`gh` that records what would be posted, and actionlint on the workflow that runs it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline import REPO, run, tool_env

from detoxsum.report import MARKER, find_marked_comment, format_change, render_report

WORKFLOW = REPO / ".github" / "workflows" / "pr-metrics.yml"


@pytest.fixture
def two_commit_repo(tmp_path):
    """main: ppo.rougeL 20, lr 1e-3; the workspace (the PR after repro): rougeL 25.5, lr 3e-4."""
    repo = tmp_path / "repo"
    (repo / "metrics").mkdir(parents=True)
    run(["git", "init", "-q", "-b", "main"], repo)
    run(["dvc", "init", "-q"], repo)
    (repo / "dvc.yaml").write_text("metrics:\n  - metrics/evaluate.json\n")
    write_state(repo, rouge_l=20.0, lr=0.001)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "base"], repo)
    run(["git", "checkout", "-q", "-b", "feature"], repo)
    write_state(repo, rouge_l=25.5, lr=0.0003)
    run(["git", "commit", "-q", "-am", "lower lr"], repo)
    return repo


def write_state(repo: Path, rouge_l: float, lr: float) -> None:
    metrics = {"ppo": {"rougeL": rouge_l, "toxicity_profanity_check_mean": 0.05}, "num_test_dialogues": 30}
    (repo / "metrics" / "evaluate.json").write_text(json.dumps(metrics))
    (repo / "params.yaml").write_text(f"train_lora:\n  lr: {lr}\n  r: 16\n")


def report(repo: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "detoxsum.report", *args], cwd=repo, env=env or tool_env(),
                          capture_output=True, text=True)


def test_report_shows_old_new_and_change_of_a_changed_metric(two_commit_repo):
    result = report(two_commit_repo, "--base", "main", "--plots-url", "https://example.invalid/artifact/1")
    assert result.returncode == 0, result.stderr
    body = result.stdout
    assert body.startswith(MARKER)
    assert "| metrics/evaluate.json | ppo.rougeL | 20 | 25.5 | +5.5 (+27.5%) |" in body
    assert "toxicity_profanity_check_mean" not in body  # unchanged metrics stay out
    assert "| params.yaml | train_lora.lr | 0.001 | 0.0003 |" in body
    assert "(https://example.invalid/artifact/1)" in body


def test_unchanged_metrics_and_unknown_base(two_commit_repo):
    same = report(two_commit_repo, "--base", "HEAD")
    assert same.returncode == 0 and "No metric changed." in same.stdout and "### Params" not in same.stdout
    unknown = report(two_commit_repo, "--base", "no-such-branch")
    assert unknown.returncode == 1 and unknown.stderr.startswith("error: dvc metrics diff no-such-branch failed")


def test_change_formatting():
    assert format_change(20.0, 25.5) == "+5.5 (+27.5%)"
    assert format_change(0.1, 0.05) == "-0.05 (-50.0%)"
    assert format_change(0, 3) == "+3" and format_change(None, 3) == "" and format_change("a", "b") == ""


def test_comment_is_found_by_its_marker():
    comments = [{"id": 1, "body": "LGTM"}, {"id": 7, "body": f"{MARKER}\nold report"}, {"id": 9, "body": None}]
    assert find_marked_comment(comments) == 7
    assert find_marked_comment(comments[:1]) is None
    assert MARKER in render_report({}, {}, "main")


FAKE_GH = """#!/usr/bin/env python3
import json, os, sys
log = os.environ["FAKE_GH_LOG"]
with open(log, "a") as handle:
    handle.write(json.dumps(sys.argv[1:]) + "\\n")
if "--paginate" in sys.argv:
    for comment in json.loads(os.environ["FAKE_GH_COMMENTS"]):
        print(json.dumps(comment))
"""


@pytest.mark.parametrize("existing, method, endpoint", [
    ([{"id": 3, "body": "nice"}], "POST", "repos/o/r/issues/5/comments"),
    ([{"id": 3, "body": "nice"}, {"id": 4, "body": f"{MARKER} old"}], "PATCH", "repos/o/r/issues/comments/4"),
])
def test_post_creates_once_then_updates_its_own_comment(two_commit_repo, tmp_path, existing, method, endpoint):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gh").write_text(FAKE_GH)
    (bin_dir / "gh").chmod(0o755)
    env = tool_env()
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", FAKE_GH_LOG=str(tmp_path / "gh.log"),
               FAKE_GH_COMMENTS=json.dumps(existing))
    result = report(two_commit_repo, "--base", "main", "--post", "5", "--repo", "o/r", env=env)
    assert result.returncode == 0, result.stderr
    calls = [json.loads(line) for line in (tmp_path / "gh.log").read_text().splitlines()]
    assert calls[0][:3] == ["api", "--paginate", "repos/o/r/issues/5/comments"]
    assert calls[1][:4] == ["api", "-X", method, endpoint] and calls[1][5].startswith("body=@")
    assert len(calls) == 2


def actionlint() -> str:
    found = shutil.which("actionlint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if found is None:
        pytest.fail("actionlint not found: pip install -r requirements-dev.txt")
    return found


def test_workflow_passes_actionlint():
    result = subprocess.run([actionlint(), str(WORKFLOW)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_runs_the_report_with_its_own_token():
    text = WORKFLOW.read_text()
    assert "pull-requests: write" in text and "GH_TOKEN: ${{ github.token }}" in text
    assert "make setup" in text and "dvc repro" in text and "python -m detoxsum.report" in text
    assert "secrets." not in text  # no extra secrets
