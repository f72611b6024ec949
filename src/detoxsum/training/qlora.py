"""QLoRA's 4-bit NF4 base: its bitsandbytes config and the checks that the kernels run here."""

from __future__ import annotations

import torch
from transformers import (
    BitsAndBytesConfig,
)

from detoxsum.errors import ParamsError, first_line
from detoxsum.precision import DTYPES


def four_bit_kernel_problem(device_: torch.device) -> str | None:
    """Why bitsandbytes cannot quantize to 4-bit NF4 on `device_`, or None when it can: it is tried
    on a small matrix, since which devices a build supports varies by version (0.50 has CPU
    kernels; builds before the multi-backend releases have CUDA only)."""
    try:
        import bitsandbytes
        import bitsandbytes.functional as bnb_functional
    except ImportError as exc:
        return f"bitsandbytes is not installed ({first_line(exc)}; pip install bitsandbytes==0.50.2)"
    try:
        weight = torch.randn(64, 64, device=device_, dtype=torch.bfloat16)
        packed, state = bnb_functional.quantize_4bit(weight, quant_type="nf4", compress_statistics=True)
        bnb_functional.dequantize_4bit(packed, state)
    except Exception as exc:  # a native library: whatever fails here means no usable kernel
        return f"bitsandbytes {bitsandbytes.__version__} has no 4-bit kernels for {device_.type} ({first_line(exc)})"
    return None


def require_4bit_kernels(device_: torch.device) -> None:
    problem = four_bit_kernel_problem(device_)
    if problem is not None:
        raise ParamsError(f"params key 'train_lora.method' is 'qlora', which needs 4-bit NF4 kernels on this "
                          f"{device_.type}: {problem}; use method 'lora' (the same adapter on the full-precision base)")


def nf4_config(precision: str) -> BitsAndBytesConfig:
    """QLoRA's quantization (Dettmers et al. 2023): 4-bit NormalFloat weights, their scales quantized
    again (double quantization), matmuls computed in the run's precision (bf16 where it is native)."""
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=DTYPES[precision])


def keep_4bit_weights_unpacked(model) -> None:
    """Turn off bitsandbytes' repacking of 4-bit weights for its AVX512-BF16 CPU kernel. bitsandbytes
    0.50.2 repacks on the first forward without gradients (Trainer's evaluation) and fails there for
    a layer whose input width is not a multiple of its 64-value block (`shape '[96, 1]' is invalid`);
    the unpacked path computes the same product for every width."""
    import bitsandbytes

    for module in model.modules():
        if isinstance(module, bitsandbytes.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
