"""ModelInferer: loads a checkpoint folder once and predicts labels and scores for texts.

    from inferer import ModelInferer
    inferer = ModelInferer("outputs/run/checkpoint")
    inferer.predict("you are wonderful")
    inferer.explain("you are a complete idiot")   # why: a score per word for each predicted label
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from transformers import AutoTokenizer

from models.lexical import LexicalModel
from models.scoring import logsumexp, scores_from_logits
from utils.checkpoint.contract import LEXICAL, TRANSFORMER, CheckpointFolder
from utils.inference.answers import LabelRules, Threshold, check_top_k
from utils.inference.backends import BackendChoice, backend_for
from utils.inference.blend import Blend, Scored
from utils.inference.explain import (
    DEFAULT_METHOD,
    TextToExplain,
    attribute,
    blend_word_scores,
    drops,
    occlusion_scores,
    prepare_text,
)
from utils.inference.inputs import validate_text, validate_texts
from utils.inference.legacy import check_original_config
from utils.inference.reading import Reading
from utils.inference.runners import LexicalScorer, Sharing, build_runner, score_sequences
from utils.inference.tokens import pad_token_id


class ModelInferer:
    """Predicts with a trained checkpoint: labels, a score per label and whether the text was cut.

    `threshold` replaces the checkpoint's tuned multi-label thresholds (one number for every label, or one per
    label), or a multi-class checkpoint's "none of these" threshold (one number; models/none_of_these.py).
    `backend` "auto" (the default, as the server, eval and predict) picks the fastest of the checkpoint's exported
    graphs whose validation cost export measured within bounds (utils/inference/backends.py), else PyTorch;
    "torch" is PyTorch whatever was exported (gradients for `explain`, a GPU); "onnx", "onnx-int8", "onnx-fused",
    ... run one graph in ONNX Runtime on the CPU. `quantize`, a `precision` other than auto/fp32 or
    a GPU `device` make "auto" PyTorch. `max_length`, `truncation`, `long_texts` ("truncate" or "windows"),
    `window_stride`, `max_windows` and `window_pooling` replace how the checkpoint reads long texts
    (utils/inference/reading.py). `config`, the original project's call, must agree with the checkpoint
    (utils/inference/legacy.py).
    """

    def __init__(self, checkpoint_path: str | Path, quantize: bool = False, device: str | None = None,
                 precision: str = "auto", threshold: Threshold = None, truncation: str | None = None,
                 max_length: int | None = None, num_threads: int | None = None, backend: str = "auto",
                 long_texts: str | None = None, window_stride: int | None = None, max_windows: int | None = None,
                 window_pooling: str | None = None, config: Any = None) -> None:
        self.checkpoint_path = Path(checkpoint_path)
        self.checkpoint = CheckpointFolder(self.checkpoint_path)
        self.info = self.checkpoint.info
        self.task: str = self.info.task
        self.label_names: list[str] = list(self.info.labels)
        self.reading = Reading.of(self.info, max_length=max_length, truncation=truncation, long_texts=long_texts,
                                  window_stride=window_stride, max_windows=max_windows,
                                  window_pooling=window_pooling)
        self.max_length, self.truncation = self.reading.max_length, self.reading.truncation
        if config is not None:
            check_original_config(config, self.checkpoint_path, self.task, self.label_names, {
                "max_length": (self.info.max_length, self.max_length),
                "truncation": (self.info.truncation, self.truncation)})
        self.rules = LabelRules.of(self.info, threshold)
        self.thresholds = self.rules.thresholds
        self.blend = Blend.of(self.info)
        self.backend_choice: BackendChoice = backend_for(self.checkpoint, backend, quantize=quantize,
                                                         precision=precision, device=device)
        self.backend = self.backend_choice.backend
        self.runner = build_runner(self.checkpoint, self.backend, device, quantize, precision, num_threads)
        self.device, self.quantized, self.precision = self.runner.device, self.runner.quantized, self.runner.precision
        self.tokenizer = AutoTokenizer.from_pretrained(self.checkpoint_path)
        self.pad_id = pad_token_id(self.tokenizer)
        self.lexical: LexicalScorer | None = (LexicalModel.load(self.checkpoint_path)
                                              if LEXICAL in self.info.members else None)
        self.training_metrics = self.checkpoint.metrics()
        self.checkpoint_id = self.checkpoint.checkpoint_id()

    @property
    def model(self) -> Any:
        """The PyTorch module (torch backend), e.g. to inspect its layers; None for the ONNX backends."""
        return getattr(self.runner, "model", None)

    def shared(self, sharing: Sharing) -> ModelInferer:
        """This inferer over the same loaded model, its forward passes and TF-IDF scoring going through what
        `sharing` makes of them (the server's turns, serving/scheduling.py); this one stays as it is."""
        inferer = copy.copy(self)
        inferer.runner = sharing.share_runner(self.runner)
        inferer.lexical = sharing.share_lexical(self.lexical) if self.lexical is not None else None
        return inferer

    def score_batch(self, texts: Sequence[str], batch_size: int = 64) -> tuple[np.ndarray, list[bool]]:
        """Scores (N, labels) in input order and truncation flags: the blend of the checkpoint's members."""
        scored = self.score_texts(texts, batch_size)
        return scored.served, scored.truncated

    def score_texts(self, texts: Sequence[str], batch_size: int = 64) -> Scored:
        """Each member's scores, the served blend and the transformer's logit evidence; sequences (texts, or their
        windows) are batched by length."""
        texts = validate_texts(texts)
        if not texts:
            empty = np.zeros((0, len(self.label_names)))
            return Scored({name: empty for name in self.info.members}, empty, np.zeros(0), [])
        sequences = self.reading.encode(self.tokenizer, texts)
        logits = self.reading.pool(score_sequences(self.runner.logits, sequences.input_ids, self.pad_id, batch_size),
                                   sequences.owner)
        members = {TRANSFORMER: scores_from_logits(self.task, logits)}
        if self.lexical is not None:
            members[LEXICAL] = self.lexical.scores(texts)
        return Scored(members, self.blend.served(members), logsumexp(logits, axis=1), list(sequences.truncated))

    def predict(self, text: str, top_k: int | None = None, threshold: Threshold = None) -> dict[str, Any]:
        """Labels and scores for one text."""
        return self.predict_batch([validate_text(text)], top_k=top_k, threshold=threshold)[0]

    def predict_batch(self, texts: Sequence[str], batch_size: int = 64, top_k: int | None = None,
                      threshold: Threshold = None) -> list[dict[str, Any]]:
        """Labels and scores for each text, in input order; `threshold` overrides the thresholds for this call."""
        check_top_k(top_k)
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        rules = self.rules.with_threshold(threshold) if threshold is not None else self.rules
        scored = self.score_texts(texts, batch_size)
        return [rules.answer(s, t, top_k, e) for s, t, e in zip(scored.served, scored.truncated, scored.evidence,
                                                                  strict=True)]

    def explain(self, text: str, labels: Sequence[str] | None = None,
                method: str = DEFAULT_METHOD) -> dict[str, Any]:
        """Why the text gets its scores: for each of `labels`, a score per word of the text.

        The answer is `predict`'s (labels, scores, truncated) plus `method`, `words` (each word's text and
        character offsets in `text`, in order) and `attributions`: label -> one number per word, how much the
        word raises the label's log-odds (log-probability for multi-class); None for a word truncation cut away
        (a blended checkpoint's lexical member still scores those). `labels` defaults to the predicted labels, or
        the best-scoring one when none is predicted.
        """
        text = validate_text(text)
        scored = self.score_texts([text])  # the very scores and labels predict gives
        answer = self.rules.answer(scored.served[0], scored.truncated[0], None, scored.evidence[0])
        asked = self.rules.to_explain(labels, answer["labels"], scored.served[0])
        item = prepare_text(self.tokenizer, text, self.reading)
        values = self._word_scores(method, item, [self.label_names.index(n) for n in asked])
        words = [{"word": text[start:end], "start": start, "end": end} for start, end in item.words]
        attributions = {name: [None if np.isnan(v) else round(float(v), 6) for v in row]
                        for name, row in zip(asked, values, strict=True)}
        return answer | {"method": method, "words": words, "attributions": attributions}

    def _word_scores(self, method: str, item: TextToExplain, label_ids: list[int]) -> np.ndarray:
        """(labels, words): the transformer's attributions, or for a blended checkpoint the blend's; in the served
        (tempered) log-odds, which divide the model's by the checkpoint's temperature."""
        temperature = self.blend.temperature
        if self.lexical is None:
            return attribute(method, self.runner, item, self.task, label_ids, self.pad_id) / temperature
        lexical = self.lexical.occlusion_scores(item.text, item.words)
        if method == "occlusion":  # the served blend itself without each word: exact whatever the blend method
            transformer = occlusion_scores(self.runner.logits, item, self.task, self.pad_id)
            return drops(self.task, self.blend.served({TRANSFORMER: transformer, LEXICAL: lexical}), label_ids)
        # gradients come from the transformer alone: its word scores and the lexical member's deletions, weighted
        weights = self.blend.weights[label_ids]
        return blend_word_scores(
            {TRANSFORMER: attribute(method, self.runner, item, self.task, label_ids, self.pad_id),
             LEXICAL: drops(self.task, lexical, label_ids)}, {TRANSFORMER: weights, LEXICAL: 1 - weights}) / temperature

    def metadata(self) -> dict[str, Any]:
        """What is loaded and how it runs, as /metadata shows it (plain JSON)."""
        return {"task": self.task, "labels": self.label_names,
                "thresholds": self.thresholds.tolist() if self.thresholds is not None else None,
                "backbone": self.info.backbone, "model_type": self.info.model_type,
                "pooling": self.info.pooling, "max_length": self.max_length,
                "truncation": self.truncation, "long_texts": self.reading.long_texts,
                "window_stride": self.reading.window_stride, "max_windows": self.reading.max_windows,
                "window_pooling": self.reading.window_pooling, "quantized": self.quantized, "precision": self.precision,
                "backend": self.backend, "backend_choice": self.backend_choice.describe(),
                "device": str(self.device), "checkpoint": str(self.checkpoint_path),
                "checkpoint_id": self.checkpoint_id, "members": self.info.members,
                "blend_weights": self.info.blend_weights, "none_threshold": self.info.none_threshold,
                "none_label": self.info.none_label, "training_metrics": self.training_metrics}
