"""Which floating-point precision to compute in, decided on the machine that runs the work.

`base.precision` is `auto`, `fp32`, `bf16` or `fp16`. `auto` resolves at run time, from facts about
the device rather than from the params file, so the same commit is fast on every machine:

| device                                       | auto  | why                                              |
|----------------------------------------------|-------|--------------------------------------------------|
| CUDA with bf16 (Ampere and later)            | bf16  | fp32's range, half the memory traffic            |
| CUDA without bf16 (T4, V100), decoder-only   | fp16  | tensor cores; loss scaling keeps gradients alive |
| CUDA without bf16, encoder-decoder (T5)      | fp32  | T5's activations overflow fp16's 65504           |
| CPU with AVX512-BF16 or AMX                  | bf16  | native bf16 dot products, ~2.4x fp32 here        |
| CPU without them (AVX2 laptops, CI runners)  | fp32  | bf16 is emulated there: a matmul is ~47x slower  |

Weights stay fp32; the chosen dtype is an autocast dtype. Nothing is baked into saved models: the
MLflow model and `summarize` resolve `auto` again where they load.
"""

from __future__ import annotations

import os
import sys
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

    @classmethod
    def current(cls, device: torch.device | str | None = None) -> Machine:
        device_type = torch.device(device).type if device is not None else default_device().type
        if device_type == "cuda":
            name = torch.cuda.get_device_name()
            return cls("cuda", torch.cuda.is_bf16_supported(including_emulation=False), f"CUDA {name}")
        capability = torch.backends.cpu.get_cpu_capability()
        return cls("cpu", cpu_has_native_bf16(), f"CPU {capability}")


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 dot products or AMX tiles, as torch detects them."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def default_device() -> torch.device:
    """This process's GPU (one per process under `accelerate launch`), else the CPU."""
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
    if machine.native_bf16:
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
