"""Scoring the validation split during training, sharded over processes so that no row counts twice."""

from __future__ import annotations

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from transformers import PreTrainedModel

from models.scoring import scores_from_logits
from utils.data.readers import DataError, LabeledTexts
from utils.evaluation.metrics import SELECTION_METRIC, compute_metrics
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


def validation_scores(task: str, model: PreTrainedModel, dataset: EncodedDataset, collate: PaddingCollator,
                      batch_size: int, accelerator: Accelerator) -> np.ndarray:
    """Probabilities (sigmoid or softmax) for every validation row."""
    return scores_from_logits(task, predict_logits(model, dataset, collate, batch_size, accelerator))


def primary_metric(task: str, validation: LabeledTexts, scores: np.ndarray) -> float:
    """Mean ROC AUC (multi-label) or macro-F1 (multi-class); a clear error when undefined."""
    name = SELECTION_METRIC[task]
    value = compute_metrics(task, validation.labels, scores, validation.label_names)[name]
    if value is None:
        raise DataError(f"validation split: no label has both positive and negative rows, so {name} is "
                        "undefined; use more data or a larger --val-split")
    return value
