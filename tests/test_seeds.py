"""The seed-study summary reads `dvc exp show --json` and counts intervals that exclude 0."""

import json

from detoxsum.tools.seeds import experiments_from_show, render, summarise


def evaluate_metrics(change: float, low: float, high: float, rouge_l: float) -> dict:
    return {"lora": {"rougeL": 30.0}, "ppo": {"rougeL": rouge_l},
            "detox": {"rougeL_change": rouge_l - 30.0,
                      "heated": {"toxicity_profanity_check_expected_max_change_pct": change,
                                 "toxicity_profanity_check_expected_max_change_pct_ci_low": low,
                                 "toxicity_profanity_check_expected_max_change_pct_ci_high": high}}}


def show_json(runs: dict[str, tuple[int, dict]]) -> list:
    """The shape of `dvc exp show --json` (dvc 3): a workspace entry and a baseline with experiments."""
    experiments = [{"name": name, "revs": [{"rev": "abc", "name": name, "data": {
        "params": {"params.yaml": {"data": {"base": {"seed": seed}}}},
        "metrics": {"metrics/evaluate.json": {"data": metrics}}}}]} for name, (seed, metrics) in runs.items()]
    return [{"rev": "workspace", "name": None, "data": {"params": {}, "metrics": {}}},
            {"rev": "HEAD", "name": "main", "data": {"params": {}, "metrics": {}}, "experiments": experiments}]


def test_summary_gives_mean_sd_and_how_many_intervals_exclude_zero():
    runs = experiments_from_show(show_json({
        "seed-1": (1, evaluate_metrics(-60.0, -80.0, -40.0, 29.5)),
        "seed-2": (2, evaluate_metrics(-20.0, -45.0, 5.0, 30.5)),
        "seed-3": (3, evaluate_metrics(-40.0, -70.0, -10.0, 30.0)),
    }))
    assert {name: run["seed"] for name, run in runs.items()} == {"seed-1": 1, "seed-2": 2, "seed-3": 3}
    table = summarise(runs)
    row = table["heated: expected max, judge: profanity-check, %"]
    assert row["mean"] == -40.0 and row["sd"] == 20.0 and row["interval_excludes_0"] == "2/3"
    assert table["ROUGE-L change, points"]["mean"] == 0.0
    assert "| heated: expected max, judge: profanity-check, % | -60.00 | -20.00 | -40.00 | -40.00 | 20.00 | 2/3 |" in \
        render(table, ["seed-1", "seed-2", "seed-3"])


def test_toxicities_keep_three_decimals_and_percentages_two():
    table = {"tox": {"per_run": {"a": 0.1496, "b": 0.2375}, "mean": 0.1936, "sd": 0.0622},
             "pct": {"per_run": {"a": -37.021, "b": -12.5}, "mean": -24.76, "sd": 17.33, "interval_excludes_0": "1/2"}}
    rendered = render(table, ["a", "b"])
    assert "| tox | 0.150 | 0.237 | 0.194 | 0.062 |  |" in rendered
    assert "| pct | -37.02 | -12.50 | -24.76 | 17.33 | 1/2 |" in rendered


def test_the_readme_figure_draws_every_seed_of_both_models(tmp_path):
    from detoxsum.tools.seeds import FIGURE_SERIES, figure_spec, main

    runs = {"seed-1": 0.2, "seed-2": 0.3}
    table = {f"{model} {name}": {"per_run": {run: value + (model == "PPO") for run, value in runs.items()}, "mean": 0.0, "sd": 0.0}
             for _, _, name in FIGURE_SERIES for model in ("LoRA", "PPO")}
    rows = figure_spec(table)["data"]["values"]
    assert len(rows) == len(FIGURE_SERIES) * 2 * len(runs)
    assert {(row["model"], row["run"], row["value"]) for row in rows if row["series"] == "ROUGE-L"} == {
        ("LoRA", "seed-1", 0.2), ("LoRA", "seed-2", 0.3), ("PPO", "seed-1", 1.2), ("PPO", "seed-2", 1.3)}
    stored = tmp_path / "seeds.json"
    stored.write_text(json.dumps({"runs": {run: None for run in runs}, "figures": table}))
    main(["--from-json", str(stored), "--figure", str(tmp_path / "figure.png")])
    assert (tmp_path / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_two_settings_on_the_same_seeds_give_the_mean_difference_and_its_t_interval(tmp_path, capsys):
    from detoxsum.tools.seeds import main, paired_differences, render_paired

    runs = experiments_from_show(show_json({
        "new-1": (1, evaluate_metrics(-50.0, -70.0, -30.0, 30.0)),
        "new-2": (2, evaluate_metrics(-30.0, -50.0, -10.0, 30.0)),
        "new-3": (3, evaluate_metrics(-40.0, -60.0, -20.0, 30.0)),
        "old-1": (1, evaluate_metrics(-40.0, -60.0, -20.0, 30.0)),
        "old-2": (2, evaluate_metrics(-30.0, -50.0, -10.0, 30.0)),
        "old-3": (3, evaluate_metrics(-20.0, -40.0, 0.0, 30.0)),
    }))
    new = {name: runs[name] for name in ("new-1", "new-2", "new-3")}
    old = {name: runs[name] for name in ("old-1", "old-2", "old-3")}
    row = paired_differences(new, old)["heated: expected max, judge: profanity-check, %"]
    assert row["per_run"] == {"new-1 - old-1": -10.0, "new-2 - old-2": 0.0, "new-3 - old-3": -20.0}
    # mean -10, sd 10, t(0.975, 2) = 4.303: half width 4.303 * 10 / sqrt(3) = 24.841
    assert row["mean"] == -10.0 and row["sd"] == 10.0
    assert (row["ci_low"], row["ci_high"]) == (-34.841, 14.841)
    pairs = list(row["per_run"])
    assert "| heated: expected max, judge: profanity-check, % | -10.00 | 0.000 | -20.00 | -10.00 | [-34.84, 14.84] |" in \
        render_paired({"heated: expected max, judge: profanity-check, %": row}, pairs)
    stored = tmp_path / "paired.json"
    stored.write_text(json.dumps({"pairs": pairs, "figures": {"x": row}}))
    main(["--from-json", str(stored)])
    assert "| x | -10.00 | 0.000 | -20.00 | -10.00 | [-34.84, 14.84] |" in capsys.readouterr().out


def test_against_needs_as_many_names():
    import pytest

    from detoxsum.errors import DataError
    from detoxsum.tools.seeds import compare_settings

    runs = experiments_from_show(show_json({"a": (1, evaluate_metrics(-1, -2, 0, 30)), "b": (1, evaluate_metrics(-1, -2, 0, 30))}))
    with pytest.raises(DataError, match="--against needs --names"):
        compare_settings(runs, ["a"], ["a", "b"], None)
    with pytest.raises(DataError, match="no experiment with metrics named 'c'"):
        compare_settings(runs, ["c"], ["a"], None)
