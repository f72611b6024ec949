"""stage_cost.py and timing.py: the FLOPs of linear layers, the per-stage timing files, and the budget table."""

import json
import platform
import sys

import pytest
import torch

from detoxsum.outputs import run_stage
from detoxsum.stage_cost import FlopCounter, StageTimer, keep_freed_memory
from detoxsum.timing import main, read_timings, report


def test_a_linear_layer_counts_its_product_and_its_backward_passes():
    layer = torch.nn.Linear(6, 4)
    rows = torch.randn(3, 5, 6)  # 15 rows
    with torch.no_grad(), FlopCounter() as inference:
        layer(rows)
    assert inference.flops == 2 * 15 * 6 * 4
    with FlopCounter() as frozen_weight:
        layer.weight.requires_grad_(False)
        layer(rows.requires_grad_())  # only the input's gradient: LoRA training's frozen layers
    assert frozen_weight.flops == 2 * (2 * 15 * 6 * 4)
    layer.weight.requires_grad_(True)
    with FlopCounter() as trained:
        layer(rows)
    assert trained.flops == 3 * (2 * 15 * 6 * 4)
    layer(rows)  # after the block: not counted
    assert trained.flops == 3 * (2 * 15 * 6 * 4)


def test_a_stage_writes_its_wall_time_and_flops_and_a_failed_one_writes_nothing(tmp_path):
    def stage():
        with torch.no_grad():
            torch.nn.Linear(10, 10)(torch.randn(100, 10))

    run_stage(stage, tmp_path / "ok.json")
    written = json.loads((tmp_path / "ok.json").read_text())
    assert written["tflop"] == round(2 * 100 * 10 * 10 / 1e12, 3) and written["wall_s"] >= 0
    assert written["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert written["peak_rss_gb"] > 0.1  # this process holds torch at least

    with pytest.raises(RuntimeError), StageTimer(tmp_path / "failed.json"):
        raise RuntimeError("the stage failed")
    assert not (tmp_path / "failed.json").exists()


def test_the_report_sums_the_stages_and_holds_them_to_the_budget():
    timings = {"train": {"wall_s": 100.0, "tflop": 10.0, "peak_rss_gb": 2.5, "processes": 2},
               "generate": {"wall_s": 300.0, "tflop": 20.0, "peak_rss_gb": 3.0, "peak_gpu_gb": 1.25},
               "old": {"wall_s": 0.0, "tflop": 0.0}}  # written before peak memory was recorded
    table, within = report(timings, peak_gflops=100.0, native_bf16=False)
    assert "| train | 100 | 25% | 10.00 | 100 | 100% | 100 | 5.0 |" in table  # two processes, a model each
    assert "| generate | 300 | 75% | 20.00 | 67 | 67% | 200 | 3.0, GPU 1.2 |" in table
    assert "| old | 0 | 0% | 0.00 | 0 | 0% | 0 | ? |" in table
    assert "| **all** | **400** | 100% | **30.00** | 75 | 75% | 300 | **5.0** (most of any stage) |" in table
    assert within  # 400 s against 1.5 x the 300 s floor
    _, within = report(timings, peak_gflops=50.0, native_bf16=True)
    assert within  # 400 s against 10 minutes
    _, within = report({"all": {"wall_s": 700.0, "tflop": 1.0}}, peak_gflops=50.0, native_bf16=True)
    assert not within


def test_the_command_reads_every_stage_file_and_warns_without_failing_on_an_overrun(tmp_path, capsys):
    (tmp_path / "fetch.json").write_text(json.dumps({"wall_s": 5000.0, "tflop": 0.001}))
    assert list(read_timings(tmp_path)) == ["fetch"]
    (tmp_path / "evaluate.json").write_text(json.dumps({"wall_s": 1.0, "tflop": 0.0}))
    (tmp_path / "extra.json").write_text(json.dumps({"wall_s": 1.0, "tflop": 0.0}))
    (tmp_path / "train.json").write_text(json.dumps({"wall_s": 1.0, "tflop": 0.0}))  # copied last: newest
    assert list(read_timings(tmp_path, ["fetch", "train", "evaluate"])) == ["fetch", "train", "evaluate", "extra"]
    assert main(["--folder", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| fetch | 5000 |" in out and "warning: the pipeline ran over its budget" in out
    assert main(["--folder", str(tmp_path / "none")]) == 1


def test_a_stage_keeps_freed_memory_where_glibc_allocates():
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is glibc  # mallopt accepted both settings (it returns 0 on a bad one)
