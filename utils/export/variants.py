"""Each exported variant measured against the float32 PyTorch model on the validation rows the checkpoint holds
(EXPORT_ROWS_FILE): its speed, and its cost in the task's metric, written to variants.json (VariantsReport), which
BACKEND=auto chooses from.

The speed is that of the encoder's forward passes over the rows' token ids, batched as serving batches them;
tokenizing and a blend's TF-IDF member, the same work whichever variant runs, are not in it.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np
import torch

from models.scoring import scores_from_logits
from utils.checkpoint.contract import (
    LEXICAL,
    TRANSFORMER,
    CheckpointError,
    CheckpointFolder,
    ClassifierInfo,
    Int8Quantization,
    VariantRecord,
    VariantsReport,
)
from utils.checkpoint.rows import ExportRows
from utils.evaluation.metrics import compute_metrics
from utils.inference.answers import LabelRules
from utils.inference.backends import VARIANT_COST_METRIC
from utils.inference.blend import Blend
from utils.inference.reading import Reading
from utils.inference.runners import Runner, build_runner, score_sequences

MEASURE_THREADS = 1  # as each server worker runs (TORCH_THREADS=1); one thread also times steadily on a busy CPU


def measure_variants(checkpoint: str | Path, rows: ExportRows, backends: list[str], threads: int = MEASURE_THREADS,
                     batch_size: int = 32, chunk: int = 128, int8: Int8Quantization | None = None) -> VariantsReport:
    """Score the validation rows with float32 PyTorch and each backend: their speed and cost (and `int8`, how the
    int8 graphs were quantized, goes into the report)."""
    folder = CheckpointFolder(checkpoint)
    torch_threads = torch.get_num_threads()  # the torch runner sets it for the whole process: given back below
    runners = {"torch": build_runner(folder, "torch", "cpu", precision="fp32", num_threads=threads)}
    runners |= {backend: build_runner(folder, backend, num_threads=threads) for backend in backends}
    try:
        logits, seconds = forward_passes(runners, rows, batch_size, chunk)
    finally:
        torch.set_num_threads(torch_threads)
    reading = Reading.of(folder.info)
    scores = {name: served_scores(folder.info, reading.pool(values, rows.owner), rows.lexical_scores)
              for name, values in logits.items()}
    metric = VARIANT_COST_METRIC[folder.info.task]
    values = {name: metric_value(folder.info, rows.labels, served, metric) for name, served in scores.items()}
    records = [VariantRecord(backend=name, texts_per_s=len(rows) / seconds[name], value=values[name],
                             cost=cost(values["torch"], values[name]),
                             max_score_difference=float(np.abs(scores[name] - scores["torch"]).max()))
               for name in runners]
    return VariantsReport(checkpoint_id=folder.checkpoint_id(), metric=metric, rows=len(rows), batch_size=batch_size,
                          threads=threads, machine=cpu_model(),
                          measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), variants=records, int8=int8)


def forward_passes(runners: dict[str, Runner], rows: ExportRows, batch_size: int,
                   chunk: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Each runner's logits of the validation rows' sequences (in order) and the seconds it took. The runners take turns
    chunk by chunk, so a change in the machine's load falls on all of them alike."""
    for runner in runners.values():  # warm-up: the first run allocates
        score_sequences(runner.logits, rows.validation_ids[:batch_size], rows.pad_id, batch_size)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in runners}
    seconds = dict.fromkeys(runners, 0.0)
    for start in range(0, len(rows.validation_ids), chunk):
        input_ids = rows.validation_ids[start:start + chunk]
        for name, runner in runners.items():
            started = time.perf_counter()
            parts[name].append(score_sequences(runner.logits, input_ids, rows.pad_id, batch_size))
            seconds[name] += time.perf_counter() - started
    return {name: np.vstack(chunks) for name, chunks in parts.items()}, seconds


def served_scores(info: ClassifierInfo, logits: np.ndarray, lexical_scores: np.ndarray | None) -> np.ndarray:
    """The scores serving gives for the transformer's logits: blended with the TF-IDF member's scores (a blended
    checkpoint), at the checkpoint's temperature."""
    members = {TRANSFORMER: scores_from_logits(info.task, logits)}
    if LEXICAL in info.members:
        if lexical_scores is None:
            raise CheckpointError(f"the checkpoint blends a {LEXICAL} member, but its export rows hold no scores of it")
        members[LEXICAL] = lexical_scores
    return Blend.of(info).served(members)


def metric_value(info: ClassifierInfo, labels: np.ndarray, scores: np.ndarray, metric: str) -> float | None:
    """The task's metric of the scores, at the checkpoint's thresholds (None where it is undefined)."""
    thresholds = LabelRules.of(info).thresholds
    return compute_metrics(info.task, labels, scores, info.labels, thresholds).get(metric)


def cost(reference: float | None, measured: float | None) -> float | None:
    """The reference's value minus the variant's: positive is a loss."""
    return reference - measured if reference is not None and measured is not None else None


def report_lines(report: VariantsReport) -> list[str]:
    """The measurement as the command line tells it."""
    lines = [f"measured on {report.rows} validation rows ({report.threads} thread, batch {report.batch_size}), "
             f"{report.metric} cost against float32 PyTorch:"]
    for v in report.variants:
        shown = f"{v.cost:+.4f}" if v.cost is not None else "undefined"
        lines.append(f"  {v.backend:<24} {v.texts_per_s:7.1f} texts/s  cost {shown}  max |score diff| "
                     f"{v.max_score_difference:.1e}")
    return lines


def cpu_model() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor() or platform.machine())
