"""Running a checkpoint's encoder on padded batches: one small interface, one runner per backend.

`torch` runs the safetensors weights (float32, bf16, or dynamic int8 Linear layers); the `onnx*` backends run
the graphs `main.py --mode export` wrote (plain or fused, float32 or int8), in ONNX Runtime. Each imports its
engine only when built, so an environment without torch can serve an exported checkpoint. `auto`
(`choose_backend`) picks the fastest variant whose measured validation cost stays within `MAX_COST`.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from utils.checkpoint.contract import ONNX_FILES, CheckpointFolder, VariantRecord
from utils.checkpoint.errors import MissingFileError

BACKENDS = ("torch", *ONNX_FILES)
AUTO = "auto"
# The accuracy a variant may cost against float32 PyTorch on the validation rows, in each task's metric.
QUALITY_METRIC = {"multilabel": "mean_roc_auc", "multiclass": "accuracy"}
MAX_COST = {"multilabel": 0.003, "multiclass": 0.005}


class Runner(Protocol):
    """Turns one padded batch into logits (float32, one row per text)."""

    device: str
    precision: str
    quantized: bool

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...


class TorchRunner:
    """The classifier in PyTorch; `quantize` swaps its Linear layers for dynamic int8 ones (CPU only)."""

    def __init__(self, folder: CheckpointFolder, device: str | None, quantize: bool, precision: str,
                 num_threads: int | None) -> None:
        try:
            import torch
        except ImportError as error:  # the ONNX serving image
            raise ImportError("the torch backend needs torch (requirements_inference.txt); without it, serve an "
                              "exported graph: BACKEND=auto or one of the onnx backends") from error

        from models import load_classifier
        from utils.inference.precision import DTYPES, resolve_precision

        if num_threads:
            torch.set_num_threads(num_threads)
        # int8 dynamic quantization has CPU kernels only, so quantize picks the CPU unless told otherwise
        self.device = device or ("cuda" if torch.cuda.is_available() and not quantize else "cpu")
        self.quantized = quantize
        self.precision = "fp32" if quantize else resolve_precision(precision, on_gpu=self.device.startswith("cuda"))
        model = load_classifier(folder.path).eval()
        if quantize:
            if self.device != "cpu":
                raise ValueError("dynamic int8 quantization runs on the CPU only")
            with warnings.catch_warnings():  # torch announces the move of quantization to torchao, at length
                warnings.filterwarnings("ignore", message=".*deprecated")
                model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        elif self.precision in DTYPES:
            model = model.to(DTYPES[self.precision])
        self.model = model.to(self.device)
        self._torch = torch

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            output = self.model(input_ids=torch.from_numpy(input_ids).to(self.device),
                                attention_mask=torch.from_numpy(attention_mask).to(self.device))
        return output.logits.float().cpu().numpy()


class OnnxRunner:
    """An exported graph in ONNX Runtime on the CPU (float32 inputs and outputs, int8 inside for the int8 ones)."""

    device = "cpu"
    precision = "fp32"

    def __init__(self, folder: CheckpointFolder, backend: str, num_threads: int | None) -> None:
        path = folder.onnx_file(backend)
        if not path.is_file():
            raise MissingFileError(f"{path} is missing: export it with `python main.py --mode export "
                                   f"--checkpoint {folder.path}`")
        try:
            import onnxruntime
        except ImportError as error:
            raise ImportError("the ONNX backends need onnxruntime: pip install -r requirements_onnx.txt") from error
        options = onnxruntime.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        self.session: Any = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.quantized = "int8" in backend

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        return np.asarray(self.session.run(["logits"], feeds)[0], dtype=np.float32)


def build_runner(folder: CheckpointFolder, backend: str = "torch", device: str | None = None,
                 quantize: bool = False, precision: str = "auto", num_threads: int | None = None) -> Runner:
    """The runner for `backend`; the ONNX ones run the exported graph as it is (CPU, no quantize, fp32)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return TorchRunner(folder, device, quantize, precision, num_threads)
    if quantize or precision not in ("auto", "fp32"):
        raise ValueError(f"backend {backend!r} runs the exported graph as it is: no quantize, precision fp32")
    if device not in (None, "cpu"):
        raise ValueError("the ONNX backends run on the CPU only")
    return OnnxRunner(folder, backend, num_threads)


