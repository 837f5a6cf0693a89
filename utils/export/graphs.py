"""A checkpoint's classifier as ONNX Runtime graphs (file names: utils/checkpoint/contract.py ONNX_FILES; the serving
backend in brackets):
- model.onnx [onnx]: the classifier as (input_ids, attention_mask) -> logits, standard operators only, dynamic
  batch and sequence axes (opset 17);
- model.int8.onnx [onnx-int8]: the same with int8 MatMul weights (dynamic quantization): 8-bit where the CPU has
  VNNI or AMX, 7-bit where it does not (`choose_int8`);
- model.fused.onnx [onnx-fused]: ONNX Runtime's transformer optimizer applied (attention, embeddings + LayerNorm,
  skip + LayerNorm, bias + GELU each one contrib operator), for the BERT-family encoders it fuses;
- model.fused.int8.onnx [onnx-fused-int8]: the fused graph with dynamic int8 MatMul and attention weights;
- model.fused.int8-static.onnx [onnx-fused-int8-static], when asked: static int8, the activations' ranges
  calibrated on training rows' token ids (the checkpoint's EXPORT_ROWS_FILE).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import platform
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import load_classifier
from utils.checkpoint.contract import ONNX_FILES, Int8Quantization
from utils.inference.tokens import pad_batch, sorted_batches

OPSET = 17
INPUT_NAMES = ("input_ids", "attention_mask")
DEFAULT_VARIANTS = ("onnx", "onnx-int8", "onnx-fused", "onnx-fused-int8")
STATIC_VARIANT = "onnx-fused-int8-static"
# x86 instructions that sum u8 x s8 products straight into 32 bits (/proc/cpuinfo flags). Without them ONNX Runtime's
# int8 kernels (AVX2, AVX-512 BW) add pairs of products in 16 bits first, which 8-bit weights can saturate.
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def missing_engines() -> list[str]:
    """The packages export needs that are not installed (requirements_onnx.txt has them)."""
    return [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]


def variant_paths(checkpoint: str | Path, output: str | Path | None = None,
                  variants: tuple[str, ...] = (*DEFAULT_VARIANTS, STATIC_VARIANT)) -> dict[str, Path]:
    """Where each variant goes: its ONNX_FILES name in the checkpoint, or beside `output`, named after it."""
    if output is None:
        return {v: Path(checkpoint) / ONNX_FILES[v] for v in variants}
    output = Path(output)
    stem = output.name.removesuffix(".onnx")
    return {v: output.with_name(stem + ONNX_FILES[v].removeprefix("model")) for v in variants}


class LogitsOnly(torch.nn.Module):
    """The classifier as (input_ids, attention_mask) -> logits: the graph ONNX Runtime runs."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def export_plain(checkpoint: str | Path, target: Path) -> Any:
    """The float32 graph of the classifier (eager attention: the pattern ONNX Runtime's optimizer fuses);
    returns the model's config."""
    model = load_classifier(checkpoint).float()
    model.set_attn_implementation("eager")
    wrapped = LogitsOnly(model).eval()
    example = (torch.ones((2, 16), dtype=torch.long), torch.ones((2, 16), dtype=torch.long))
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "logits": {0: "batch"}}
    target.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(wrapped, example, str(target), input_names=list(INPUT_NAMES), output_names=["logits"],
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False, do_constant_folding=True)
    return model.config


def fuse(source: Path, target: Path, config: Any) -> dict[str, int]:
    """ONNX Runtime's transformer fusions of a BERT-family graph; writes `target` only if attention fused.

    Returns the fused operators and their counts. RoBERTa and DistilBERT go through the "bert" optimizer too
    (RoBERTa keeps its embeddings unfused). The attention takes the 2-D mask as it comes: measured faster on
    this project's CPU than the mask-index form, and right or left padding alike.
    """
    from onnxruntime.transformers.fusion_options import AttentionMaskFormat, FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.attention_mask_format = AttentionMaskFormat.AttentionMask
    heads = getattr(config, "num_attention_heads", None) or config.n_heads  # DistilBERT names them n_heads, dim
    hidden = getattr(config, "hidden_size", None) or config.dim
    with quiet():
        optimized = optimize_model(str(source), model_type="bert", num_heads=heads, hidden_size=hidden,
                                   optimization_options=options)
    fused = {name: count for name, count in optimized.get_fused_operator_statistics().items() if count}
    if fused.get("Attention", 0) + fused.get("MultiHeadAttention", 0) > 0:
        optimized.save_model_to_file(str(target))
    return fused


