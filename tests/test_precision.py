"""Precision: `auto` is bf16 where the hardware multiplies bf16 fast (AMX CPUs, bf16 GPUs), fp32 elsewhere."""

import pytest

from utils.precision import accelerate_mixed_precision, cpu_has_amx, resolve_precision


def fails():
    raise AssertionError("this capability should not be asked about")


@pytest.mark.parametrize("amx, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cpu_follows_amx(amx, expected):
    assert resolve_precision("auto", on_gpu=False, has_amx=lambda: amx, gpu_bf16=fails) == expected


@pytest.mark.parametrize("bf16, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_gpu_follows_bf16_support(bf16, expected):
    assert resolve_precision("auto", on_gpu=True, has_amx=fails, gpu_bf16=lambda: bf16) == expected


@pytest.mark.parametrize("requested", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("on_gpu", [True, False])
def test_an_explicit_precision_is_kept(requested, on_gpu):
    assert resolve_precision(requested, on_gpu=on_gpu, has_amx=fails, gpu_bf16=fails) == requested


def test_unknown_precision_is_rejected():
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("int4")


def test_amx_is_read_from_cpu_flags(tmp_path):
    with_amx = tmp_path / "with"
    with_amx.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile amx_int8\n")
    without = tmp_path / "without"
    without.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_has_amx(with_amx) is True
    assert cpu_has_amx(without) is False
    assert cpu_has_amx(tmp_path / "missing") is False


def test_accelerate_names():
    assert [accelerate_mixed_precision(p) for p in ("fp32", "bf16", "fp16")] == ["no", "bf16", "fp16"]
