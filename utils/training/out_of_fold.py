"""Out-of-sample probabilities of every row, for an audit of the labels: each fold scored by models fitted on the
other folds, so that no row's own (possibly wrong) label shaped the probabilities it is judged by.

Two members: the TF-IDF member (`fit_lexical`, at its default C: a validation split of the training folds would
cost rows, and chose worse on noisy labels), and the transformer's sentence vectors (the frozen backbone read once,
mean-pooled) with a logistic regression head per fold. docs/RESULTS.md ("Label audit") measures them against the
transformer fine-tuned on each fold.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from joblib.externals.loky import get_reusable_executor
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, PreTrainedModel

from models.modeling_pooled import mean_pool
from utils.data.readers import LabeledTexts
from utils.inference.reading import Reading, Sequences
from utils.inference.tokens import pad_batch, pad_token_id, sorted_batches
from utils.training.lexical_fit import fit_lexical

HEAD_C = 1.0  # the sentence-vector head's inverse regularisation: 1 beat 3, 10 and 30 on flipped conference labels
VECTOR_BATCH = 64
SPEED_SAMPLE = 64  # sequences timed to plan the sentence vectors' pass


def member_out_of_fold(task: str, data: LabeledTexts, fold_of: np.ndarray) -> np.ndarray:
    """The TF-IDF member's probabilities of each row, from the member fitted on the other folds."""
    probabilities = np.zeros(probability_shape(task, data), dtype=np.float64)
    for fold in tqdm(range(int(fold_of.max()) + 1), desc="TF-IDF member, fold by fold", unit="fold"):
        held = np.flatnonzero(fold_of == fold)
        kept = np.flatnonzero(fold_of != fold)
        member = fit_lexical([data.texts[i] for i in kept], data.labels[kept], task)
        probabilities[held] = member.scores([data.texts[i] for i in held])
    get_reusable_executor().shutdown(wait=True)  # the fits' worker processes end now rather than idle
    return probabilities


def head_out_of_fold(task: str, vectors: np.ndarray, labels: np.ndarray, fold_of: np.ndarray) -> np.ndarray:
    """A logistic regression on the sentence vectors, per fold (one per label for multi-label): each row's
    probabilities from the head fitted on the other folds."""
    from sklearn.linear_model import LogisticRegression

    probabilities = np.zeros((len(labels), int(labels.max()) + 1) if task == "multiclass" else labels.shape,
                             dtype=np.float64)
    for fold in range(int(fold_of.max()) + 1):
        held, kept = fold_of == fold, fold_of != fold
        if task == "multiclass":
            head = LogisticRegression(C=HEAD_C, max_iter=2000).fit(vectors[kept], labels[kept])
            probabilities[np.ix_(held, head.classes_)] = head.predict_proba(vectors[held])
            continue
        for j in range(labels.shape[1]):
            y = labels[kept, j]
            if len(np.unique(y)) < 2:  # a label never (or always) given on these folds: its smoothed rate
                probabilities[held, j] = (y.sum() + 0.5) / (len(y) + 1.0)
            else:
                head = LogisticRegression(C=HEAD_C, max_iter=2000).fit(vectors[kept], y)
                probabilities[held, j] = head.predict_proba(vectors[held])[:, 1]
    return probabilities


def probability_shape(task: str, data: LabeledTexts) -> tuple[int, int]:
    return len(data), len(data.label_names) if task == "multiclass" else data.labels.shape[1]


class SentenceEncoder:
    """The frozen backbone as a sentence encoder: each text's tokens mean-pooled, a long text's windows averaged."""

    def __init__(self, backbone: str) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(backbone)
        self.model: PreTrainedModel = AutoModel.from_pretrained(backbone).eval()

    def encode(self, texts: list[str], reading: Reading) -> Sequences:
        return reading.encode(self.tokenizer, texts)

    @torch.inference_mode()
    def pooled(self, sequences: list[list[int]]) -> np.ndarray:
        """One mean-pooled vector per token sequence."""
        ids, mask = pad_batch(sequences, pad_token_id(self.tokenizer))
        hidden = self.model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
        return mean_pool(hidden, torch.from_numpy(mask)).float().numpy()

    def seconds_per_token(self, encoded: Sequences) -> float:
        """The measured time of one token of a batch of the sequences, padded (after a warm-up pass)."""
        sample = sorted(encoded.input_ids[:SPEED_SAMPLE], key=len)
        self.pooled(sample[:8])
        started = time.perf_counter()
        self.pooled(sample)
        return (time.perf_counter() - started) / max(1, len(sample) * len(sample[-1]))

    def vectors(self, encoded: Sequences, progress: Callable[[int], object] | None = None) -> np.ndarray:
        """Unit-length sentence vectors of the encoded texts, in their order."""
        sequences = encoded.input_ids
        pooled = np.zeros((len(sequences), self.model.config.hidden_size), dtype=np.float64)
        for rows in sorted_batches([len(ids) for ids in sequences], VECTOR_BATCH):
            pooled[rows] = self.pooled([sequences[r] for r in rows])
            if progress is not None:
                progress(sum(len(sequences[r]) for r in rows))
        sums = np.zeros((encoded.texts, pooled.shape[1]))
        np.add.at(sums, encoded.owner, pooled)
        return sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
