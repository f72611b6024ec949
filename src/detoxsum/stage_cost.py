"""What one stage run cost: its wall time, the FLOPs of its matmuls and its peak memory.

Every stage runs inside `StageTimer` (`outputs.run_stage`), which counts the FLOPs of every
`nn.Linear` call in the process (one global forward hook: 2 x rows x in x out, times 2 when the
input needs a gradient and 3 when the weight does, for the backward pass) and writes
`metrics/timing/<stage>.json`: wall time, FLOPs, the peak memory of the process (resident set,
and on a GPU the most torch allocated), and the machine's CPU capability. The linear layers are
nearly all of a transformer's arithmetic; what is left out is the attention-score products
(4 x context x width per token and layer: ~10 % more at the default's ~300-token prompts) and
everything that is no matmul.

`keep_freed_memory` lowers the wall time of stages that allocate large blocks: every stage calls
it before its work.

Every stage imports this module, so it is a dependency of each in dvc.yaml; the table that reads
the files (`python -m detoxsum.timing`) lives apart, so editing it reruns nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from detoxsum.precision import cpu_has_native_bf16

# glibc's mallopt parameters (malloc.h) and the values set: keep up to 2 GiB of freed memory at the
# heap's top, and serve blocks below 1 GiB from the heap rather than from fresh mappings.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEPT_FREED_BYTES, HEAP_BLOCK_LIMIT_BYTES = 2**31 - 1, 2**30


def keep_freed_memory() -> bool:
    """Have glibc's allocator keep the memory a process frees for its next allocations, instead of
    handing it back to the kernel; whether it applied (Linux with glibc; elsewhere nothing changes).

    By default glibc maps every block over a dynamic threshold (at most 32 MiB) afresh and returns
    it on free, and trims the heap's top when more than 128 KiB are free there. A LoRA training
    step of the default (8 x ~430 tokens through 30 layers) allocates ~6 GB of activations and frees
    them, so each step faulted those pages in anew, zeroed by the kernel: 28 % of its CPU time
    went to the system. Kept, a steady step took 8.3-9.2 s against 11.2-11.8 s (SmolLM2-135M,
    2-core Xeon, fp32), with the same peak memory. Allocation never changes what is computed.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt  # glibc; musl has none
    except (OSError, AttributeError):
        return False
    kept = mallopt(M_TRIM_THRESHOLD, ctypes.c_int(KEPT_FREED_BYTES))
    limited = mallopt(M_MMAP_THRESHOLD, ctypes.c_int(HEAP_BLOCK_LIMIT_BYTES))
    return bool(kept and limited)


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
            # Launched on several processes, each counts its own share; the shares are equal.
            "tflop": round(self.counter.flops * self.processes / 1e12, 3),
            "processes": self.processes,
            **peak_memory_gb(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": cpu_has_native_bf16(),
        })


def peak_memory_gb() -> dict[str, float]:
    """This process's peak resident memory since it started (imports and model loads included), in
    GB, and on a CUDA device the most torch allocated there. Launched on several processes, each
    holds its own copy of the model: `processes` x this is the stage's footprint."""
    kilobytes = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,  # Linux reports KiB
                    resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    peak = {"peak_rss_gb": round(kilobytes * 1024 / 1e9, 2)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        peak["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    return peak
