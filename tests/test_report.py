"""The pull-request report: two run folders written here (the base branch's CI run and the PR's),
the headline table, the folded diff with bookkeeping apart, a missing base, posting through a fake
`gh` (and failing with one line without a token), and actionlint on every workflow."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pipeline import REPO, tool_env

from detoxsum.tools.report import MARKER, find_marked_comment, format_change, is_bookkeeping, read_run, render_report

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))


def evaluate_metrics(ppo_rouge: float, ppo_toxicity: float) -> dict:
    """A cut-down metrics/evaluate.json: base/lora/ppo blocks, a heated block, intervals, detox changes."""
    def model(rouge: float, toxicity: float) -> dict:
        return {"rougeL": rouge, "rougeL_ci_low": rouge - 1.5, "rougeL_ci_high": rouge + 1.5, "rouge1": rouge + 8,
                "toxicity_profanity_check_mean": toxicity / 2,
                "heated": {"toxicity_profanity_check_expected_max": toxicity,
                           "toxicity_profanity_check_expected_max_ci_low": toxicity - 0.03,
                           "toxicity_profanity_check_expected_max_ci_high": toxicity + 0.03,
                           "toxicity_profanity_check_mean": toxicity / 3}}
    return {"base": model(18.0, 0.15), "lora": model(26.7, 0.24), "ppo": model(ppo_rouge, ppo_toxicity),
            "detox": {"rougeL_change": ppo_rouge - 26.7,
                      "heated": {"toxicity_profanity_check_expected_max_change_pct": -37.0}},
            "num_test_dialogues": 102}


def write_run(folder: Path, ppo_rouge: float, ppo_toxicity: float, version: int, runtime: float, lr: float,
              sha: str, ref: str) -> Path:
    (folder / "metrics").mkdir(parents=True)
    (folder / "metrics" / "evaluate.json").write_text(json.dumps(evaluate_metrics(ppo_rouge, ppo_toxicity)))
    (folder / "metrics" / "register.json").write_text(json.dumps({"version": version, "promoted": True}))
    (folder / "metrics" / "train_ppo.json").write_text(json.dumps({"runtime_s": runtime, "seconds_per_step": runtime / 16,
                                                                   "kl_last": 0.4}))
    (folder / "dvclive" / "train_lora").mkdir(parents=True)
    (folder / "dvclive" / "train_lora" / "metrics.json").write_text(json.dumps({"train": {"runtime": runtime}}))
    (folder / "params.yaml").write_text(f"train_ppo:\n  lr: {lr}\n  steps: 16\n")
    (folder / "ci-run.json").write_text(json.dumps({"sha": sha, "ref": ref, "run_url": "https://example.invalid/run/2"}))
    return folder


@pytest.fixture
def runs(tmp_path):
    """base: ppo rougeL 27.0, toxicity 0.15, version 1, runtime 190 s, lr 5e-4; the PR: rougeL 27.6,
    toxicity 0.13, version 8, runtime 266 s (+39 %), lr 3e-4."""
    base = write_run(tmp_path / "base", 27.0, 0.15, 1, 190.0, 0.0005, "1a2b3c4d5e", "main")
    head = write_run(tmp_path / "head", 27.6, 0.13, 8, 266.0, 0.0003, "9f8e7d6c5b", "lower-lr")
    return base, head


def report(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "detoxsum.report", *args], env=env or tool_env(),
                          capture_output=True, text=True)


def test_headline_table_comes_first_with_intervals(runs):
    base, head = runs
    result = report("--base", str(base), "--head", str(head))
    assert result.returncode == 0, result.stderr
    body = result.stdout
    assert body.startswith(MARKER)
    assert "`lower-lr @ 9f8e7d6` against `main @ 1a2b3c4`" in body
    table = body.index("| model | ROUGE-L ↑ | profanity_check heated E[max] ↓ |")
    assert table < body.index("<details>")  # the headline comes before anything folded
    assert "| ppo | 27 → **27.6** (+0.6)<br><sub>[25.5, 28.5] → [26.1, 29.1]</sub> | " \
           "0.15 → **0.13** (-0.02)<br><sub>[0.12, 0.18] → [0.1, 0.16]</sub> |" in body
    assert "| lora | 26.7<br><sub>[25.2, 28.2]</sub> | 0.24<br><sub>[0.21, 0.27]</sub> |" in body  # unchanged
    assert "| LoRA → PPO | 0.3 → **0.9** (+0.6) | -37 % |" in body


def test_bookkeeping_is_apart_and_not_counted(runs):
    base, head = runs
    body = report("--base", str(base), "--head", str(head)).stdout
    metrics_part, _, bookkeeping_part = body.partition("Runtime and registry bookkeeping")
    # changed quality metrics: ppo rougeL + its 2 bounds + rouge1, heated toxicity + 2 bounds + mean,
    # overall mean, detox.rougeL_change = 10; version/runtime/seconds are not among them
    assert "<summary>All changed metrics (10; " in metrics_part
    assert "| metrics/evaluate.json: ppo.rougeL | 27 | 27.6 | +0.6 (+2.2%) |" in metrics_part
    assert "register.json" not in metrics_part and "runtime" not in metrics_part
    assert "(4; not metric changes)" in bookkeeping_part
    assert "| metrics/register.json: version | 1 | 8 | +7 (+700.0%) |" in bookkeeping_part
    assert "| metrics/train_ppo.json: runtime_s | 190 | 266 | +76 (+40.0%) |" in bookkeeping_part
    assert "| dvclive/train_lora/metrics.json: train.runtime | 190 | 266 |" in bookkeeping_part
    assert "| train_ppo.lr | 0.0005 | 0.0003 |" in body  # params folded too
    assert body.count("<details>") == body.count("</details>") == 3


def test_bookkeeping_keys():
    for name in ["metrics/register.json: promoted", "metrics/train_lora.json: train_runtime_s",
                 "metrics/train_ppo.json: seconds_per_step", "dvclive/train_lora/metrics.json: eval.samples_per_second",
                 "dvclive/train_lora/metrics.json: total_flos", "metrics/train_lora.json: num_processes"]:
        assert is_bookkeeping(name), name
    for name in ["metrics/evaluate.json: ppo.rougeL", "metrics/evaluate.json: ppo.rougeLsum",
                 "metrics/evaluate.json: toxicity_samples", "metrics/train_ppo.json: steps",
                 "metrics/evaluate.json: ppo.heated.toxicity_hatesonar_expected_max"]:
        assert not is_bookkeeping(name), name


def test_unchanged_run_says_so(runs):
    base, _ = runs
    body = report("--base", str(base), "--head", str(base)).stdout
    assert "No metric changed." in body and "<details>" not in body and "→ **" not in body.split("<sub>Toxicity")[0]


@pytest.mark.parametrize("base_args", [[], ["--base", "no-such-folder"]])
def test_missing_base_shows_this_run_alone(runs, base_args):
    _, head = runs
    result = report(*base_args, "--head", str(head), "--base-note", "No successful CI run of `main` was found.")
    assert result.returncode == 0, result.stderr
    assert "(no base run to compare with)" in result.stdout and "No successful CI run of `main`" in result.stdout
    assert "| ppo | 27.6<br><sub>[26.1, 29.1]</sub> | 0.13<br><sub>[0.1, 0.16]</sub> |" in result.stdout
    assert "<summary>All values of this run (" in result.stdout


def test_the_committed_metrics_give_a_headline_per_model_and_classifier():
    run = read_run(REPO, "this PR")
    body = render_report(None, run)
    header = next(line for line in body.splitlines() if line.startswith("| model |"))
    classifiers = yaml.safe_load((REPO / "params.yaml").read_text())["evaluate"]["toxicity_classifiers"]
    assert header.count(" heated E[max] ↓") == len(classifiers)  # one per evaluate classifier
    assert all(f"| {model} |" in body for model in ("base", "lora", "ppo", "LoRA → PPO"))


def test_plots_are_images_first_few_visible(runs, tmp_path):
    base, head = runs
    plots = tmp_path / "png"
    plots.mkdir()
    for index in range(1, 7):
        (plots / f"{index:02d}-plot.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    body = report("--base", str(base), "--head", str(head), "--plots", str(plots)).stdout
    shown, _, more = body.partition("<summary>More plots (2)</summary>")
    assert "![01-plot](plots/01-plot.png)" in shown and "![04-plot](plots/04-plot.png)" in shown
    assert "![05-plot](plots/05-plot.png)" in more and "05-plot" not in shown


def test_change_formatting():
    assert format_change(20.0, 25.5) == "+5.5 (+27.5%)"
    assert format_change(0.1, 0.05) == "-0.05 (-50.0%)"
    assert format_change(0, 3) == "+3" and format_change(None, 3) == "" and format_change("a", "b") == ""


def test_comment_is_found_by_its_marker():
    comments = [{"id": 1, "body": "LGTM"}, {"id": 7, "body": f"{MARKER}\nold report"}, {"id": 9, "body": None}]
    assert find_marked_comment(comments) == 7
    assert find_marked_comment(comments[:1]) is None


def test_post_without_a_token_fails_with_one_line(runs, tmp_path):
    env = {key: value for key, value in tool_env().items() if key not in ("GH_TOKEN", "GITHUB_TOKEN")}
    body = tmp_path / "comment.md"
    body.write_text("hello")
    result = report("--post", "5", "--body", str(body), "--repo", "o/r", env=env)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("error: --post needs a GitHub token: set GH_TOKEN or GITHUB_TOKEN")
    assert result.stderr.count("\n") == 1


FAKE_GH = """#!/usr/bin/env python3
import json, os, sys
log = os.environ["FAKE_GH_LOG"]
with open(log, "a") as handle:
    handle.write(json.dumps(sys.argv[1:]) + "\\n")