@dataclass(frozen=True)
class BackendChoice:
    """The backend `auto` resolved to, why, and what export measured of it (None where nothing was)."""

    requested: str
    backend: str
    reason: str
    measured: VariantRecord | None = None
    metric: str | None = None
    max_cost: float | None = None

    def describe(self) -> dict[str, Any]:
        """As /metadata shows it."""
        return {"requested": self.requested, "backend": self.backend, "reason": self.reason, "metric": self.metric,
                "max_cost": self.max_cost, "measured": self.measured.model_dump() if self.measured else None}

    def line(self) -> str:
        """One line for logs and the command line: the backend, what was asked for and why."""
        return f"backend {self.backend} ({self.requested}: {self.reason})"


def engine_installed(backend: str) -> bool:
    """Whether this environment can run `backend` (the ONNX-only serving image has no torch)."""
    return importlib.util.find_spec("torch" if backend == "torch" else "onnxruntime") is not None


def torch_only_option(quantize: bool, precision: str, device: str | None) -> str | None:
    """The option asked for that only the torch backend runs, if any: then `auto` means torch."""
    if quantize:
        return "quantize"
    if precision not in ("auto", "fp32"):
        return f"precision {precision}"
    if device not in (None, "cpu"):
        return f"device {device}"
    return None


def choose_backend(folder: CheckpointFolder, requested: str = AUTO, torch_only: str | None = None) -> BackendChoice:
    """`requested` itself, or for `auto` the fastest measured variant within the task's MAX_COST.

    Candidates are the variants export measured for these weights whose file is present and whose engine is
    installed. Without any, torch; where torch is not installed either, an exported float32 graph (the same
    model: no quantization cost). `torch_only` names an option that only torch runs (a GPU, quantize, bf16):
    then `auto` is torch.
    """
    task = folder.info.task
    report = folder.variants()
    metric, budget = QUALITY_METRIC[task], MAX_COST[task]
    if requested != AUTO:
        if requested not in BACKENDS:
            raise ValueError(f"backend must be {AUTO} or one of {BACKENDS}, got {requested!r}")
        measured = report.record(requested) if report else None
        return BackendChoice(requested, requested, "asked for", measured, metric, budget)
    if torch_only:
        return BackendChoice(AUTO, "torch", f"{torch_only} runs in PyTorch only", None, metric, budget)
    runnable = [v for v in (report.variants if report else [])
                if engine_installed(v.backend) and (v.backend == "torch" or folder.has_graph(v.backend))]
    within = [v for v in runnable if v.cost is not None and v.cost <= budget]
    if within:
        best = max(within, key=lambda v: v.texts_per_s)
        reason = (f"the fastest of the {len(within)} measured variants (of {len(runnable)} runnable here) whose "
                  f"validation {metric} cost is at most {budget}")
        return BackendChoice(AUTO, best.backend, reason, best, metric, budget)
    why = "no variant measured by export" if report is None else f"no measured variant within {budget} {metric}"
    if engine_installed("torch"):
        return BackendChoice(AUTO, "torch", f"{why}: the PyTorch model", None, metric, budget)
    for backend in ("onnx-fused", "onnx"):
        if folder.has_graph(backend) and engine_installed(backend):
            return BackendChoice(AUTO, backend, f"{why} and torch is not installed: the float32 graph",
                                 report.record(backend) if report else None, metric, budget)
    raise MissingFileError(f"{folder.path}: BACKEND=auto found nothing to run here: torch is not installed and "
                           "the checkpoint has no exported float32 graph; run `python main.py --mode export "
                           f"--checkpoint {folder.path}` where torch is, or install torch")
