"""What each stage cost: wall time and matmul FLOPs, and the table that holds them to the budget.

Every stage runs inside `StageTimer` (`outputs.run_stage`), which counts the FLOPs of every
`nn.Linear` call in the process (one global forward hook: 2 x rows x in x out, times 2 when the
input needs a gradient and 3 when the weight does, for the backward pass) and writes
`metrics/timing/<stage>.json`: wall time, FLOPs, the peak memory of the process (resident set,
and on a GPU the most torch allocated), the precision the stage computed in and the machine's CPU
capability. The linear layers are nearly all of a transformer's arithmetic; what is
left out is the attention-score products (4 x context x width per token and layer: ~10 % more at
the default's ~300-token prompts) and everything that is no matmul.

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
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from detoxsum.precision import DTYPES, Machine, cpu_has_native_bf16, default_device

# `time make repro` budget of the default where bf16 is native (seconds), and elsewhere the allowed
# multiple of the compute floor.
NATIVE_BF16_BUDGET_S = 600.0
FLOOR_MULTIPLE = 1.5
PEAK_SHAPE = (2048, 576, 1536)  # rows, in, out: SmolLM2-135M's MLP up-projection for 2048 tokens


def linear_flops(rows: int, layer: torch.nn.Linear, input_needs_grad: bool) -> int:
    """FLOPs of one `layer` call on `rows` input rows: the product itself (2 x rows x in x out),
    and with autograd on, the input's gradient (the same again) and the weight's (the same again)."""
    one_pass = 2 * rows * layer.in_features * layer.out_features
    if not torch.is_grad_enabled():
        return one_pass
    return one_pass * (1 + int(input_needs_grad) + int(layer.weight.requires_grad))


class FlopCounter:
    """Counts the FLOPs of every `nn.Linear` call while open (see `linear_flops`)."""

    def __init__(self):
        self.flops = 0
        self.handle = None

    def hook(self, module, inputs, _output) -> None:
        if isinstance(module, torch.nn.Linear) and inputs and isinstance(inputs[0], torch.Tensor):
            features = inputs[0]
            rows = features.numel() // max(features.shape[-1], 1)
            self.flops += linear_flops(rows, module, features.requires_grad)

    def __enter__(self) -> FlopCounter:
        self.handle = torch.nn.modules.module.register_module_forward_hook(self.hook)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


@dataclass
class StageTimer:
    """Wall time and FLOPs of one stage run: `with StageTimer(path) as timer: ...` writes `path`
    when the block ends without an error (a failed run leaves the last good figures)."""

    path: Path
    processes: int = 1

    def __enter__(self) -> StageTimer:
        self.counter = FlopCounter().__enter__()
        self.started = time.perf_counter()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        wall_s = time.perf_counter() - self.started
        self.counter.__exit__()
        if exc_type is None:
            self.write(wall_s)

    def write(self, wall_s: float) -> None:
        from detoxsum.outputs import write_json_atomic

        write_json_atomic(self.path, {
            "wall_s": round(wall_s, 1),
            # Under `accelerate launch` each process counts its own share; the shares are equal.
            "tflop": round(self.counter.flops * self.processes / 1e12, 3),
            "processes": self.processes,
            **peak_memory_gb(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": cpu_has_native_bf16(),
        })


def peak_memory_gb() -> dict[str, float]:
    """This process's peak resident memory since it started (imports and model loads included), in
    GB, and on a CUDA device the most torch allocated there. Under `accelerate launch` each process
    holds its own copy of the model: `processes` x this is the stage's footprint."""
    kilobytes = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,  # Linux reports KiB
                    resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    peak = {"peak_rss_gb": round(kilobytes * 1024 / 1e9, 2)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        peak["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    return peak


# --- the report ---------------------------------------------------------------------------------


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


def read_timings(folder: Path) -> dict[str, dict]:
    """Every stage's timing file in `folder`, by stage name, in the order stages run (dvc.yaml's
    order is not known here, so by file modification time)."""
    files = sorted(folder.glob("*.json"), key=lambda path: path.stat().st_mtime)
    return {path.stem: json.loads(path.read_text()) for path in files}


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
    timings = read_timings(args.folder)
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
