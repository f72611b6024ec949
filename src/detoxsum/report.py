"""The pull-request comment: metrics and params of the workspace against a base revision, in markdown.

Run: `python -m detoxsum.report --base origin/main` after `dvc repro`; prints the comment. With
`--post <PR number>` it also creates the comment on the pull request through `gh api`, or edits
the one it posted before (found by a hidden marker), so each push updates a single comment.
`.github/workflows/pr-metrics.yml` runs it with the workflow's own GITHUB_TOKEN.

The numbers come from `dvc metrics diff --json` and `dvc params diff --json`, so the report shows
exactly what DVC compares: old (base), new (this branch) and the change, per metric.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from detoxsum.errors import PipelineError
from detoxsum.outputs import run_stage

MARKER = "<!-- detoxsum:pr-metrics-report -->"


def dvc_diff(kind: str, base: str, cwd: Path) -> dict:
    """`dvc metrics diff` or `dvc params diff` (kind) of the workspace against `base`, as JSON."""
    result = subprocess.run(["dvc", kind, "diff", base, "--json"], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        output = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()
        raise PipelineError(f"dvc {kind} diff {base} failed: {output[-1]}")
    return json.loads(result.stdout or "{}")


def format_value(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"`{value}`" if isinstance(value, str) else str(value)


def format_change(old, new) -> str:
    """`+5.5 (+27.5%)` for numbers; empty when either side is missing or not a number."""
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (old, new))
    if not numbers:
        return ""
    change = new - old
    percent = f" ({change / abs(old):+.1%})" if old else ""
    return f"{change:+.4g}{percent}"


def diff_table(diff: dict, name_header: str, with_change: bool) -> list[str]:
    """Markdown rows: one per changed key, grouped by file."""
    header = f"| file | {name_header} | base | this PR |" + (" change |" if with_change else "")
    lines = [header, "|---|---|---:|---:|" + ("---:|" if with_change else "")]
    for path, entries in sorted(diff.items()):
        for key, values in sorted(entries.items()):
            old, new = values.get("old"), values.get("new")
            row = f"| {path} | {key} | {format_value(old)} | {format_value(new)} |"
            lines.append(row + (f" {format_change(old, new)} |" if with_change else ""))
    return lines


def render_report(metrics: dict, params: dict, base: str, plots_url: str | None = None) -> str:
    lines = [MARKER, f"## detoxsum: metrics against `{base}`", ""]
    metric_rows = {path: keys for path, keys in metrics.items() if keys}
    if metric_rows:
        lines += ["### Metrics (`dvc metrics diff`)", "", *diff_table(metric_rows, "metric", with_change=True), ""]
    else:
        lines += ["No metric changed.", ""]
    param_rows = {path: keys for path, keys in params.items() if keys}
    if param_rows:
        lines += ["### Params (`dvc params diff`)", "", *diff_table(param_rows, "param", with_change=False), ""]
    if plots_url:
        lines += [f"Plots: [`dvc plots diff {base}`]({plots_url}) (download the artifact, open `index.html`).", ""]
    else:
        lines += [f"Plots: run `dvc plots diff {base}` to compare the curves and histograms.", ""]
    return "\n".join(lines)


def find_marked_comment(comments: list[dict], marker: str = MARKER) -> int | None:
    """The id of the first comment whose body carries `marker` (the one this report posted)."""
    for comment in comments:
        if marker in (comment.get("body") or ""):
            return comment["id"]
    return None


def post_comment(body: str, pr: int, repo: str) -> str:
    """Create or update the marked comment on pull request `pr` with `gh api`; returns what it did."""
    listing = gh(["api", "--paginate", f"repos/{repo}/issues/{pr}/comments", "--jq", ".[] | {id, body}"])
    comments = [json.loads(line) for line in listing.splitlines() if line.strip()]
    comment_id = find_marked_comment(comments)
    with tempfile.NamedTemporaryFile("w", suffix=".md", delete=False) as handle:
        handle.write(body)
    try:
        if comment_id is None:
            gh(["api", "-X", "POST", f"repos/{repo}/issues/{pr}/comments", "-F", f"body=@{handle.name}"])
            return "created"
        gh(["api", "-X", "PATCH", f"repos/{repo}/issues/comments/{comment_id}", "-F", f"body=@{handle.name}"])
        return f"updated comment {comment_id}"
    finally:
        os.unlink(handle.name)


def gh(args: list[str]) -> str:
    result = subprocess.run(["gh", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise PipelineError(f"gh {' '.join(args[:3])} failed: {result.stderr.strip()[-500:]}")
    return result.stdout


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m detoxsum.report", description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="git revision to compare with, e.g. origin/main")
    parser.add_argument("--plots-url", help="link to the uploaded `dvc plots diff` output")
    parser.add_argument("--post", type=int, metavar="PR", help="create or update the comment on this pull request")
    parser.add_argument("--repo", default=os.environ.get("GITHUB_REPOSITORY"),
                        help="owner/name (default: $GITHUB_REPOSITORY)")
    args = parser.parse_args(argv)

    def report() -> None:
        cwd = Path.cwd()
        metrics, params = dvc_diff("metrics", args.base, cwd), dvc_diff("params", args.base, cwd)
        body = render_report(metrics, params, args.base, args.plots_url)
        print(body)
        if args.post is not None:
            if not args.repo:
                raise PipelineError("--post needs --repo owner/name (or GITHUB_REPOSITORY)")
            print(f"report: {post_comment(body, args.post, args.repo)} on {args.repo}#{args.post}", file=sys.stderr)

    run_stage(report)


if __name__ == "__main__":
    main()
