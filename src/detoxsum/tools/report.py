"""The pull-request comment: this PR's CI run against the base branch's CI run, in markdown.

Run (after `dvc repro`, with the base run's `pipeline-metrics` artifact unpacked in `base-run/`):

    python -m detoxsum.report --base base-run --plots pr-comment/plots > comment.md

It compares two *run folders*, each holding what `.github/workflows/pipeline-metrics.yml` uploads:
`metrics/*.json`, `dvclive/*/metrics.json`, `params.yaml` and `ci-run.json` (commit, branch, run
URL). Both come from CI runners, so the comparison never mixes the author's machine with CI's. The
comment opens with a headline table (ROUGE-L and heated expected-max toxicity per model, base → PR,
with the 95 % intervals), then folds the full diff; runtime, throughput and registry bookkeeping are
listed apart and never count as metric changes. Without `--base` (or with an empty folder) it shows
this run's values alone and says so.

`--post <PR> --body comment.md` creates the comment on the pull request through `gh api`, or edits
the one posted before (found by a hidden marker), so each push updates a single comment. It needs
GH_TOKEN or GITHUB_TOKEN; `.github/workflows/pr-comment.yml` runs it with the default branch's code,
so a fork's code never sees the write token. Building a comment needs PyYAML (params); posting only
the standard library.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from detoxsum.errors import PipelineError
from detoxsum.outputs import run_stage

MARKER = "<!-- detoxsum:pr-metrics-report -->"
MODELS = ("base", "lora", "ppo")
RUN_INFO = "ci-run.json"
MAX_DIFF_ROWS = 400  # GitHub refuses comments over 65,536 characters
VISIBLE_PLOTS = 4  # the first plots (dvc.yaml order: toxicity histograms, LoRA loss) show; the rest fold

# Files and keys that describe how a run went, not how good the model is: machine speed, timings,
# registry version numbers. They are listed apart and never count as metric changes.
BOOKKEEPING_FILES = ("metrics/register.json",)
BOOKKEEPING_KEY = re.compile(
    r"(runtime|seconds|per_second|(^|_)time(_|$)|_s$|flos|(^|_)version(_|$)|num_processes|reused)", re.I)


@dataclass
class Run:
    """One CI run's metrics and params, flattened to `file: dotted.key` → value."""

    label: str
    metrics: dict[str, object]
    params: dict[str, object]
    info: dict


# 1. read two run folders ------------------------------------------------------------------------

def flatten(data, prefix: str = "") -> dict[str, object]:
    """{"ppo": {"rougeL": 27}} → {"ppo.rougeL": 27}; lists and scalars are leaves."""
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, object] = {}
    for key, value in data.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def metric_files(folder: Path) -> list[Path]:
    return sorted([*folder.glob("metrics/*.json"), *folder.glob("dvclive/*/metrics.json")])


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PipelineError(f"{path}: not a readable JSON file ({exc})") from None


def read_run(folder: Path, fallback_label: str) -> Run:
    """The metrics, params and ci-run.json of a run folder (an unpacked `pipeline-metrics` artifact)."""
    metrics: dict[str, object] = {}
    for path in metric_files(folder):
        relative = path.relative_to(folder).as_posix()
        for key, value in flatten(read_json(path)).items():
            metrics[f"{relative}: {key}"] = value
    params: dict[str, object] = {}
    if (folder / "params.yaml").is_file():
        import yaml  # only building a comment needs it; posting one runs on the bare default branch

        params = flatten(yaml.safe_load((folder / "params.yaml").read_text()) or {})
    info = read_json(folder / RUN_INFO) if (folder / RUN_INFO).is_file() else {}
    return Run(run_label(info, fallback_label), metrics, params, info)


def run_label(info: dict, fallback: str) -> str:
    """`main @ 1a2b3c4` from ci-run.json, or the fallback where it says nothing."""
    sha, ref = str(info.get("sha", ""))[:7], info.get("ref")
    if sha and ref:
        return f"{ref} @ {sha}"
    return sha or ref or fallback


