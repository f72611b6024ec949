"""Which floating-point precision to compute in, decided on the machine that runs the work.

`base.precision` is `auto`, `fp32`, `bf16` or `fp16`. `auto` resolves at run time, from facts about
the device rather than from the params file, so the same commit is fast on every machine:

| device                                       | auto  | why                                              |
|----------------------------------------------|-------|--------------------------------------------------|
| CUDA with bf16 (Ampere and later)            | bf16  | fp32's range, half the memory traffic            |
| CUDA without bf16 (T4, V100), decoder-only   | fp16  | tensor cores; loss scaling keeps gradients alive |
| CUDA without bf16, encoder-decoder (T5)      | fp32  | T5's activations overflow fp16's 65504           |
| CPU with AVX512-BF16 or AMX, where bf16 wins | bf16  | native bf16 dot products, ~4x fp32 on an EPYC    |
| CPU with them, where bf16 does not win       | fp32  | an AVX512-BF16 Xeon without AMX: bf16 at ~0.5x   |
| CPU without them (AVX2 laptops, CI runners)  | fp32  | bf16 is emulated there: a matmul is ~47x slower  |

Whether bf16 wins on a CPU with native bf16 is measured, once per process (`cpu_bf16_wins`):
the flag alone does not say it. Weights stay fp32; the chosen dtype is an autocast dtype. Nothing is baked into saved models: the
MLflow model and `summarize` resolve `auto` again where they load.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from dataclasses import dataclass

import torch

from detoxsum.errors import ParamsError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Machine:
    """The facts `auto` decides on; `Machine.current(device)` reads them from torch."""

    device_type: str  # "cpu" or "cuda"
    native_bf16: bool  # CPU: AVX512-BF16 or AMX tiles; CUDA: torch.cuda.is_bf16_supported()
    description: str = ""
    # CPU: whether bf16 matmuls measured faster than fp32 (`cpu_bf16_wins`); None: not measured,
    # taken to follow native_bf16 (CUDA, and machines described by hand).
    bf16_wins: bool | None = None

    @classmethod
    def current(cls, device: torch.device | str | None = None) -> Machine:
        device_type = torch.device(device).type if device is not None else default_device().type
        if device_type == "cuda":
            name = torch.cuda.get_device_name()
            return cls("cuda", torch.cuda.is_bf16_supported(including_emulation=False), f"CUDA {name}")
        capability = torch.backends.cpu.get_cpu_capability()
        native = cpu_has_native_bf16()
        return cls("cpu", native, f"CPU {capability}", bf16_wins=native and cpu_bf16_wins())


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 dot products or AMX tiles, as torch detects them."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


# bf16 must beat fp32 by this much to be picked: a margin, so that a machine where the two are close
# picks the same precision in every stage and run rather than flipping with timing noise.
BF16_WIN_RATIO = 1.3


@functools.lru_cache(maxsize=1)
def cpu_bf16_wins() -> bool:
    """Whether this CPU multiplies bf16 matrices at least BF16_WIN_RATIO times faster than fp32,
    measured on SmolLM2-135M's MLP up-projection for 512 tokens (~0.1 s, once per process).

    Native bf16 alone does not say it: an EPYC with AVX512-BF16 ran bf16 at 4.4x fp32, while a Xeon
    with AVX512-BF16 but no AMX ran it at 0.52x (134 against 258 GFLOP/s), which made `auto` halve the
    speed of every stage there. The two are timed on one thread, in turns, each at its fastest: with
    other work on the machine (tests beside a stage) a multi-threaded fp32 matmul measured slower
    than bf16 there, as its threads waited on each other; one thread measures the cores' arithmetic.
    """
    shapes = {dtype: (torch.randn(512, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype))
              for dtype in (torch.float32, torch.bfloat16)}
    fastest = dict.fromkeys(shapes, float("inf"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(8):
            for dtype, (left, right) in shapes.items():
                started = time.perf_counter()
                left @ right
                fastest[dtype] = min(fastest[dtype], time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    return fastest[torch.float32] >= BF16_WIN_RATIO * fastest[torch.bfloat16]


def default_device() -> torch.device:
    """This process's GPU (one per launched process), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def check_precision(value: str, key: str = "base.precision") -> str:
    if value not in PRECISIONS:
        raise ParamsError(f"params key '{key}' must be one of {', '.join(PRECISIONS)}, got {value!r}")
    return value


def resolve_precision(requested: str, machine: Machine, encoder_decoder: bool) -> str:
    """The concrete precision (`fp32`, `bf16` or `fp16`) for `requested` on `machine` (see the table above)."""
    check_precision(requested)
    if requested == "auto":
        return auto_precision(machine, encoder_decoder)
    if requested == "bf16" and machine.device_type == "cpu" and not machine.native_bf16:
        warn(f"base.precision is bf16 but this {machine.description or 'CPU'} has no native bf16 "
             "(AVX512-BF16 or AMX): bf16 is emulated and runs many times slower than fp32; use auto or fp32")
    if requested == "fp16" and machine.device_type == "cpu":
        warn("base.precision is fp16 on a CPU: most CPUs emulate fp16 matmuls, which is slow; use auto or fp32")
    return requested


def auto_precision(machine: Machine, encoder_decoder: bool) -> str:
    if machine.native_bf16 and machine.bf16_wins is not False:
        return "bf16"
    if machine.device_type == "cuda" and not encoder_decoder:
        return "fp16"
    return "fp32"


def resolve_for_model(requested: str, config, device: torch.device | str | None = None) -> str:
    """`resolve_precision` for a loaded model's config on `device` (default: the default device)."""
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    return resolve_precision(requested, Machine.current(device), encoder_decoder)


def autocast(device: torch.device, precision: str):
    """Autocast to the precision's dtype on `device`'s type; a no-op for fp32."""
    dtype = DTYPES[precision]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


_warned: set[str] = set()


def warn(message: str) -> None:
    """One `warning:` line on stderr, once per process (evaluate resolves once per model)."""
    if message not in _warned:
        _warned.add(message)
        print(f"warning: {message}", file=sys.stderr)
