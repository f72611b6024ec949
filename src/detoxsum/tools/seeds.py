"""Summarise a seed study: the detox and ROUGE figures of several DVC experiments that differ by seed.

Run the study, then this (docs/guide.md, "Seeds, not one run"):

    for seed in 1 2 3 4 5; do dvc exp run --queue -n seed-$seed -S base.seed=$seed; done
    dvc queue start            # wait until `dvc queue status` shows them all done
    python -m detoxsum.seeds   # or: --names seed-1 seed-2 ... ; --json results/seeds.json
    python -m detoxsum.seeds --from-json results/seeds.json --figure docs/detox-seeds.png

Two settings on the same seeds (e.g. PPO's reward, `train_ppo.seed` varied on one LoRA model):

    python -m detoxsum.seeds --names trained-1 trained-2 trained-3 --against clf-1 clf-2 clf-3

prints each figure's difference within each pair (names[i] - against[i]), the mean difference and its
95 % t interval over the pairs.

For each figure it prints every seed's value, the mean and sample sd over seeds, and in how many
seeds the paired 95 % interval of the LoRA -> PPO change excludes 0 (a change that one seed's test
set can tell from noise). Reads `dvc exp show --json`; experiments without metrics are skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
from pathlib import Path

from scipy.stats import t as student_t

from detoxsum.errors import DataError
from detoxsum.outputs import run_stage, write_json_atomic

# (label, name in evaluate.toxicity_classifiers): PPO's reward first, then the judges independent of it.
CLASSIFIERS = (
    ("reward (tox-block insult)", "tox_block_insult"),
    ("judge: profanity-check", "profanity_check"),
    ("judge: worst word", "profanity_check_worst_word"),
    ("judge: MiniLM probe", "minilm_probe"),
    ("judge: hatesonar", "hatesonar"),
)


def detox_changes() -> tuple[tuple[str, str], ...]:
    """(label, path in metrics/evaluate.json) of the changes LoRA -> PPO that carry a detox claim;
    the path of a change names its interval as <path>_ci_low / <path>_ci_high, and figures a run
    lacks (a classifier it did not use) are left out of the table. Per classifier: on the heated subset the expected max (relative and absolute), the
    probability and the greedy mean (relative); on all dialogues the expected max; then ROUGE-L."""
    rows = []
    for figure, key, subset in (("expected max", "expected_max", "heated"), ("probability", "probability", "heated"),
                                ("greedy mean", "mean", "heated"), ("expected max", "expected_max", "all")):
        prefix = "detox.heated." if subset == "heated" else "detox."
        for label, name in CLASSIFIERS:
            rows.append((f"{subset}: {figure}, {label}, %", f"{prefix}toxicity_{name}_{key}_change_pct"))
            if (subset, key) == ("heated", "expected_max"):
                rows.append((f"{subset}: {figure}, {label}, absolute", f"{prefix}toxicity_{name}_{key}_change"))
    return (*rows, ("ROUGE-L change, points", "detox.rougeL_change"))


CHANGES = detox_changes()
# (label, path) of each model's own figures; "{model}" is lora and ppo in turn.
LEVEL_TEMPLATES = (
    ("ROUGE-L", "{model}.rougeL"),
    ("ROUGE-L (pairs)", "{model}.rougeL_pairs"),
    ("ROUGE-1", "{model}.rouge1"),
    ("words per summary", "{model}.summary_words_mean"),
    ("distinct-2, greedy", "{model}.distinct_2"),
    ("distinct-2, samples", "{model}.distinct_2_samples"),
) + tuple((f"heated {figure} ({label})", f"{{model}}.heated.toxicity_{name}_{key}")
          for figure, key in (("expected max", "expected_max"), ("probability", "probability"),
                              ("greedy mean", "mean"))
          for label, name in CLASSIFIERS)
LEVELS = tuple((f"{model.upper() if model == 'ppo' else 'LoRA'} {label}", path.format(model=model))
               for label, path in LEVEL_TEMPLATES for model in ("lora", "ppo"))


def lookup(metrics: dict, path: str):
    value = metrics
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def experiments_from_show(show: list) -> dict[str, dict]:
    """{experiment name: {"seed": base.seed, "ppo_seed": train_ppo.seed, "metrics": evaluate.json}}
    from `dvc exp show --json`."""
    found: dict[str, dict] = {}

    def visit(node, name=None):
        if isinstance(node, dict):
            name = node.get("name") or name
            data = node.get("data")
            if isinstance(data, dict) and "metrics" in data and name:
                metrics = (data.get("metrics") or {}).get("metrics/evaluate.json", {}).get("data")
                params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
                if metrics:
                    found[name] = {"seed": lookup(params, "base.seed"), "ppo_seed": lookup(params, "train_ppo.seed"),
                                   "metrics": metrics}
            for value in node.values():
                visit(value, name)
        elif isinstance(node, list):
            for item in node:
                visit(item, name)

    visit(show)
    return found


def summarise(runs: dict[str, dict]) -> dict:
    """Per figure: each run's value, the mean, the sd over runs, and (for changes) how many runs'
    intervals exclude 0."""
    table = {}
    for label, path in CHANGES + LEVELS:
        values = {name: lookup(run["metrics"], path) for name, run in runs.items()}
        values = {name: value for name, value in values.items() if value is not None}
        if not values:
            continue
        row = {"per_run": values, "mean": round(statistics.fmean(values.values()), 3),
               "sd": round(statistics.stdev(values.values()), 3) if len(values) > 1 else 0.0}
        if (label, path) in CHANGES:
            excluded = [name for name in values if excludes_zero(runs[name]["metrics"], path)]
            row["interval_excludes_0"] = f"{len(excluded)}/{len(values)}"
        table[label] = row
    return table


def paired_differences(runs: dict[str, dict], against: dict[str, dict]) -> dict:
    """Per figure: the difference runs[i] - against[i] within each pair (matched by position), their
    mean, sd and the 95 % t interval of the mean difference over the pairs (n - 1 degrees of freedom).
    Pairs share a seed, so what both settings' runs have in common (LoRA model, evaluation draws)
    cancels and the interval is about the settings, not about the seeds."""
    table = {}
    for label, path in CHANGES + LEVELS:
        differences = {}
        for (name, run), (other_name, other) in zip(runs.items(), against.items()):
            value, other_value = lookup(run["metrics"], path), lookup(other["metrics"], path)
            if value is not None and other_value is not None:
                differences[f"{name} - {other_name}"] = value - other_value
        if len(differences) < 2:
            continue
        mean, sd = statistics.fmean(differences.values()), statistics.stdev(differences.values())
        half_width = float(student_t.ppf(0.975, len(differences) - 1)) * sd / math.sqrt(len(differences))
        table[label] = {"per_run": differences, "mean": round(mean, 3), "sd": round(sd, 3),
                        "ci_low": round(mean - half_width, 3), "ci_high": round(mean + half_width, 3)}
    return table


def render_paired(table: dict, pairs: list[str]) -> str:
    return markdown_table(table, pairs, ["mean difference", "95 % interval (t, over pairs)"],
                          lambda row: [figure(row["mean"]), f"[{figure(row['ci_low'])}, {figure(row['ci_high'])}]"])


def excludes_zero(metrics: dict, path: str) -> bool:
    low, high = lookup(metrics, f"{path}_ci_low"), lookup(metrics, f"{path}_ci_high")
    return low is not None and high is not None and (low > 0 or high < 0)


def figure(value: float) -> str:
    """Two decimals for % and ROUGE points, three for toxicities and shares (which live in [0, 1])."""
    return f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}"


def render(table: dict, names: list[str]) -> str:
    return markdown_table(table, names, ["mean", "sd", "interval excludes 0"],
                          lambda row: [figure(row["mean"]), figure(row["sd"]), row.get("interval_excludes_0", "")])


def markdown_table(table: dict, columns: list[str], summary_headers: list[str], summary_cells) -> str:
    """One row per figure: its value in each column (run or pair), then `summary_cells(row)`."""
    lines = ["| figure | " + " | ".join(columns + summary_headers) + " |",
             "|" + "---|" * (len(columns) + len(summary_headers) + 1)]
    for label, row in table.items():
        cells = [figure(row["per_run"][column]) if column in row["per_run"] else "" for column in columns]
        lines.append(f"| {label} | " + " | ".join(cells + summary_cells(row)) + " |")
    return "\n".join(lines)


# The README figure: (panel, series label, figure name without its model prefix).
FIGURE_SERIES = tuple((f"heated {figure} toxicity (lower is better)", label, f"heated {figure} ({label})")
                      for figure in ("greedy mean", "expected max") for label, _ in CLASSIFIERS) + (
    ("ROUGE-L (higher is better)", "ROUGE-L", "ROUGE-L"),)


def figure_spec(table: dict) -> dict:
    """Vega-Lite: per series, LoRA and PPO side by side, a bar at the mean over seeds and a dot per seed."""
    rows = [{"panel": panel, "series": series, "model": model, "run": run, "value": value,
             "mean": table[f"{model} {name}"]["mean"]}
            for panel, series, name in FIGURE_SERIES for model in ("LoRA", "PPO") if f"{model} {name}" in table
            for run, value in table[f"{model} {name}"]["per_run"].items()]
    colour = {"field": "model", "type": "nominal", "scale": {"range": ["#8c8c8c", "#2b7bba"]}}
    x = {"field": "model", "type": "nominal", "title": None, "axis": {"labelAngle": 0}}
    def panel_chart(panel: str) -> dict:
        return {"title": panel, "transform": [{"filter": {"field": "panel", "equal": panel}}],
                "facet": {"column": {"field": "series", "type": "nominal", "title": None}},
                "spec": {"width": 95, "height": 150, "layer": [
                    {"mark": {"type": "bar", "opacity": 0.55},
                     "encoding": {"x": x, "y": {"aggregate": "mean", "field": "value", "type": "quantitative",
                                                "title": None}, "color": colour}},
                    {"mark": {"type": "circle", "size": 28, "opacity": 0.9, "color": "black"},
                     "encoding": {"x": x, "y": {"field": "value", "type": "quantitative"}}}]}}
    return {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "data": {"values": rows},
            "vconcat": [panel_chart(panel) for panel in dict.fromkeys(panel for panel, _, _ in FIGURE_SERIES)],
            "config": {"legend": {"disable": True}}}


def write_figure(table: dict, path: Path) -> None:
    import vl_convert  # requirements-dev.txt: only the README figure and CI's plots need it

    path.write_bytes(vl_convert.vegalite_to_png(figure_spec(table), scale=2))
    print(f"seeds: figure -> {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", nargs="*", help="experiments to summarise (default: every one with metrics)")
    parser.add_argument("--against", nargs="*",
                        help="experiments of another setting, paired with --names by position: prints the "
                             "differences within pairs and the mean difference's 95 %% t interval")
    parser.add_argument("--json", type=Path, help="also write the table as JSON here")
    parser.add_argument("--from-json", type=Path, help="summarise a table written by --json instead of dvc exp show")
    parser.add_argument("--figure", type=Path, help="also draw LoRA vs PPO per seed as a PNG here")
    parser.add_argument("--all-commits", action="store_true",
                        help="also experiments based on earlier commits (dvc exp show -A), e.g. a study "
                             "queued before the last commit")
    args = parser.parse_args(argv)
    if args.from_json:
        stored = json.loads(args.from_json.read_text())
        if "pairs" in stored:  # written with --against
            print(render_paired(stored["figures"], stored["pairs"]))
            return
        print(render(stored["figures"], list(stored["runs"])))
        if args.figure:
            write_figure(stored["figures"], args.figure)
        return
    runs = experiments_from_show(dvc_exp_show(args.all_commits))
    if args.against:
        compare_settings(runs, args.names, args.against, args.json)
        return
    if args.names:
        runs = select(runs, args.names)
    if len(runs) < 2:
        raise DataError(f"need at least 2 experiments with metrics/evaluate.json, found {len(runs)}")
    names = sorted(runs, key=lambda name: (runs[name]["seed"] is None, runs[name]["seed"], name))
    table = summarise(runs)
    print("seeds: " + ", ".join(f"{name} ({describe_seeds(runs[name])})" for name in names))
    print(render(table, names))
    if args.json:
        write_json_atomic(args.json, {"runs": {n: runs[n]["seed"] for n in names}, "figures": table})
    if args.figure:
        write_figure(table, args.figure)


def compare_settings(runs: dict[str, dict], names: list[str] | None, against: list[str], json_path: Path | None) -> None:
    if not names or len(names) != len(against):
        raise DataError("--against needs --names with as many experiments, paired by position")
    table = paired_differences(select(runs, names), select(runs, against))
    pairs = [f"{name} - {other}" for name, other in zip(names, against)]
    print("seeds: pairs " + ", ".join(f"{name} - {other} ({describe_seeds(runs[name])})"
                                      for name, other in zip(names, against)))
    print(render_paired(table, pairs))
    if json_path:
        write_json_atomic(json_path, {"pairs": pairs, "figures": table})


def dvc_exp_show(all_commits: bool) -> list:
    show = ["dvc", "exp", "show", "--json", *(["--all-commits"] if all_commits else [])]
    shown = subprocess.run(show, capture_output=True, text=True)
    if shown.returncode != 0:
        raise DataError(f"dvc exp show failed: {shown.stderr.strip().splitlines()[-1:]}")
    return json.loads(shown.stdout)


def select(runs: dict[str, dict], names: list[str]) -> dict[str, dict]:
    missing = [name for name in names if name not in runs]
    if missing:
        raise DataError(f"no experiment with metrics named {missing[0]!r} (have: {', '.join(sorted(runs))})")
    return {name: runs[name] for name in names}


def describe_seeds(run: dict) -> str:
    ppo_seed = run.get("ppo_seed")
    return f"base.seed={run['seed']}" + ("" if ppo_seed is None else f", train_ppo.seed={ppo_seed}")

if __name__ == "__main__":
    run_stage(main)