def is_bookkeeping(name: str) -> bool:
    """`metrics/register.json: version`, `metrics/train_ppo.json: runtime_s`, ... (not quality)."""
    path, _, key = name.partition(": ")
    return path in BOOKKEEPING_FILES or bool(BOOKKEEPING_KEY.search(key.rsplit(".", 1)[-1]))


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# 2. format ---------------------------------------------------------------------------------------

def format_value(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"`{value}`" if isinstance(value, str) else str(value)


def format_change(old, new) -> str:
    """`+5.5 (+27.5%)` for numbers; empty when either side is missing or not a number."""
    if not (is_number(old) and is_number(new)):
        return ""
    change = new - old
    percent = f" ({change / abs(old):+.1%})" if old else ""
    return f"{change:+.4g}{percent}"


def interval(values: dict[str, object], key: str, unit: str = "") -> str:
    """`[16.94, 19.15]`: the 95 % interval of `key` when both bounds exist, else empty."""
    low, high = values.get(f"{key}_ci_low"), values.get(f"{key}_ci_high")
    return f"[{low:.4g}, {high:.4g}]{unit}" if is_number(low) and is_number(high) else ""


# 3. the headline ---------------------------------------------------------------------------------

def model_block(run: Run, model: str) -> dict[str, object]:
    """`ppo.rougeL` etc. of metrics/evaluate.json, with the `ppo.` prefix cut off."""
    prefix = f"metrics/evaluate.json: {model}."
    return {name[len(prefix):]: value for name, value in run.metrics.items() if name.startswith(prefix)}


def toxicity_columns(runs: list[Run]) -> list[tuple[str, str]]:
    """(column title, key) per classifier: the heated expected max (the project's headline toxicity:
    the worst of several sampled summaries on the most provocative dialogues), else the overall
    expected max, else the mean."""
    keys = set()
    for run in runs:
        for model in MODELS:
            keys |= set(model_block(run, model))
    classifiers = sorted({match.group(1) for key in keys
                          if (match := re.fullmatch(r"(?:heated\.)?toxicity_(.+?)_(?:expected_max|mean)", key))})
    columns = []
    for name in classifiers:
        for key, title in ((f"heated.toxicity_{name}_expected_max", "heated E[max]"),
                           (f"toxicity_{name}_expected_max", "E[max]"), (f"toxicity_{name}_mean", "mean")):
            if key in keys:
                columns.append((f"{name} {title} ↓", key))
                break
    return columns


def headline_cell(base: dict | None, head: dict, key: str, unit: str = "") -> str:
    """`27.03 → **27.61** (+0.58)` with both intervals beneath; one value (and interval) when there
    is no base run or the value did not change; `– → **0.15**` when the base run lacks the figure."""
    old, new = (base or {}).get(key), head.get(key)
    if not is_number(new):
        return "–" if not is_number(old) else f"{old:.4g}{unit} → –"
    if base is None or old == new:
        ci = interval(head, key, unit)
        return f"{new:.4g}{unit}" + (f"<br><sub>{ci}</sub>" if ci else "")
    if not is_number(old):
        ci = interval(head, key, unit)
        return f"– → **{new:.4g}{unit}**" + (f"<br><sub>{ci}</sub>" if ci else "")
    cell = f"{old:.4g}{unit} → **{new:.4g}{unit}** ({new - old:+.3g})"
    cis = interval(base, key, unit), interval(head, key, unit)
    return cell + (f"<br><sub>{cis[0]} → {cis[1]}</sub>" if all(cis) else "")


def headline_table(base: Run | None, head: Run) -> list[str]:
    """One row per model (ROUGE-L ↑ and each classifier's toxicity ↓, base → PR), then the change
    from LoRA to PPO that the evaluate stage measures on the same dialogues (points / percent)."""
    columns = [("ROUGE-L ↑", "rougeL"), *toxicity_columns([head] + ([base] if base else []))]
    lines = ["| model | " + " | ".join(title for title, _ in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for model in MODELS:
        head_block = model_block(head, model)
        base_block = model_block(base, model) if base else None
        if head_block:
            cells = [headline_cell(base_block, head_block, key) for _, key in columns]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
    head_detox = model_block(head, "detox")
    if head_detox:
        base_detox = model_block(base, "detox") if base else None
        cells = [headline_cell(base_detox, head_detox, "rougeL_change")]
        cells += [headline_cell(base_detox, head_detox, f"{key}_change_pct", " %") for _, key in columns[1:]]
        lines.append("| LoRA → PPO | " + " | ".join(cells) + " |")
    if len(lines) == 2:
        return ["metrics/evaluate.json has no per-model ROUGE-L or toxicity."]
    cells = ("Cells: base → **this PR** (change), 95 % bootstrap intervals beneath; one value: unchanged; "
             "–: the run has no such figure."
             if base else "95 % bootstrap intervals beneath each value.")
    return lines + ["", "<sub>Toxicity: per classifier, the heated expected max (the worst of several sampled "
                    "summaries, on the most provocative test dialogues) where the run has it, else the mean. "
                    f"{cells}</sub>"]


# 4. the full diff --------------------------------------------------------------------------------

def changed(base: dict[str, object], head: dict[str, object]) -> list[str]:
    return sorted(name for name in base.keys() | head.keys() if base.get(name) != head.get(name))


def diff_rows(names: list[str], base: dict, head: dict, with_change: bool) -> list[str]:
    header = "| file: key | base | this PR |" + (" change |" if with_change else "")
    lines = [header, "|---|---:|---:|" + ("---:|" if with_change else "")]
    for name in names[:MAX_DIFF_ROWS]:
        old, new = base.get(name), head.get(name)
        row = f"| {name} | {format_value(old)} | {format_value(new)} |"
        lines.append(row + (f" {format_change(old, new)} |" if with_change else ""))
    if len(names) > MAX_DIFF_ROWS:
        lines.append(f"\n…and {len(names) - MAX_DIFF_ROWS} more (see the `pipeline-metrics` artifacts).")
    return lines


def folded(summary: str, body: list[str]) -> list[str]:
    return ["<details>", f"<summary>{summary}</summary>", "", *body, "", "</details>", ""]


def values_table(run: Run) -> list[str]:
    """This run's own values, for a PR without a base run to compare with."""
    names = sorted(run.metrics)
    return ["| file: key | this PR |", "|---|---:|",
            *[f"| {name} | {format_value(run.metrics[name])} |" for name in names[:MAX_DIFF_ROWS]]]


def full_diff(base: Run, head: Run) -> list[str]:
    names = changed(base.metrics, head.metrics)
    metric_names = [name for name in names if not is_bookkeeping(name)]
    bookkeeping_names = [name for name in names if is_bookkeeping(name)]
    lines = []
    if metric_names:
        unchanged = len(base.metrics.keys() | head.metrics.keys()) - len(names)
        lines += folded(f"All changed metrics ({len(metric_names)}; {unchanged} unchanged)",
                        diff_rows(metric_names, base.metrics, head.metrics, with_change=True))
    else:
        lines += ["No metric changed.", ""]
    param_names = changed(base.params, head.params)
    if param_names:
        lines += folded(f"Params that differ ({len(param_names)})",
                        diff_rows(param_names, base.params, head.params, with_change=False))
    if bookkeeping_names:
        lines += folded(f"Runtime and registry bookkeeping ({len(bookkeeping_names)}; not metric changes)",
                        diff_rows(bookkeeping_names, base.metrics, head.metrics, with_change=True))
    return lines


# 5. the whole comment ----------------------------------------------------------------------------

def plot_images(plots: Path | None, link_prefix: str) -> list[str]:
    """Markdown images of the PNGs in `plots` (sorted: plots.py numbers them in dvc.yaml order)."""
    images = sorted(plots.glob("*.png")) if plots and plots.is_dir() else []
    if not images:
        return []
    markdown = [f"![{image.stem}]({link_prefix}/{image.name})" for image in images]
    lines = ["### Plots (base and this PR overlaid)", "", *markdown[:VISIBLE_PLOTS], ""]
    if len(markdown) > VISIBLE_PLOTS:
        lines += folded(f"More plots ({len(markdown) - VISIBLE_PLOTS})", markdown[VISIBLE_PLOTS:])
    return lines


def render_report(base: Run | None, head: Run, base_note: str = "", plots: Path | None = None,
                  link_prefix: str = "plots") -> str:
    if base is None:
        title = f"## detoxsum: `{head.label}` (no base run to compare with)"
        intro = base_note or "No CI run of the base branch was found, so this shows this PR's values alone."
    else:
        title = f"## detoxsum: `{head.label}` against `{base.label}`"
        intro = "Both sides are CI runs of `make repro` on GitHub's runners; ↑ higher is better, ↓ lower."
        if base_note:
            intro += f"\n\n{base_note}"
    lines = [MARKER, title, "", intro, "", *headline_table(base, head), ""]
    if base is None:
        lines += folded(f"All values of this run ({len(head.metrics)})", values_table(head))
    else:
        lines += full_diff(base, head)
    lines += plot_images(plots, link_prefix)
    if head.info.get("run_url"):
        lines += [f"<sub>[CI run]({head.info['run_url']}) · metrics, plots and params: the "
                  "`pipeline-metrics` artifact.</sub>", ""]
    return "\n".join(lines)


# 6. post -----------------------------------------------------------------------------------------

def find_marked_comment(comments: list[dict], marker: str = MARKER) -> int | None:
    """The id of the first comment whose body carries `marker` (the one this report posted)."""
    for comment in comments:
        if marker in (comment.get("body") or ""):
            return comment["id"]
    return None


def require_token() -> None:
    if not (os.environ.get("GH_TOKEN") or os.environ.get("GITHUB_TOKEN")):
        raise PipelineError("--post needs a GitHub token: set GH_TOKEN or GITHUB_TOKEN "
                            "(in a workflow: `GH_TOKEN: ${{ github.token }}` with `pull-requests: write`)")


def post_comment(body: str, pr: int, repo: str) -> str:
    """Create or update the marked comment on pull request `pr` with `gh api`; returns what it did."""
    if MARKER not in body:
        body = f"{MARKER}\n{body}"
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
    try:
        result = subprocess.run(["gh", *args], capture_output=True, text=True)
    except FileNotFoundError:
        raise PipelineError("gh (the GitHub CLI) is not installed: https://cli.github.com") from None
    if result.returncode != 0:
        raise PipelineError(f"gh {' '.join(args[:3])} failed: {result.stderr.strip()[-500:]}")
    return result.stdout


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m detoxsum.report", description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="the base branch's run folder (unpacked pipeline-metrics "
                        "artifact); absent or empty: show this run alone")
    parser.add_argument("--head", type=Path, default=Path("."), help="this run's folder (default: the workspace)")
    parser.add_argument("--base-note", default="", help="a sentence on which base run this is (e.g. a fallback)")
    parser.add_argument("--plots", type=Path, help="folder of PNGs (python -m detoxsum.plots) to show")
    parser.add_argument("--link-prefix", default="plots", help="image links are <prefix>/<file>.png")
    parser.add_argument("--post", type=int, metavar="PR", help="create or update the comment on this pull request")
    parser.add_argument("--body", type=Path, help="with --post: post this markdown file instead of building one")
    parser.add_argument("--repo", default=os.environ.get("GITHUB_REPOSITORY"),
                        help="owner/name (default: $GITHUB_REPOSITORY)")
    args = parser.parse_args(argv)

    def report() -> None:
        if args.post is not None:
            require_token()  # before any work, so a missing token costs one line, not a build
            if not args.repo:
                raise PipelineError("--post needs --repo owner/name (or GITHUB_REPOSITORY)")
        if args.body is not None:
            if args.post is None:
                raise PipelineError("--body is the file --post sends; give --post <PR> too")
            try:
                body = args.body.read_text()
            except OSError as exc:
                raise PipelineError(f"{args.body}: cannot read the comment ({exc.strerror})") from None
        else:
            has_base = args.base is not None and args.base.is_dir() and any(metric_files(args.base))
            base = read_run(args.base, "base branch") if has_base else None
            body = render_report(base, read_run(args.head, "this PR"), args.base_note, args.plots, args.link_prefix)
            print(body)
        if args.post is not None:
            print(f"report: {post_comment(body, args.post, args.repo)} on {args.repo}#{args.post}", file=sys.stderr)

    run_stage(report)


if __name__ == "__main__":
    main()