def int8_cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The INT8_DOT_FLAGS this CPU lists in /proc/cpuinfo ([] where there is no such file)."""
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    flags = next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), set())
    return [flag for flag in INT8_DOT_FLAGS if flag in flags]


def choose_int8(reduce_range: bool | None = None, cpuinfo: Path = Path("/proc/cpuinfo")) -> Int8Quantization:
    """8-bit weights where the CPU sums int8 products in 32 bits, 7-bit (reduce_range) on an x86 CPU that cannot.

    ONNX Runtime's u8 x s8 kernels on x86 without VNNI add two products in 16 bits: 255 x 127 x 2 overflows them and
    saturates (measured 2.6e-3 off float32 on an AVX2 Zen 3), 255 x 64 x 2 fits; ONNX Runtime advises reduce_range
    there. Where it is not needed it doubles the weights' rounding step. `reduce_range` True or False forces it.
    """
    features = int8_cpu_features(cpuinfo)
    if reduce_range is not None:
        return Int8Quantization(cpu_features=features, reduce_range=reduce_range,
                                reason=f"asked for (reduce_range={reduce_range})")
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return Int8Quantization(cpu_features=features, reduce_range=False,
                                reason=f"{platform.machine()}: the 16-bit saturation is x86's")
    if features:
        return Int8Quantization(cpu_features=features, reduce_range=False,
                                reason=f"{' and '.join(features)}: int8 products summed in 32 bits, no saturation")
    return Int8Quantization(cpu_features=features, reduce_range=True,
                            reason="no VNNI or AMX: 7-bit weights keep the 16-bit pair sums from saturating")


def quantize_dynamic_int8(source: Path, target: Path, reduce_range: bool = False) -> None:
    """int8 weights per output channel, activations quantized per batch at run time (no calibration)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # MatMul and the fused attention's projections; the embedding Gather stays float (accuracy, no speed).
    # DefaultTensorType: shape inference cannot type the outputs of contrib operators.
    with quiet():
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=reduce_range, op_types_to_quantize=["MatMul", "Attention"],
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


class CalibrationBatches:
    """Padded batches of token ids, as serving feeds the model: what static quantization calibrates on.

    An onnxruntime.quantization CalibrationDataReader: `get_next` gives one input dict, then None at the end.
    """

    def __init__(self, input_ids: list[list[int]], pad_id: int, batch_size: int = 32) -> None:
        batches: list[dict[str, np.ndarray]] = []
        for rows in sorted_batches([len(ids) for ids in input_ids], batch_size):
            ids, attention_mask = pad_batch([input_ids[i] for i in rows], pad_id)
            batches.append({"input_ids": ids, "attention_mask": attention_mask})
        self.batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def quantize_static_int8(source: Path, target: Path, calibration: CalibrationBatches,
                         reduce_range: bool = False) -> None:
    """int8 weights per channel and int8 activations whose ranges (min/max) come from the calibration batches,
    as QuantizeLinear/DequantizeLinear pairs (the operator form fails on the fused graph's contrib operators).

    Symbolic shape inference first: without the types of the contrib operators' outputs the calibration sees
    no activation, and only the weights would be quantized. `reduce_range`: 7-bit weights, as for dynamic int8
    (the u8 x s8 kernels that run the QDQ pairs are the same).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            return calibration.get_next()

    with tempfile.TemporaryDirectory(dir=target.parent) as scratch, quiet():
        typed = Path(scratch) / "typed.onnx"
        quant_pre_process(str(source), str(typed), skip_optimization=True, auto_merge=True)
        quantize_static(str(typed), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=reduce_range,
                        op_types_to_quantize=["MatMul"], calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def export_graphs(checkpoint: str | Path, output: str | Path | None = None,
                  calibration: CalibrationBatches | None = None, int8: Int8Quantization | None = None
                  ) -> dict[str, Path]:
    """Write the plain, int8, fused and fused int8 graphs, and the static int8 one when `calibration` batches are
    given; returns them. The int8 weights are 8- or 7-bit as `int8` says (default: `choose_int8()` on this CPU)."""
    missing = missing_engines()
    if missing:
        raise ImportError(f"ONNX export needs {' and '.join(missing)}: pip install -r requirements_onnx.txt")
    reduce_range = (int8 or choose_int8()).reduce_range
    paths = variant_paths(checkpoint, output)
    config = export_plain(checkpoint, paths["onnx"])
    quantize_dynamic_int8(paths["onnx"], paths["onnx-int8"], reduce_range)
    written = {"onnx": paths["onnx"], "onnx-int8": paths["onnx-int8"]}
    fused = fuse(paths["onnx"], paths["onnx-fused"], config)
    if not paths["onnx-fused"].is_file():
        say(f"ONNX Runtime's optimizer fused no attention in this {config.model_type} graph ({fused}); the plain "
            "graphs serve it")
        return written
    say("fused: " + ", ".join(f"{count} {name}" for name, count in fused.items()))
    quantize_dynamic_int8(paths["onnx-fused"], paths["onnx-fused-int8"], reduce_range)
    written |= {"onnx-fused": paths["onnx-fused"], "onnx-fused-int8": paths["onnx-fused-int8"]}
    if calibration is not None:
        quantize_static_int8(paths["onnx-fused"], paths[STATIC_VARIANT], calibration, reduce_range)
        written[STATIC_VARIANT] = paths[STATIC_VARIANT]
    return written


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """ONNX Runtime's optimizer and quantizer log every step as warnings; keep errors only."""
    import onnxruntime

    logging.disable(logging.WARNING)
    onnxruntime.set_default_logger_severity(3)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
        onnxruntime.set_default_logger_severity(2)

