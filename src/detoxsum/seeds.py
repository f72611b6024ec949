"""Summarise a seed study: the detox and ROUGE figures of several DVC experiments that differ by seed.

Run the study, then this (docs/guide.md, "Seeds, not one run"):

    for seed in 1 2 3 4 5; do dvc exp run --queue -n seed-$seed -S base.seed=$seed; done
    dvc queue start            # wait until `dvc queue status` shows them all done
    python -m detoxsum.seeds   # or: --names seed-1 seed-2 ... ; --json results/seeds.json

For each figure it prints every seed's value, the mean and sample sd over seeds, and in how many
seeds the paired 95 % interval of the LoRA -> PPO change excludes 0 (a change that one seed's test
set can tell from noise). Reads `dvc exp show --json`; experiments without metrics are skipped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path

from detoxsum.errors import DataError
from detoxsum.outputs import run_stage, write_json_atomic

# (label, path in metrics/evaluate.json) of the changes LoRA -> PPO that carry a detox claim; the
# path of a change names its interval as <path>_ci_low / <path>_ci_high.
CHANGES = (
    ("heated: expected max, reward classifier, %", "detox.heated.toxicity_profanity_check_expected_max_change_pct"),
    ("heated: expected max, judge (hatesonar), %", "detox.heated.toxicity_hatesonar_expected_max_change_pct"),
    ("heated: expected max, worst word, %", "detox.heated.toxicity_profanity_check_worst_word_expected_max_change_pct"),
    ("heated: probability, reward classifier, %", "detox.heated.toxicity_profanity_check_probability_change_pct"),
    ("heated: probability, judge (hatesonar), %", "detox.heated.toxicity_hatesonar_probability_change_pct"),
    ("heated: probability, worst word, %", "detox.heated.toxicity_profanity_check_worst_word_probability_change_pct"),
    ("heated: greedy mean, reward classifier, %", "detox.heated.toxicity_profanity_check_mean_change_pct"),
    ("heated: greedy mean, judge (hatesonar), %", "detox.heated.toxicity_hatesonar_mean_change_pct"),
    ("all: expected max, reward classifier, %", "detox.toxicity_profanity_check_expected_max_change_pct"),
    ("all: expected max, judge (hatesonar), %", "detox.toxicity_hatesonar_expected_max_change_pct"),
    ("ROUGE-L change, points", "detox.rougeL_change"),
)
# (label, path) of each model's own figures; "{model}" is lora and ppo in turn.
LEVEL_TEMPLATES = (
    ("ROUGE-L", "{model}.rougeL"),
    ("ROUGE-L (pairs)", "{model}.rougeL_pairs"),
    ("ROUGE-1", "{model}.rouge1"),
    ("words per summary", "{model}.summary_words_mean"),
    ("heated expected max (reward clf)", "{model}.heated.toxicity_profanity_check_expected_max"),
    ("heated expected max (hatesonar)", "{model}.heated.toxicity_hatesonar_expected_max"),
    ("heated expected max (worst word)", "{model}.heated.toxicity_profanity_check_worst_word_expected_max"),
    ("heated probability (reward clf)", "{model}.heated.toxicity_profanity_check_probability"),
    ("heated probability (hatesonar)", "{model}.heated.toxicity_hatesonar_probability"),
    ("heated greedy mean (reward clf)", "{model}.heated.toxicity_profanity_check_mean"),
)
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
    """{experiment name: {"seed": ..., "metrics": evaluate.json}} from `dvc exp show --json`."""
    found: dict[str, dict] = {}

    def visit(node, name=None):
        if isinstance(node, dict):
            name = node.get("name") or name
            data = node.get("data")
            if isinstance(data, dict) and "metrics" in data and name:
                metrics = (data.get("metrics") or {}).get("metrics/evaluate.json", {}).get("data")
                params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
                if metrics:
                    found[name] = {"seed": lookup(params, "base.seed"), "metrics": metrics}
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


def excludes_zero(metrics: dict, path: str) -> bool:
    low, high = lookup(metrics, f"{path}_ci_low"), lookup(metrics, f"{path}_ci_high")
    return low is not None and high is not None and (low > 0 or high < 0)


def figure(value: float) -> str:
    """Two decimals for % and ROUGE points, three for toxicities and shares (which live in [0, 1])."""
    return f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}"


def render(table: dict, names: list[str]) -> str:
    header = "| figure | " + " | ".join(names) + " | mean | sd | interval excludes 0 |"
    lines = [header, "|" + "---|" * (len(names) + 4)]
    for label, row in table.items():
        cells = [figure(row["per_run"][n]) if n in row["per_run"] else "" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {figure(row['mean'])} | {figure(row['sd'])} | "
                     f"{row.get('interval_excludes_0', '')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", nargs="*", help="experiments to summarise (default: every one with metrics)")
    parser.add_argument("--json", type=Path, help="also write the table as JSON here")
    parser.add_argument("--all-commits", action="store_true",
                        help="also experiments based on earlier commits (dvc exp show -A), e.g. a study "
                             "queued before the last commit")
    args = parser.parse_args(argv)
    show = ["dvc", "exp", "show", "--json", *(["--all-commits"] if args.all_commits else [])]
    shown = subprocess.run(show, capture_output=True, text=True)
    if shown.returncode != 0:
        raise DataError(f"dvc exp show failed: {shown.stderr.strip().splitlines()[-1:]}")
    runs = experiments_from_show(json.loads(shown.stdout))
    if args.names:
        missing = [name for name in args.names if name not in runs]
        if missing:
            raise DataError(f"no experiment with metrics named {missing[0]!r} (have: {', '.join(sorted(runs))})")
        runs = {name: runs[name] for name in args.names}
    if len(runs) < 2:
        raise DataError(f"need at least 2 experiments with metrics/evaluate.json, found {len(runs)}")
    names = sorted(runs, key=lambda name: (runs[name]["seed"] is None, runs[name]["seed"], name))
    table = summarise(runs)
    print("seeds: " + ", ".join(f"{name} (base.seed={runs[name]['seed']})" for name in names))
    print(render(table, names))
    if args.json:
        write_json_atomic(args.json, {"runs": {n: runs[n]["seed"] for n in names}, "figures": table})


if __name__ == "__main__":
    run_stage(main)
