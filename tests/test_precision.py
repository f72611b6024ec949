"""precision.py: `auto` picks per machine, forced choices warn where they will be slow, bad values fail."""

import pytest
import torch

from detoxsum import precision
from detoxsum.config import BaseConfig, build_config
from detoxsum.errors import ParamsError
from detoxsum.precision import Machine, resolve_precision

AVX2_CPU = Machine("cpu", native_bf16=False, description="CPU AVX2")
AMX_CPU = Machine("cpu", native_bf16=True, description="CPU AVX512", bf16_wins=True)
SLOW_BF16_CPU = Machine("cpu", native_bf16=True, description="CPU AVX512", bf16_wins=False)  # a Xeon without AMX
AMPERE = Machine("cuda", native_bf16=True, description="CUDA A100")
TURING = Machine("cuda", native_bf16=False, description="CUDA T4")


@pytest.mark.parametrize(("machine", "encoder_decoder", "expected"), [
    (AVX2_CPU, False, "fp32"),
    (AVX2_CPU, True, "fp32"),
    (AMX_CPU, False, "bf16"),
    (AMX_CPU, True, "bf16"),
    (SLOW_BF16_CPU, False, "fp32"),
    (AMPERE, False, "bf16"),
    (AMPERE, True, "bf16"),
    (TURING, False, "fp16"),
    (TURING, True, "fp32"),  # T5 overflows in fp16
])
def test_auto_picks_per_machine_and_family(machine, encoder_decoder, expected):
    assert resolve_precision("auto", machine, encoder_decoder) == expected


@pytest.mark.parametrize("forced", ["fp32", "bf16", "fp16"])
def test_a_forced_precision_is_kept(forced):
    assert resolve_precision(forced, AMPERE, encoder_decoder=False) == forced


def test_forced_bf16_on_a_cpu_without_native_bf16_warns_once(capsys):
    precision._warned.clear()
    for _ in range(3):
        assert resolve_precision("bf16", AVX2_CPU, encoder_decoder=False) == "bf16"
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: base.precision is bf16") and "slow" in lines[0]
    resolve_precision("bf16", AMX_CPU, encoder_decoder=False)
    assert capsys.readouterr().err == ""


def test_machine_reads_the_cpu_capability_torch_reports(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert Machine.current().native_bf16 is False
    assert precision.resolve_for_model("auto", object()) == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    monkeypatch.setattr(precision, "cpu_bf16_wins", lambda: True)
    assert Machine.current().native_bf16 is True
    assert precision.resolve_for_model("auto", object()) == "bf16"
    monkeypatch.setattr(precision, "cpu_bf16_wins", lambda: False)  # native, but measured slower than fp32
    assert precision.resolve_for_model("auto", object()) == "fp32"


def test_the_bf16_probe_measures_this_cpu():
    precision.cpu_bf16_wins.cache_clear()
    assert precision.cpu_bf16_wins() in (True, False)
    assert precision.cpu_bf16_wins.cache_info().hits == 0 and precision.cpu_bf16_wins() in (True, False)
    assert precision.cpu_bf16_wins.cache_info().hits == 1  # measured once per process


def test_machine_reads_cuda_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    t4 = Machine.current("cuda")
    assert (t4.device_type, t4.native_bf16) == ("cuda", False)
    t5_config = type("Config", (), {"is_encoder_decoder": True})()
    assert precision.resolve_for_model("auto", t5_config, "cuda") == "fp32"
    assert precision.resolve_for_model("auto", object(), "cuda") == "fp16"


@pytest.mark.parametrize("value", ["fp8", "bfloat16", "", "AUTO"])
def test_unknown_precision_names_the_key_and_the_choices(value):
    with pytest.raises(ParamsError, match=r"'base.precision' must be one of auto, fp32, bf16, fp16"):
        build_config(BaseConfig, {"precision": value}, "base")


def test_the_replaced_bf16_key_points_to_precision():
    with pytest.raises(ParamsError, match="'base.bf16' was replaced by 'base.precision'"):
        build_config(BaseConfig, {"bf16": True}, "base")


def test_autocast_is_off_for_fp32():
    with precision.autocast(torch.device("cpu"), "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with precision.autocast(torch.device("cpu"), "bf16"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