if "--paginate" in sys.argv:
    for comment in json.loads(os.environ["FAKE_GH_COMMENTS"]):
        print(json.dumps(comment))
for arg in sys.argv:
    if arg.startswith("body=@"):
        with open(log + ".body", "w") as out, open(arg[6:]) as posted:
            out.write(posted.read())
"""


@pytest.mark.parametrize("existing, method, endpoint", [
    ([{"id": 3, "body": "nice"}], "POST", "repos/o/r/issues/5/comments"),
    ([{"id": 3, "body": "nice"}, {"id": 4, "body": f"{MARKER} old"}], "PATCH", "repos/o/r/issues/comments/4"),
])
def test_post_creates_once_then_updates_its_own_comment(tmp_path, existing, method, endpoint):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gh").write_text(FAKE_GH)
    (bin_dir / "gh").chmod(0o755)
    env = tool_env()
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", FAKE_GH_LOG=str(tmp_path / "gh.log"),
               FAKE_GH_COMMENTS=json.dumps(existing), GH_TOKEN="fake")
    (tmp_path / "comment.md").write_text("## built by pipeline-metrics.yml\n")
    result = report("--post", "5", "--body", str(tmp_path / "comment.md"), "--repo", "o/r", env=env)
    assert result.returncode == 0, result.stderr
    calls = [json.loads(line) for line in (tmp_path / "gh.log").read_text().splitlines()]
    assert calls[0][:3] == ["api", "--paginate", "repos/o/r/issues/5/comments"]
    assert calls[1][:4] == ["api", "-X", method, endpoint] and calls[1][5].startswith("body=@")
    assert len(calls) == 2
    assert (tmp_path / "gh.log.body").read_text() == f"{MARKER}\n## built by pipeline-metrics.yml\n"


def actionlint() -> str:
    found = shutil.which("actionlint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if found is None:
        pytest.fail("actionlint not found: pip install -r requirements-dev.txt")
    return found


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda path: path.name)
def test_workflow_passes_actionlint(workflow):
    result = subprocess.run([actionlint(), str(workflow)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflows_split_read_and_write():
    names = {path.name for path in WORKFLOWS}
    assert {"tests.yml", "pipeline-metrics.yml", "pr-comment.yml"} <= names
    tests = (REPO / ".github/workflows/tests.yml").read_text()
    assert "make test" in tests and "cache: pip" in tests
    metrics = (REPO / ".github/workflows/pipeline-metrics.yml").read_text()
    assert "write" not in metrics  # runs on fork PRs: read-only token, never a red check from it
    assert ".dvc/cache" in metrics and "make repro" in metrics and "python -m detoxsum.report" in metrics
    comment = (REPO / ".github/workflows/pr-comment.yml").read_text()
    assert "workflow_run:" in comment and "pull-requests: write" in comment
    assert "ref:" not in comment and "make " not in comment  # never checks out or builds the PR's code
    assert "secrets." not in metrics + comment


def test_a_figure_the_base_run_lacks_is_not_shown_as_unchanged():
    from detoxsum.tools.report import headline_cell

    head = {"rougeL": 27.03, "rougeL_ci_low": 25.58, "rougeL_ci_high": 28.52}
    assert headline_cell({}, head, "rougeL") == "– → **27.03**<br><sub>[25.58, 28.52]</sub>"
    assert headline_cell({"rougeL": 27.03}, head, "rougeL").startswith("27.03<br>")  # unchanged: one value
    assert headline_cell(None, head, "rougeL").startswith("27.03<br>")  # no base run at all
