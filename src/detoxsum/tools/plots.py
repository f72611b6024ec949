"""Render the DVC plots to PNG images, the base branch's run and this PR's overlaid in each.

Run:
    dvc plots show --json > plots.json                      # each CI run keeps its own (artifact)
    python -m detoxsum.plots --head plots.json --base base-run/plots.json --out pr-comment/plots

`dvc plots show --json` gives one Vega-Lite spec per plot with its data inline, every point tagged
with `rev`; DVC's templates colour by `rev`. Overlaying two runs is therefore a relabel and a
concatenation of their points (what `dvc plots diff` does for two git revisions, here for two CI
runs that need not share a repository). vl-convert renders each spec to PNG without a browser.
Timing plots (time_*, runtime, throughput) are left out: they measure the runner, not the model.
Files are numbered in dvc.yaml order (`01-plots-toxicity-hatesonar.csv.png`, ...).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
from pathlib import Path

from detoxsum.errors import PipelineError
from detoxsum.outputs import run_stage
from detoxsum.tools.report import BOOKKEEPING_KEY

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUN_COLOURS = ["#13adc7", "#945dd6"]  # base, this PR (DVC's first two)


def read_specs(path: Path) -> dict[str, dict]:
    """{plot id: Vega-Lite spec} from a `dvc plots show --json` file (non-vega plots, e.g. images, skipped)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PipelineError(f"{path}: not the output of `dvc plots show --json` ({exc})") from None
    plots = data.get("data", data) if isinstance(data, dict) else None
    if not isinstance(plots, dict):
        raise PipelineError(f"{path}: expected {{\"data\": {{plot id: [...]}}}} from `dvc plots show --json`")
    return {plot_id: entries[0]["content"] for plot_id, entries in plots.items()
            if entries and entries[0].get("type") == "vega" and isinstance(entries[0].get("content"), dict)}


def is_timing(plot_id: str) -> bool:
    """`dvclive/train_ppo/plots/metrics/time_generate_s.tsv` → True: a runner measurement."""
    stem = Path(plot_id).name.rsplit(".", 1)[0]
    return bool(BOOKKEEPING_KEY.search(stem)) or "/train/runtime" in plot_id or "samples_per_second" in plot_id


def relabel(spec: dict, label: str) -> list[dict]:
    """The spec's points with `rev` set to `label` (a run's name in the legend)."""
    values = spec.get("data", {}).get("values", [])
    return [{**point, "rev": label} for point in values]


def overlay(head: dict, base: dict | None, head_label: str, base_label: str) -> dict:
    """A copy of the head spec whose data holds the base run's points too (when there is a base),
    coloured by run: DVC pins the colour scale's domain to the revisions it plotted."""
    spec = copy.deepcopy(head)
    points, labels = relabel(head, head_label), [head_label]
    if base is not None:
        points, labels = relabel(base, base_label) + points, [base_label, head_label]
    spec.setdefault("data", {})["values"] = points
    colour = spec.setdefault("encoding", {}).setdefault("color", {"field": "rev"})
    colour["scale"] = {"domain": labels, "range": RUN_COLOURS[-len(labels):]}
    return spec


def file_name(index: int, plot_id: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", plot_id).strip("-.") or "plot"
    return f"{index:02d}-{slug}.png"


def render_png(spec: dict, scale: float = 1.0) -> bytes:
    try:
        import vl_convert
    except ImportError:
        raise PipelineError("vl-convert-python is not installed: pip install -r requirements-dev.txt") from None
    try:
        png = vl_convert.vegalite_to_png(spec, scale=scale)
    except Exception as exc:  # vl-convert raises plain ValueErrors with the Vega message
        raise PipelineError(f"vl-convert could not render {spec.get('title', 'a plot')!r}: {exc}") from None
    if not png.startswith(PNG_MAGIC):
        raise PipelineError(f"vl-convert returned no PNG for {spec.get('title', 'a plot')!r}")
    return png


def render_all(head: dict[str, dict], base: dict[str, dict], out: Path, head_label: str = "this PR",
               base_label: str = "base", scale: float = 1.0) -> list[Path]:
    """Write one PNG per non-timing plot of `head` into `out`; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    wanted = [plot_id for plot_id in head if not is_timing(plot_id)]
    for index, plot_id in enumerate(wanted, start=1):
        spec = overlay(head[plot_id], base.get(plot_id), head_label, base_label)
        path = out / file_name(index, plot_id)
        path.write_bytes(render_png(spec, scale))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m detoxsum.plots", description=__doc__.splitlines()[0])
    parser.add_argument("--head", type=Path, required=True, help="this run's `dvc plots show --json` output")
    parser.add_argument("--base", type=Path, help="the base run's; absent or missing file: this run alone")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    parser.add_argument("--head-label", default="this PR")
    parser.add_argument("--base-label", default="base")
    parser.add_argument("--scale", type=float, default=1.0, help="pixels per Vega unit (1: about 660 px wide)")
    args = parser.parse_args(argv)

    def plots() -> None:
        base = read_specs(args.base) if args.base is not None and args.base.is_file() else {}
        written = render_all(read_specs(args.head), base, args.out, args.head_label, args.base_label, args.scale)
        print(f"plots: {len(written)} PNGs in {args.out}")

    run_stage(plots)


if __name__ == "__main__":
    main()
