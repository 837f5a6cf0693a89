"""Which backend runs a checkpoint: the names (`BACKENDS`), and the one choice of `auto` (`backend_for`).

`auto` picks the fastest variant export measured (variants.json) whose validation cost against float32 PyTorch,
in the task's VARIANT_COST_METRIC, stays within MAX_COST. The inferer, predict_ray's driver and gunicorn's master
all ask `backend_for` with the arguments the inferer is built with, so they make the same choice.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from utils.checkpoint.contract import ONNX_FILES, CheckpointFolder, VariantRecord
from utils.checkpoint.errors import MissingFileError

BACKENDS = ("torch", *ONNX_FILES)
AUTO = "auto"
# The metric in which an exported variant's cost against float32 PyTorch is measured on the validation rows
# (export.py), and the most it may cost for `auto` to run it.
VARIANT_COST_METRIC = {"multilabel": "mean_roc_auc", "multiclass": "accuracy"}
MAX_COST = {"multilabel": 0.003, "multiclass": 0.005}


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


def backend_for(folder: CheckpointFolder, requested: str = AUTO, *, quantize: bool = False, precision: str = "auto",
                device: str | None = None) -> BackendChoice:
    """The backend `ModelInferer(folder, backend=requested, quantize=..., precision=..., device=...)` runs: the one
    place the choice is made. The arguments mean what they mean to the inferer; `device` None is its default
    (the CPU for an exported graph, else a GPU where torch sees one)."""
    return choose_backend(folder, requested, torch_only_option(quantize, precision, device))


def choose_backend(folder: CheckpointFolder, requested: str = AUTO, torch_only: str | None = None) -> BackendChoice:
    """`requested` itself, or for `auto` the fastest measured variant within the task's MAX_COST; called through
    `backend_for` (tests/test_architecture.py checks).

    Candidates are the variants export measured for these weights whose file is present and whose engine is
    installed. Without any, torch; where torch is not installed either, an exported float32 graph (the same
    model: no quantization cost). `torch_only` names an option that only torch runs (a GPU, quantize, bf16):
    then `auto` is torch.
    """
    task = folder.info.task
    report = folder.variants()
    metric, budget = VARIANT_COST_METRIC[task], MAX_COST[task]
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
