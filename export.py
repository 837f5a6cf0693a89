"""Exporting a checkpoint to ONNX, in fp32 and as a dynamically quantized int8 variant, for ONNX Runtime.

    python main.py --mode export --checkpoint DIR [--output FILE]

Writes DIR/model.onnx and DIR/model.int8.onnx (or FILE and FILE with `.int8.onnx`), with dynamic batch and
sequence axes (opset 17). `ModelInferer(DIR, backend="onnx")` / `"onnx-int8"` serves them with the same
tokenization, batching and thresholds as the PyTorch model. Needs the optional extra requirements_onnx.txt.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

from models import load_classifier
from utils.checkpoint import ONNX_FILES

OPSET = 17
INPUT_NAMES = ("input_ids", "attention_mask")


class LogitsOnly(torch.nn.Module):
    """The classifier as (input_ids, attention_mask) -> logits: the graph ONNX Runtime runs."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def onnx_paths(checkpoint: str | Path, output: str | Path | None = None) -> tuple[Path, Path]:
    """Where the fp32 and int8 files go: beside the weights in the checkpoint, or `output` and its int8 twin."""
    fp32 = Path(output) if output else Path(checkpoint) / ONNX_FILES["onnx"]
    return fp32, fp32.with_name(fp32.name.removesuffix(".onnx") + ".int8.onnx")


def export_onnx(checkpoint: str | Path, output: str | Path | None = None) -> tuple[Path, Path]:
    """The checkpoint as an fp32 ONNX graph and its int8 variant (dynamic quantization of the MatMul weights)."""
    fp32_path, int8_path = onnx_paths(checkpoint, output)
    fp32_path.parent.mkdir(parents=True, exist_ok=True)
    model = LogitsOnly(load_classifier(checkpoint).float().eval())
    example = (torch.ones((2, 16), dtype=torch.long), torch.ones((2, 16), dtype=torch.long))
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "logits": {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(model, example, str(fp32_path), input_names=list(INPUT_NAMES), output_names=["logits"],
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False, do_constant_folding=True)
    quantize_int8(fp32_path, int8_path)
    return fp32_path, int8_path


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantization (weights int8 per channel, activations quantized per batch at run time)."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as error:
        raise ImportError("the int8 ONNX variant needs onnxruntime: pip install -r requirements_onnx.txt") from error
    # Only MatMul: quantizing the embedding Gather as well costs accuracy for no speed.
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul"])


def run(checkpoint: str | Path, output: str | Path | None = None) -> None:
    fp32_path, int8_path = export_onnx(checkpoint, output)
    for path in (fp32_path, int8_path):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
