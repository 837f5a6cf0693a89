"""The lexical member: TF-IDF word and char_wb n-grams with logistic regression, scored in plain numpy.

Fitting is training's (`utils/training/lexical_fit.py`, scikit-learn); saving writes `lexical.safetensors` (every
float array) and `lexical.json` (vocabularies, settings, format version), never a pickle. Loading and scoring need only
numpy and safetensors: the analyzers and tf-idf weighting (`models/lexical_features.py`) and the linear scoring
here match scikit-learn's `TfidfVectorizer` and classifiers (tested to 1e-12 on real texts).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from safetensors.numpy import load_file, save_file

from models.lexical_features import Block, LexicalSettings
from models.lexical_occlusion import occlusion_logits
from models.scoring import scores_from_logits

FORMAT_VERSION = 1
WEIGHTS_FILE = "lexical.safetensors"  # every float array of the member
CONFIG_FILE = "lexical.json"  # its vocabularies and settings
TASKS = ("multilabel", "multiclass")


class Contribution(NamedTuple):
    """How much one n-gram of a text moved one label's logit."""

    ngram: str
    value: float
    analyzer: str  # 'word' or 'char_wb'


@dataclass
class SparseRows:
    """A CSR matrix without scipy: row i holds values[indptr[i]:indptr[i+1]] at columns indices[...]."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    num_columns: int

    def dot(self, weights: np.ndarray) -> np.ndarray:
        """This (N, F) matrix times dense (F, L) weights: (N, L)."""
        num_rows = len(self.indptr) - 1
        rows = np.repeat(np.arange(num_rows), np.diff(self.indptr))
        # one label at a time: a (non-zeros, labels) product would not fit in memory for large batches
        return np.stack([np.bincount(rows, self.values * weights[self.indices, j], minlength=num_rows)
                         for j in range(weights.shape[1])], axis=1).reshape(num_rows, weights.shape[1])


# ----------------------------------------------------------------------------------------------------------
# The model


@dataclass
class LexicalModel:
    """Vocabularies, idf and linear weights; scores texts with numpy alone.

    coef (L, F) and intercept (L,) are the logistic regression's; with NB weighting the features of label j
    are first multiplied by nb_ratios[j], so label j's logit is x . (nb_ratios[j] * coef[j]) + intercept[j].
    Multi-label: sigmoid per label. Multi-class: softmax over the classes' logits.
    """

    task: str
    settings: LexicalSettings
    blocks: list[Block]
    coef: np.ndarray
    intercept: np.ndarray
    nb_ratios: np.ndarray | None = None
    fit_report: dict[str, Any] = field(default_factory=dict)
    _weights: np.ndarray = field(init=False, repr=False)
    _pattern: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        self._pattern = re.compile(self.settings.token_pattern)
        effective = self.coef if self.nb_ratios is None else self.coef * self.nb_ratios
        self._weights = np.ascontiguousarray(effective.T)  # (F, L): one gather per n-gram when scoring

    @property
    def num_labels(self) -> int:
        return int(self.coef.shape[0])

    @property
    def pattern(self) -> re.Pattern[str]:
        """The word analyzer's token pattern, compiled."""
        return self._pattern

    @property
    def weights(self) -> np.ndarray:
        """(F, L) weights of the features, NB ratios folded in: label j's logit is x . weights[:, j] + intercept[j]."""
        return self._weights

    @property
    def num_features(self) -> int:
        return sum(len(b.vocabulary) for b in self.blocks)

    # ---- scoring (numpy only)

    def transform(self, texts: list[str]) -> SparseRows:
        """TF-IDF features, word block then char block, each l2-normalised (as hstacked TfidfVectorizers)."""
        indptr, indices, values = [0], [], []
        for text in texts:
            offset = 0
            for block in self.blocks:
                columns, row_values = block.encode(text, self.settings, self._pattern)
                indices.append(columns + offset)
                values.append(row_values)
                offset += len(block.vocabulary)
            indptr.append(indptr[-1] + sum(len(v) for v in values[-len(self.blocks):]))
        return SparseRows(np.array(indptr, dtype=np.int64),
                          np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64),
                          np.concatenate(values) if values else np.zeros(0), self.num_features)

    def logits(self, texts: list[str]) -> np.ndarray:
        """(N, L) decision values: per-label logits, or the multinomial model's class logits."""
        return self.transform(list(texts)).dot(self._weights) + self.intercept

    def scores(self, texts: list[str]) -> np.ndarray:
        """(N, L) probabilities: sigmoid per label (multi-label) or softmax over classes (multi-class)."""
        logits = self.logits(texts)
        return scores_from_logits(self.task, logits)

    def occlusion_scores(self, text: str, spans: list[tuple[int, int]]) -> np.ndarray:
        """(1 + spans, L): `scores` of the text, then of the text with each span replaced by one space, from the
        text's n-grams updated around each span (linear in the text's length; `models/lexical_occlusion.py`)."""
        logits = occlusion_logits(self, text, spans)
        return scores_from_logits(self.task, logits)

    def feature_contributions(self, text: str, label_index: int) -> list[Contribution]:
        """Each known n-gram of the text with its share of the label's logit, largest push first.

        The shares plus `intercept[label_index]` sum to `logits([text])[0, label_index]`.
        """
        features = self.transform([text])
        starts = np.cumsum([0] + [len(b.vocabulary) for b in self.blocks])
        shares = features.values * self._weights[features.indices, label_index]
        contributions = []
        for k in np.argsort(-np.abs(shares), kind="stable"):
            column = int(features.indices[k])
            block = int(np.searchsorted(starts, column, side="right")) - 1
            gram = self.blocks[block].vocabulary[column - starts[block]]
            contributions.append(Contribution(gram, float(shares[k]), self.blocks[block].analyzer))
        return contributions

    # ---- persistence (no pickle)

    def save(self, folder: str | Path) -> None:
        """Write lexical.safetensors (float arrays) and lexical.json (vocabularies, settings, version)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {"coef": self.coef, "intercept": self.intercept}
        arrays.update({f"idf.{b.analyzer}": b.idf for b in self.blocks})
        if self.nb_ratios is not None:
            arrays["nb_ratios"] = self.nb_ratios
        save_file({k: np.ascontiguousarray(v, dtype=np.float64) for k, v in arrays.items()},
                  str(folder / WEIGHTS_FILE), metadata={"format_version": str(FORMAT_VERSION)})
        description = {
            "format_version": FORMAT_VERSION, "task": self.task, "num_labels": self.num_labels,
            "settings": self.settings.to_json(),
            "blocks": [{"analyzer": b.analyzer, "ngram_range": list(b.ngram_range), "vocabulary": b.vocabulary}
                       for b in self.blocks],
            "fit_report": self.fit_report,
        }
        (folder / CONFIG_FILE).write_text(json.dumps(description, ensure_ascii=False))

    @classmethod
    def load(cls, folder: str | Path) -> LexicalModel:
        """Read back what `save` wrote; refuses another format version or arrays of the wrong shape."""
        folder = Path(folder)
        description = json.loads((folder / CONFIG_FILE).read_text())
        if description.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{folder / CONFIG_FILE}: format version {description.get('format_version')}, "
                             f"this code reads {FORMAT_VERSION}")
        arrays = load_file(str(folder / WEIGHTS_FILE))
        blocks = [Block(b["analyzer"], tuple(b["ngram_range"]), b["vocabulary"], arrays[f"idf.{b['analyzer']}"])
                  for b in description["blocks"]]
        model = cls(description["task"], LexicalSettings.from_json(description["settings"]), blocks,
                    arrays["coef"], arrays["intercept"], arrays.get("nb_ratios"), description.get("fit_report", {}))
        expected = (description["num_labels"], model.num_features)
        if model.coef.shape != expected or (model.nb_ratios is not None and model.nb_ratios.shape != expected):
            raise ValueError(f"{folder / WEIGHTS_FILE}: arrays do not match {expected} (labels, features)")
        return model
