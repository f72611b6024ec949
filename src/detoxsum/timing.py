"""What each stage cost, as a table that holds the pipeline to its budget.

Every stage writes `metrics/timing/<stage>.json` (`stage_cost.StageTimer`): its wall time, the
FLOPs of its matmuls, its peak memory and the machine's CPU capability. This command reads them.

    python -m detoxsum.timing            # after dvc repro: per stage wall time, TFLOP, GFLOP/s,
                                         # share of this machine's matmul peak, total vs the budget

The peak is measured when the command runs (the fastest of repeated [2048, 576] @ [576, 1536]
matmuls, SmolLM2-135M's MLP up-projection for 2048 tokens; 512 tokens measured 30-40 % lower
and less steadily on a 2-core VM, in fp32 and, where native, bf16), so the
shares are of the precision `auto` runs here. The budget: 10 minutes where the CPU (or GPU) has
native bf16, whichever precision `auto` then found faster; elsewhere 1.5x the compute floor (the
counted FLOPs at the fp32 peak). An overrun is a warning, never a failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml

from detoxsum.precision import DTYPES, Machine, default_device

# `time make repro` budget of the default where bf16 is native (seconds), and elsewhere the allowed
# multiple of the compute floor.
NATIVE_BF16_BUDGET_S = 600.0
FLOOR_MULTIPLE = 1.5
PEAK_SHAPE = (2048, 576, 1536)  # rows, in, out: SmolLM2-135M's MLP up-projection for 2048 tokens


def matmul_peak_gflops(dtype: torch.dtype, repeats: int = 20) -> float:
    """This machine's rate for PEAK_SHAPE in `dtype`: the fastest of `repeats` after three warm-ups
    (a peak, and the figure least moved by other work on the machine)."""
    rows, inner, cols = PEAK_SHAPE
    device = default_device()
    left = torch.randn(rows, inner, device=device, dtype=dtype)
    right = torch.randn(inner, cols, device=device, dtype=dtype)
    times = []
    for _ in range(repeats + 3):  # three warm-ups: the thread pool and the kernels settle
        started = time.perf_counter()
        left @ right
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return 2 * rows * inner * cols / min(times[3:]) / 1e9


def read_timings(folder: Path, stage_order: list[str] | None = None) -> dict[str, dict]:
    """Every stage's timing file in `folder`, by stage name: in `stage_order` (dvc.yaml's), then any
    other by file modification time (a checkout or a copy resets those, so they are the fallback)."""
    rank = {stage: index for index, stage in enumerate(stage_order or [])}
    files = sorted(folder.glob("*.json"), key=lambda path: (rank.get(path.stem, len(rank)), path.stat().st_mtime))
    return {path.stem: json.loads(path.read_text()) for path in files}


def dvc_stage_order(dvc_yaml: Path) -> list[str]:
    """The stages of `dvc_yaml` in the order it lists them (empty where there is no such file)."""
    if not dvc_yaml.is_file():
        return []
    return list((yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {}))


def report(timings: dict[str, dict], peak_gflops: float, native_bf16: bool) -> tuple[str, bool]:
    """The markdown table of `timings` against `peak_gflops`, and whether the total is within budget."""
    total_s = sum(entry["wall_s"] for entry in timings.values())
    total_tflop = sum(entry["tflop"] for entry in timings.values())
    floor_s = total_tflop * 1e3 / peak_gflops
    budget_s = NATIVE_BF16_BUDGET_S if native_bf16 else FLOOR_MULTIPLE * floor_s
    lines = ["| stage | wall s | share | TFLOP | GFLOP/s | of peak | floor s | peak memory GB |",
             "|---|---|---|---|---|---|---|---|"]
    for stage, entry in timings.items():
        rate = entry["tflop"] * 1e3 / entry["wall_s"] if entry["wall_s"] else 0.0
        lines.append(f"| {stage} | {entry['wall_s']:.0f} | {entry['wall_s'] / max(total_s, 1e-9):.0%} | "
                     f"{entry['tflop']:.2f} | {rate:.0f} | {rate / peak_gflops:.0%} | "
                     f"{entry['tflop'] * 1e3 / peak_gflops:.0f} | {stage_memory(entry)} |")
    peaks = [stage_memory_gb(entry) for entry in timings.values() if "peak_rss_gb" in entry]
    lines.append(f"| **all** | **{total_s:.0f}** | 100% | **{total_tflop:.2f}** | {total_tflop * 1e3 / max(total_s, 1e-9):.0f} "
                 f"| {total_tflop * 1e3 / max(total_s, 1e-9) / peak_gflops:.0%} | {floor_s:.0f} | "
                 f"{f'**{max(peaks):.1f}** (most of any stage)' if peaks else '?'} |")
    rule = ("10 min (native bf16)" if native_bf16 else f"{FLOOR_MULTIPLE}x the compute floor of {floor_s:.0f} s")
    lines.append("")
    lines.append(f"total {total_s / 60:.1f} min of stage time against a budget of {budget_s / 60:.1f} min: {rule}")
    return "\n".join(lines), total_s <= budget_s


def stage_memory_gb(entry: dict) -> float:
    """A stage's resident memory at its peak: its processes' together (each holds the model)."""
    return entry["peak_rss_gb"] * entry.get("processes", 1)


def stage_memory(entry: dict) -> str:
    """The peak-memory cell: resident GB (and the GPU's); '?' for a file written before it was recorded."""
    if "peak_rss_gb" not in entry:
        return "?"
    gpu = f", GPU {entry['peak_gpu_gb']:.1f}" if "peak_gpu_gb" in entry else ""
    return f"{stage_memory_gb(entry):.1f}{gpu}"


def main(argv: list[str] | None = None) -> int:
    from detoxsum.stages.paths import TIMING_DIR  # the command's default; the functions above take a folder

    parser = argparse.ArgumentParser(description="Per-stage wall time and FLOPs of the last dvc repro, against the budget.")
    parser.add_argument("--folder", type=Path, default=TIMING_DIR, help="where the stages wrote their timing files")
    args = parser.parse_args(argv)
    timings = read_timings(args.folder, dvc_stage_order(Path("dvc.yaml")))
    if not timings:
        print(f"error: no timing files in {args.folder}; run dvc repro first", file=sys.stderr)
        return 1
    fp32_peak = matmul_peak_gflops(torch.float32)  # before the bf16 probe, which resizes the thread pool
    machine = Machine.current()
    precision = "bf16" if machine.native_bf16 and machine.bf16_wins is not False else "fp32"  # what auto runs
    peak = matmul_peak_gflops(DTYPES[precision]) if precision == "bf16" else fp32_peak
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"machine: {default_device()} (CPU capability {capability}, {torch.get_num_threads()} threads); "
          f"{precision} matmul peak {peak:.0f} GFLOP/s ({'x'.join(map(str, PEAK_SHAPE))})")
    # The budget follows the hardware (native bf16: 10 minutes), even where auto found fp32 faster.
    table, within = report(timings, peak, machine.native_bf16)
    print(table)
    if not within:
        print("warning: the pipeline ran over its budget (docs/performance.md says where the time goes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
