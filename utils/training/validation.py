"""Scoring the validation split during training, sharded over processes so that no row counts twice, and pooling
the logits of long texts' windows the way that scores best there."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from transformers import PreTrainedModel

from models.scoring import logsumexp, scores_from_logits
from utils.data.readers import DataError, LabeledTexts
from utils.evaluation.metrics import SELECTION_METRIC, compute_metrics
from utils.inference.reading import WINDOW_POOLINGS, Reading
from utils.inference.tokens import sorted_batches
from utils.training.batching import EncodedDataset, PaddingCollator


@torch.no_grad()
def predict_logits(model: PreTrainedModel, dataset: EncodedDataset, collate: PaddingCollator, batch_size: int,
                   accelerator: Accelerator) -> np.ndarray:
    """Logits for every example in input order; each process scores a disjoint shard, gathered once."""
    model.eval()
    shard = list(range(accelerator.process_index, len(dataset), accelerator.num_processes))
    local: list[tuple[list[int], np.ndarray]] = []
    for rows in sorted_batches([len(dataset.input_ids[i]) for i in shard], batch_size):
        batch = collate([dataset[shard[r]] for r in rows])
        logits = model(input_ids=batch["input_ids"].to(accelerator.device),
                       attention_mask=batch["attention_mask"].to(accelerator.device)).logits
        local.append((batch["index"].tolist(), logits.float().cpu().numpy()))
    model.train()
    pieces = gather_object(local) if accelerator.num_processes > 1 else local
    index = [i for indices, _ in pieces for i in indices]
    if sorted(index) != list(range(len(dataset))):
        raise RuntimeError(f"evaluation saw {len(index)} rows for {len(dataset)} examples")
    result = np.empty((len(dataset), pieces[0][1].shape[1]), dtype=np.float32)
    result[index] = np.concatenate([logits for _, logits in pieces])
    return result


@dataclass(frozen=True)
class ValidationInputs:
    """The validation texts as the model reads them: their sequences (one a text, or each long text's windows),
    the text each reads, and the readings (poolings of windows) to choose among."""

    dataset: EncodedDataset
    owner: np.ndarray
    readings: list[Reading]


@dataclass(frozen=True)
class PooledValidation:
    """The reading whose pooled scores reached the best validation metric, those scores (probabilities, one row a
    validation text), and each candidate pooling's metric."""

    reading: Reading
    scores: np.ndarray
    value: float
    by_pooling: dict[str, float]
    evidence: np.ndarray  # the log-sum-exp of each text's pooled logits (the energy none score's)


def pooling_candidates(reading: Reading, given: str) -> list[Reading]:
    """The readings to choose among on validation: one under truncation or a given pooling, else each pooling."""
    if reading.long_texts == "truncate":
        return [reading]
    if given != "auto":
        return [reading.with_pooling(given)]
    return [reading.with_pooling(pooling) for pooling in WINDOW_POOLINGS]


def pooled_validation(task: str, validation: LabeledTexts, logits: np.ndarray, owner: np.ndarray,
                      candidates: list[Reading]) -> PooledValidation:
    """Each candidate's scores of the validation texts from their sequences' logits, and the best (the first of
    equals)."""
    best: PooledValidation | None = None
    by_pooling: dict[str, float] = {}
    for reading in candidates:
        pooled = reading.pool(logits, owner)
        scores = scores_from_logits(task, pooled)
        value = primary_metric(task, validation, scores)
        by_pooling[reading.window_pooling] = value
        if best is None or value > best.value:
            best = PooledValidation(reading, scores, value, {}, logsumexp(pooled, axis=1))
    assert best is not None, "no candidate reading"
    return replace(best, by_pooling=by_pooling)


def primary_metric(task: str, validation: LabeledTexts, scores: np.ndarray) -> float:
    """Mean ROC AUC (multi-label) or macro-F1 (multi-class); a clear error when undefined."""
    name = SELECTION_METRIC[task]
    value = compute_metrics(task, validation.labels, scores, validation.label_names)[name]
    if value is None:
        raise DataError(f"validation split: no label has both positive and negative rows, so {name} is "
                        "undefined; use more data or a larger --val-split")
    return value
