"""ModelInferer: loads a checkpoint folder once and predicts labels and scores for texts.

    from inferer import ModelInferer
    inferer = ModelInferer("outputs/run/checkpoint")
    inferer.predict("you are wonderful")
    inferer.explain("you are a complete idiot")   # why: a score per word for each predicted label
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from transformers import AutoTokenizer

from models.blend import blend_scores
from models.lexical import LexicalModel
from models.scoring import chosen_labels, scores_from_logits, with_temperature
from utils.checkpoint.contract import LEXICAL, TRANSFORMER, CheckpointFolder
from utils.inference.backends import BackendChoice, backend_for
from utils.inference.explain import (
    DEFAULT_METHOD,
    TextToExplain,
    attribute,
    blend_word_scores,
    drops,
    occlusion_scores,
    prepare_text,
    transformer_tokens,
)
from utils.inference.runners import build_runner
from utils.inference.tokens import TRUNCATIONS, encode, pad_batch, pad_token_id, sorted_batches

# The TF-IDF member's characters that take the CPU time of one transformer token: 512k characters a second against
# 3.5k tokens a second for all-MiniLM-L6-v2 at 64 tokens, one thread, AMD EPYC (docs/SERVING.md).
LEXICAL_CHARS_PER_TOKEN = 150
# An explanation's TF-IDF scoring of the text without each word takes as long as reading the text this many times
# (models/lexical_occlusion.py; 3.9x at 2,000 characters of toxic comments, 5.1x at 20,000: docs/SERVING.md).
OCCLUSION_READINGS = 5


class ModelInferer:
    """Predicts with a trained checkpoint: labels, a score per label and whether the text was cut.

    `config`, when given (the original project's call), must agree with the checkpoint on task and labels; input
    settings that differ (max length, truncation) are named in a warning, and the checkpoint's are used.
    `threshold` replaces the checkpoint's tuned multi-label thresholds: one number for every label, or one per
    label. `backend` "auto" (the default, as the server, eval and predict) picks the fastest of the checkpoint's
    exported graphs whose validation cost export measured within bounds (`backend_for`), else PyTorch; "torch"
    is PyTorch whatever was exported (gradients for `explain`, a GPU); "onnx", "onnx-int8", "onnx-fused", ... run one
    graph in ONNX Runtime on the CPU. `quantize`, a `precision` other than auto/fp32 or a GPU `device` make "auto"
    PyTorch.
    """

    def __init__(self, checkpoint_path: str | Path, quantize: bool = False, device: str | None = None,
                 precision: str = "auto", threshold: float | Sequence[float] | None = None,
                 truncation: str | None = None, max_length: int | None = None, config: Any = None,
                 num_threads: int | None = None, backend: str = "auto") -> None:
        self.checkpoint_path = Path(checkpoint_path)
        self.checkpoint = CheckpointFolder(self.checkpoint_path)
        self.info = self.checkpoint.info
        self.task: str = self.info.task
        self.label_names: list[str] = list(self.info.labels)
        self.max_length = max_length or self.info.max_length
        self.truncation = truncation or self.info.truncation
        if self.truncation not in TRUNCATIONS:
            raise ValueError(f"truncation must be one of {TRUNCATIONS}, got {self.truncation!r}")
        if config is not None:
            self._check_config(config)
        self.thresholds = self._resolve_thresholds(threshold)
        self.backend_choice: BackendChoice = backend_for(self.checkpoint, backend, quantize=quantize,
                                                         precision=precision, device=device)
        self.backend = self.backend_choice.backend
        self.runner = build_runner(self.checkpoint, self.backend, device, quantize, precision, num_threads)
        self.device = self.runner.device
        self.quantized = self.runner.quantized
        self.precision = self.runner.precision
        self.tokenizer = AutoTokenizer.from_pretrained(self.checkpoint_path)
        self.pad_id = pad_token_id(self.tokenizer)
        self.lexical = LexicalModel.load(self.checkpoint_path) if LEXICAL in self.info.members else None
        self.training_metrics = self.checkpoint.metrics()
        self.checkpoint_id = self.checkpoint.checkpoint_id()

    @property
    def model(self) -> Any:
        """The PyTorch module (torch backend), e.g. to inspect its layers; None for the ONNX backends."""
        return getattr(self.runner, "model", None)

    def _check_config(self, config: Any) -> None:
        """Task and labels must match the checkpoint; input settings the checkpoint decides only warn."""
        task = getattr(config, "task", None)
        if task not in (None, "auto", self.task):  # auto (utils.config.AUTO_TASK): the checkpoint's own
            raise ValueError(f"config.task is {task!r} but the checkpoint {self.checkpoint_path} is {self.task!r}; "
                             "drop or correct the config")
        for field, used in (("max_length", self.max_length), ("truncation", self.truncation)):
            value = getattr(config, field, None)
            if value is not None and value != used:
                warnings.warn(f"config.{field} is {value!r} but the checkpoint {self.checkpoint_path} was trained "
                              f"with {getattr(self.info, field)!r}; using {used!r}", UserWarning, stacklevel=3)
        labels = getattr(config, "label_columns", None) or getattr(config, "labels", None)
        if labels and list(labels) != self.label_names:
            raise ValueError(f"config labels {list(labels)} differ from the checkpoint's {self.label_names}")

    def _resolve_thresholds(self, threshold: float | Sequence[float] | None) -> np.ndarray | None:
        if self.task != "multilabel":
            if threshold is not None:
                raise ValueError("threshold applies to multi-label checkpoints; a multi-class one predicts "
                                 "its top class (ask for top_k to see the runners-up)")
            return None
        if threshold is None:
            saved = self.info.thresholds
            return np.array(saved if saved else [0.5] * len(self.label_names), dtype=np.float64)
        try:
            values = np.asarray(threshold, dtype=np.float64)
        except (TypeError, ValueError):
            values = np.array([np.nan])
        if values.ndim == 0:
            values = np.full(len(self.label_names), float(values))
        if values.shape != (len(self.label_names),) or not ((values >= 0) & (values <= 1)).all():
            raise ValueError(f"threshold must be one number or {len(self.label_names)} numbers in [0, 1]")
        return values

    def score_batch(self, texts: Sequence[str], batch_size: int = 64) -> tuple[np.ndarray, list[bool]]:
        """Scores (N, labels) in input order and truncation flags: the blend of the checkpoint's members."""
        members, truncated = self.member_scores(texts, batch_size)
        if self.lexical is None:
            return self.calibrated(members[TRANSFORMER]), truncated
        return self.calibrated(self.blend(members[TRANSFORMER], members[LEXICAL])), truncated

    def calibrated(self, scores: np.ndarray) -> np.ndarray:
        """Scores at the checkpoint's temperature (fitted on validation): what predict, eval and the API give."""
        return with_temperature(self.task, scores, self.info.temperature)

    def blend(self, transformer: np.ndarray, lexical: np.ndarray) -> np.ndarray:
        """The checkpoint's blend of its members' scores (N, labels), with its weights and method."""
        return blend_scores(self.task, self.blend_weights(), transformer, lexical, self.info.blend_method)

    def blend_weights(self) -> np.ndarray:
        """The transformer's share of the blend, one per label."""
        weights = np.asarray(self.info.blend_weights, dtype=np.float64)
        return np.broadcast_to(weights, (len(self.label_names),))

    def member_scores(self, texts: Sequence[str], batch_size: int = 64) -> tuple[dict[str, np.ndarray], list[bool]]:
        """Each member's scores alone, in input order, and truncation flags; texts are batched by length."""
        texts = validate_texts(texts)
        if not texts:
            empty = np.zeros((0, len(self.label_names)))
            return {name: empty for name in self.info.members}, []
        encoded = encode(self.tokenizer, texts, self.max_length, self.truncation)
        logits = np.zeros((len(texts), len(self.label_names)), dtype=np.float32)
        for rows in sorted_batches(encoded.lengths, batch_size):
            input_ids, attention_mask = pad_batch([encoded.input_ids[i] for i in rows], self.pad_id)
            logits[rows] = self.runner.logits(input_ids, attention_mask)
        members = {TRANSFORMER: scores_from_logits(self.task, logits)}
        if self.lexical is not None:
            members[LEXICAL] = self.lexical.scores(texts)
        return members, encoded.truncated

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text feeds the model: special tokens included, after truncation to max_length."""
        return encode(self.tokenizer, validate_texts(texts), self.max_length, self.truncation).lengths

    def lexical_cost(self, chars: int) -> int:
        """What the TF-IDF member scoring `chars` characters costs, in transformer tokens (0 without one)."""
        return -(-chars // LEXICAL_CHARS_PER_TOKEN) if self.lexical is not None else 0

    def predict_cost(self, texts: Sequence[str]) -> int:
        """The work of scoring `texts`, in tokens through the transformer (the TF-IDF member's converted)."""
        return sum(self.token_counts(texts)) + self.lexical_cost(sum(len(text) for text in texts))

    def explain_cost(self, text: str, label_count: int, method: str = DEFAULT_METHOD) -> int:
        """The work of `explain(text)` for `label_count` labels, in predict_cost's unit: its prediction, then
        the method's passes; a blend's TF-IDF member scores the text OCCLUSION_READINGS times more (the text
        without each word, updated around each)."""
        item = prepare_text(self.tokenizer, text, self.max_length, self.truncation)
        chars = (1 + OCCLUSION_READINGS) * len(text)
        return len(item.input_ids) + transformer_tokens(method, item, label_count) + self.lexical_cost(chars)

    def result(self, scores: np.ndarray, truncated: bool, top_k: int | None = None,
               thresholds: np.ndarray | None = None) -> dict[str, Any]:
        """One text's answer: predicted labels, every label's score (checkpoint order), truncation.

        Multi-label: the labels whose score reaches their threshold. Multi-class: the top class. `top_k`
        adds the k best labels with their scores, best first.
        """
        score_map = {name: float(s) for name, s in zip(self.label_names, scores, strict=True)}
        if self.task == "multilabel":
            thresholds = self.thresholds if thresholds is None else thresholds
            chosen = chosen_labels(scores, thresholds, self.info.at_least_one_label)[0]
            labels = [n for n, keep in zip(self.label_names, chosen, strict=True) if keep]
        else:
            labels = [self.label_names[int(np.argmax(scores))]]
        answer = {"labels": labels, "scores": score_map, "truncated": bool(truncated)}
        if top_k:
            order = np.argsort(-scores, kind="stable")[:top_k]
            answer["top_k"] = [{"label": self.label_names[i], "score": float(scores[i])} for i in order]
        return answer

    def predict(self, text: str, top_k: int | None = None,
                threshold: float | Sequence[float] | None = None) -> dict[str, Any]:
        """Labels and scores for one text."""
        if text is None:
            raise ValueError("text is None; pass a string (an empty string is allowed)")
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        return self.predict_batch([text], top_k=top_k, threshold=threshold)[0]

    def predict_batch(self, texts: Sequence[str], batch_size: int = 64, top_k: int | None = None,
                      threshold: float | Sequence[float] | None = None) -> list[dict[str, Any]]:
        """Labels and scores for each text, in input order; `threshold` overrides the thresholds for this call."""
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        thresholds = self._resolve_thresholds(threshold) if threshold is not None else None
        scores, truncated = self.score_batch(texts, batch_size)
        return [self.result(s, t, top_k, thresholds) for s, t in zip(scores, truncated, strict=True)]

    def explain(self, text: str, labels: Sequence[str] | None = None,
                method: str = DEFAULT_METHOD) -> dict[str, Any]:
        """Why the text gets its scores: for each of `labels`, a score per word of the text.

        The answer is `predict`'s (labels, scores, truncated) plus `method`, `words` (each word's text and
        character offsets in `text`, in order) and `attributions`: label -> one number per word, how much the
        word raises the label's log-odds (log-probability for multi-class); None for a word truncation cut away
        (a blended checkpoint's lexical member still scores those). `labels` defaults to the predicted labels, or
        the best-scoring one when none is predicted.
        """
        if text is None:
            raise ValueError("text is None; pass a string (an empty string is allowed)")
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        (text,) = validate_texts([text])
        batch_scores, truncated = self.score_batch([text])  # the very scores and labels predict gives
        answer = self.result(batch_scores[0], truncated[0])
        asked = self._labels_to_explain(labels, answer["labels"], batch_scores[0])
        item = prepare_text(self.tokenizer, text, self.max_length, self.truncation)
        values = self._word_scores(method, item, [self.label_names.index(n) for n in asked])
        words = [{"word": text[start:end], "start": start, "end": end} for start, end in item.words]
        attributions = {name: [None if np.isnan(v) else round(float(v), 6) for v in row]
                        for name, row in zip(asked, values, strict=True)}
        return answer | {"method": method, "words": words, "attributions": attributions}

    def _word_scores(self, method: str, item: TextToExplain, label_ids: list[int]) -> np.ndarray:
        """(labels, words): the transformer's attributions, or for a blended checkpoint the blend's; in the served
        (tempered) log-odds, which divide the model's by the checkpoint's temperature."""
        temperature = self.info.temperature
        if self.lexical is None:
            return attribute(method, self.runner, item, self.task, label_ids, self.pad_id) / temperature
        lexical = self.lexical.occlusion_scores(item.text, item.words)
        if method == "occlusion":  # the served blend itself without each word: exact whatever the blend method
            transformer = occlusion_scores(self.runner.logits, item, self.task, self.pad_id)
            return drops(self.task, self.calibrated(self.blend(transformer, lexical)), label_ids)
        # gradients come from the transformer alone: its word scores and the lexical member's deletions, weighted
        weights = self.blend_weights()[label_ids]
        return blend_word_scores(
            {TRANSFORMER: attribute(method, self.runner, item, self.task, label_ids, self.pad_id),
             LEXICAL: drops(self.task, lexical, label_ids)}, {TRANSFORMER: weights, LEXICAL: 1 - weights}) / temperature

    def _labels_to_explain(self, labels: Sequence[str] | None, predicted: list[str], scores: np.ndarray) -> list[str]:
        if labels is None:
            return predicted or [self.label_names[int(np.argmax(scores))]]
        if isinstance(labels, str) or not isinstance(labels, Sequence) or not labels:
            raise ValueError(f"labels must be a non-empty list of label names, got {labels!r}")
        unknown = [name for name in labels if name not in self.label_names]
        if unknown:
            raise ValueError(f"unknown label(s) {unknown}; the checkpoint's labels are {self.label_names}")
        return list(dict.fromkeys(labels))

    def metadata(self) -> dict[str, Any]:
        return {"task": self.task, "labels": self.label_names,
                "thresholds": self.thresholds.tolist() if self.thresholds is not None else None,
                "backbone": self.info.backbone, "model_type": self.info.model_type,
                "pooling": self.info.pooling, "max_length": self.max_length,
                "truncation": self.truncation, "quantized": self.quantized, "precision": self.precision,
                "backend": self.backend, "backend_choice": self.backend_choice.describe(),
                "device": str(self.device), "checkpoint": str(self.checkpoint_path),
                "checkpoint_id": self.checkpoint_id, "members": self.info.members,
                "blend_weights": self.info.blend_weights, "training_metrics": self.training_metrics}


def validate_texts(texts: Sequence[str]) -> list[str]:
    """The texts as a list; anything but a sequence of valid Unicode strings is refused, naming the culprit."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if text is None:
            raise ValueError(f"text {i} is None; pass a string (an empty string is allowed)")
        if not isinstance(text, str):
            raise TypeError(f"text {i} must be a string, got {type(text).__name__}")
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as error:  # lone surrogates, which the tokenizer cannot take
                raise ValueError(f"text {i} is not valid Unicode ({error.reason} at character {error.start})"
                                 ) from None
    return list(texts)

