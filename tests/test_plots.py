"""PNG rendering of DVC plots: a tiny `dvc plots show --json`-shaped spec, base and PR overlaid."""

import json
import subprocess
import sys

import pytest
from pipeline import tool_env

from detoxsum.tools.plots import PNG_MAGIC, is_timing, overlay, read_specs, render_all

pytest.importorskip("vl_convert", reason="vl-convert-python: pip install -r requirements-dev.txt")


def loss_spec(losses: list[float]) -> dict:
    """What DVC writes for a linear plot: inline points tagged with `rev`, colour pinned to the revisions."""
    return {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "title": "loss",
            "data": {"values": [{"step": str(step), "loss": str(loss), "rev": "workspace"}
                                for step, loss in enumerate(losses)]},
            "encoding": {"x": {"field": "step", "type": "quantitative"},
                         "color": {"field": "rev", "scale": {"domain": ["workspace"], "range": ["#945dd6"]}}},
            "layer": [{"mark": "line", "encoding": {"y": {"field": "loss", "type": "quantitative"}}}]}


def plots_json(path, specs: dict) -> None:
    path.write_text(json.dumps({"data": {plot_id: [{"type": "vega", "revisions": ["workspace"], "content": spec}]
                                         for plot_id, spec in specs.items()}}))


def test_overlay_relabels_both_runs_and_colours_by_run():
    spec = overlay(loss_spec([2.0, 1.5]), loss_spec([2.2, 1.9]), "this PR", "main @ 1a2b3c4")
    assert [point["rev"] for point in spec["data"]["values"]] == ["main @ 1a2b3c4"] * 2 + ["this PR"] * 2
    assert spec["encoding"]["color"]["scale"]["domain"] == ["main @ 1a2b3c4", "this PR"]
    assert overlay(loss_spec([1.0]), None, "this PR", "base")["encoding"]["color"]["scale"]["domain"] == ["this PR"]


def test_renders_valid_pngs_in_plot_order_without_timings(tmp_path):
    plots_json(tmp_path / "head.json", {"LoRA loss": loss_spec([2.0, 1.5, 1.2]),
                                         "dvclive/train_ppo/plots/metrics/time_generate_s.tsv": loss_spec([3.0]),
                                         "dvclive/train_ppo/plots/metrics/kl.tsv": loss_spec([0.1, 0.3])})
    plots_json(tmp_path / "base.json", {"LoRA loss": loss_spec([2.1, 1.7, 1.4])})
    result = subprocess.run([sys.executable, "-m", "detoxsum.plots", "--head", str(tmp_path / "head.json"),
                             "--base", str(tmp_path / "base.json"), "--out", str(tmp_path / "png")],
                            env=tool_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    written = sorted(path.name for path in (tmp_path / "png").iterdir())
    assert written == ["01-LoRA-loss.png", "02-dvclive-train-ppo-plots-metrics-kl.tsv.png"]
    for name in written:
        assert (tmp_path / "png" / name).read_bytes().startswith(PNG_MAGIC)


def test_missing_base_file_renders_this_run_alone(tmp_path):
    plots_json(tmp_path / "head.json", {"LoRA loss": loss_spec([2.0, 1.5])})
    written = render_all(read_specs(tmp_path / "head.json"), {}, tmp_path / "png")
    assert len(written) == 1 and written[0].read_bytes().startswith(PNG_MAGIC)


def test_timing_plots_are_left_out():
    assert is_timing("dvclive/train_ppo/plots/metrics/time_forward_s.tsv")
    assert is_timing("dvclive/train_lora/plots/metrics/train/runtime.tsv")
    assert not is_timing("plots/toxicity/hatesonar.csv") and not is_timing("LoRA loss")


def test_not_a_plots_file_is_one_error_line(tmp_path):
    (tmp_path / "head.json").write_text("not json")
    result = subprocess.run([sys.executable, "-m", "detoxsum.plots", "--head", str(tmp_path / "head.json"),
                             "--out", str(tmp_path / "png")], env=tool_env(), capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
