"""Exporting a checkpoint to ONNX Runtime graphs, and measuring each one against PyTorch on validation rows.

    python main.py --mode export --checkpoint DIR [--onnx-static-int8] [--output FILE]

Writes into DIR (file names: utils/checkpoint/contract.py ONNX_FILES; ModelInferer's `backend` in brackets):
- model.onnx [onnx]: the classifier as (input_ids, attention_mask) -> logits, standard operators only, dynamic
  batch and sequence axes (opset 17);
- model.int8.onnx [onnx-int8]: the same with int8 MatMul weights (dynamic quantization): 8-bit where the CPU has
  VNNI or AMX, 7-bit where it does not (`choose_int8`; --onnx-int8-reduce-range forces either);
- model.fused.onnx [onnx-fused]: ONNX Runtime's transformer optimizer applied (attention, embeddings + LayerNorm,
  skip + LayerNorm, bias + GELU each one contrib operator), for the BERT-family encoders it fuses;
- model.fused.int8.onnx [onnx-fused-int8]: the fused graph with dynamic int8 MatMul and attention weights;
- with --onnx-static-int8, model.fused.int8-static.onnx [onnx-fused-int8-static]: static int8, the activations'
  ranges calibrated on training rows.
Then, where the training data is still where training_config.json says, it scores the validation rows with the
float32 PyTorch model and with every graph and writes variants.json (utils/checkpoint/contract.py VariantsReport): the
speed and metric cost of each, which BACKEND=auto chooses from, and the int8 choice. `--output FILE` writes the
graphs beside FILE instead (FILE, then its `.int8.onnx`, `.fused.onnx`, ... twins) and measures nothing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from models import load_classifier
from utils.checkpoint.contract import ONNX_FILES, CheckpointFolder, Int8Quantization, VariantRecord, VariantsReport
from utils.inference.backends import VARIANT_COST_METRIC

if TYPE_CHECKING:
    from utils.data.readers import LabeledTexts

OPSET = 17
INPUT_NAMES = ("input_ids", "attention_mask")
DEFAULT_VARIANTS = ("onnx", "onnx-int8", "onnx-fused", "onnx-fused-int8")
STATIC_VARIANT = "onnx-fused-int8-static"
CALIBRATION_ROWS = 256  # training texts static quantization sees: more moved its ranges by under 1%
MEASURED_ROWS = 2000  # validation rows scored per variant at most (a seeded sample of larger splits)
MEASURE_THREADS = 1  # as each server worker runs (TORCH_THREADS=1); one thread also times steadily on a busy CPU
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


# --- the graphs ------------------------------------------------------------------------------------------------


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
    """Padded batches of real texts, tokenized as serving does: what static quantization calibrates on.

    An onnxruntime.quantization CalibrationDataReader: `get_next` gives one input dict, then None at the end.
    """

    def __init__(self, checkpoint: str | Path, texts: list[str], batch_size: int = 32) -> None:
        from transformers import AutoTokenizer

        from utils.inference.tokens import encode, pad_batch, pad_token_id, sorted_batches

        info = CheckpointFolder(checkpoint).info
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        encoded = encode(tokenizer, texts, info.max_length, info.truncation)
        pad_id = pad_token_id(tokenizer)
        batches: list[dict[str, np.ndarray]] = []
        for rows in sorted_batches(encoded.lengths, batch_size):
            input_ids, attention_mask = pad_batch([encoded.input_ids[i] for i in rows], pad_id)
            batches.append({"input_ids": input_ids, "attention_mask": attention_mask})
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


def export_graphs(checkpoint: str | Path, output: str | Path | None = None, static_int8: bool = False,
                  calibration_texts: list[str] | None = None, int8: Int8Quantization | None = None
                  ) -> dict[str, Path]:
    """Write the plain, int8, fused and fused int8 graphs (and the static int8 one when asked); returns them.

    The int8 weights are 8- or 7-bit as `int8` says (default: `choose_int8()` on this CPU)."""
    missing = missing_engines()
    if missing:
        raise ImportError(f"ONNX export needs {' and '.join(missing)}: pip install -r requirements_onnx.txt")
    if static_int8 and not calibration_texts:
        raise ValueError("static int8 needs calibration texts (training rows)")
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
    if static_int8:
        calibration = CalibrationBatches(checkpoint, list(calibration_texts or []))
        quantize_static_int8(paths["onnx-fused"], paths[STATIC_VARIANT], calibration, reduce_range)
        written[STATIC_VARIANT] = paths[STATIC_VARIANT]
    return written


# --- the measurement -------------------------------------------------------------------------------------------


def measure_variants(checkpoint: str | Path, data: LabeledTexts, backends: list[str], threads: int = MEASURE_THREADS,
                     batch_size: int = 32, max_rows: int = MEASURED_ROWS, chunk: int = 128,
                     int8: Int8Quantization | None = None) -> VariantsReport:
    """Score `data` (validation rows) with float32 PyTorch and each backend: their speed and cost (and `int8`, how
    the int8 graphs were quantized, goes into the report).

    The variants take turns chunk by chunk, so a change in the machine's load falls on all of them alike.
    """
    from inferer import ModelInferer
    from utils.evaluation.metrics import compute_metrics

    if len(data) > max_rows:
        data = data.subset(np.sort(np.random.default_rng(0).permutation(len(data))[:max_rows]))
    torch_threads = torch.get_num_threads()  # measuring sets it for the whole process: given back below
    inferers = {"torch": ModelInferer(checkpoint, device="cpu", precision="fp32", num_threads=threads, backend="torch")}
    inferers |= {b: ModelInferer(checkpoint, backend=b, num_threads=threads) for b in backends}
    seconds = dict.fromkeys(inferers, 0.0)
    scores: dict[str, list[np.ndarray]] = {name: [] for name in inferers}
    for inferer in inferers.values():
        inferer.score_batch(data.texts[:batch_size], batch_size)  # warm-up: the first run allocates
    for start in range(0, len(data), chunk):
        texts = data.texts[start:start + chunk]
        for name, inferer in inferers.items():
            started = time.perf_counter()
            scores[name].append(inferer.score_batch(texts, batch_size)[0])
            seconds[name] += time.perf_counter() - started
    torch.set_num_threads(torch_threads)
    reference = inferers["torch"]
    metric = VARIANT_COST_METRIC[reference.task]
    stacked = {name: np.vstack(parts) for name, parts in scores.items()}

    def value(name: str) -> float | None:
        figures = compute_metrics(reference.task, data.labels, stacked[name], reference.label_names,
                                  reference.thresholds)
        return figures.get(metric)

    values = {name: value(name) for name in inferers}
    baseline = values["torch"]
    records = []
    for name, measured in values.items():
        cost = baseline - measured if baseline is not None and measured is not None else None
        records.append(VariantRecord(backend=name, texts_per_s=len(data) / seconds[name], value=measured,
                                     cost=cost, max_score_difference=float(np.abs(stacked[name]
                                                                                  - stacked["torch"]).max())))
    return VariantsReport(checkpoint_id=reference.checkpoint_id, metric=metric, rows=len(data),
                          batch_size=batch_size, threads=threads, machine=cpu_model(),
                          measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), variants=records,
                          int8=int8)


def training_rows(checkpoint: str | Path) -> tuple[LabeledTexts, LabeledTexts] | None:
    """(validation, training) LabeledTexts of the run that wrote the checkpoint, split again from its
    training_config.json exactly as training split them; None (and why) where the data is gone."""
    from utils.config import config_from_saved
    from utils.data.prepare import prepare_splits
    from utils.data.readers import DataError

    settings = CheckpointFolder(checkpoint).training_config()
    try:
        splits = prepare_splits(config_from_saved(settings))
    except (DataError, OSError, ValueError, TypeError) as error:
        say(f"no validation rows to measure the graphs on ({error}): BACKEND=auto will serve torch")
        return None
    return splits.validation, splits.train


def run(checkpoint: str | Path, output: str | Path | None = None, static_int8: bool = False,
        reduce_range: bool | None = None) -> None:
    """The command line's export: the graphs, then (into the checkpoint only) their measurement.

    `reduce_range` None: 7-bit int8 weights where this CPU needs them (`choose_int8`); True or False forces it."""
    started = time.time()
    int8 = choose_int8(reduce_range)
    say(f"int8 weights {7 if int8.reduce_range else 8}-bit: {int8.reason}")
    rows = training_rows(checkpoint) if output is None else None
    calibration = None
    if static_int8 and rows is not None:
        train = rows[1]
        calibration = [train.texts[i] for i in np.random.default_rng(0).permutation(len(train))[:CALIBRATION_ROWS]]
    elif static_int8:
        say("static int8 needs the training rows to calibrate on; skipped")
    written = export_graphs(checkpoint, output, static_int8=calibration is not None, calibration_texts=calibration,
                            int8=int8)
    for path in written.values():
        say(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if rows is not None:
        report = measure_variants(checkpoint, rows[0], list(written), int8=int8)
        path = CheckpointFolder(checkpoint).write_variants(report)
        say(f"measured on {report.rows} validation rows ({report.threads} thread, batch {report.batch_size}), "
            f"{report.metric} cost against float32 PyTorch:")
        for v in report.variants:
            cost = f"{v.cost:+.4f}" if v.cost is not None else "undefined"
            say(f"  {v.backend:<24} {v.texts_per_s:7.1f} texts/s  cost {cost}  max |score diff| "
                f"{v.max_score_difference:.1e}")
        say(f"wrote {path}")
    say(f"export took {time.time() - started:.0f} s")


# --- small helpers ----------------------------------------------------------------------------------------------


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cpu_model() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor() or platform.machine())


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

