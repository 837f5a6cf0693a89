"""What the TF-IDF member reads: its settings, and the n-grams and tf-idf of scikit-learn's `TfidfVectorizer`
('word' and 'char_wb' analyzers, lowercase on) re-implemented in plain Python and numpy, so that serving needs
neither scikit-learn nor pickles."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class LexicalSettings:
    """Features and classifier of the lexical member; every field is saved in `lexical.json`.

    The defaults won on toxic's validation split (docs/lexical_experiments.md); `for_task` gives each task's.
    """

    word_ngrams: tuple[int, int] = (1, 2)  # word n-gram range (n-grams joined by one space)
    char_ngrams: tuple[int, int] | None = (2, 5)  # char_wb n-gram range; None: word features only
    word_max_features: int | None = 100_000  # most frequent word n-grams kept
    char_max_features: int | None = 200_000  # most frequent char n-grams kept
    min_df: int = 1  # an n-gram must occur in this many training texts
    token_pattern: str = r"(?u)\b\w\w+\b"  # scikit-learn's default word tokens
    strip_accents: bool = True  # NFKD-decompose and drop combining marks (scikit-learn's 'unicode')
    sublinear_tf: bool = True  # 1 + log(count) instead of the raw count
    nb_weighting: bool = True  # scale features by per-label naive-Bayes log-count ratios (NB-LR)
    nb_alpha: float = 1.0  # smoothing of the NB ratios
    c: float = 2.0  # inverse regularisation strength used without a validation split
    c_grid: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # tried on a validation split
    c_per_label: bool = True  # multi-label: choose C for each label (else one C by mean ROC AUC)
    c_patience: int | None = 2  # per label, stop rising C after this many in a row below its best; None: all
    # multi-label: a label with fewer validation positives than this (about 57 training positives at the 15%
    # validation carve) neither chooses its C on them (one positive's rank moves its ROC AUC by up to 1/n) nor
    # takes NB weighting (nb_alpha = 1 outweighs the tf-idf summed over so few positives: its ratios then
    # measure how rare an n-gram is among the negatives, not the label); it is fitted once at `rare_c`, no NB
    rare_below: int = 10
    rare_c: float = 4.0  # the rare labels' C: the plain TF-IDF + LR reference's
    c_search_budget: int = 5_000_000  # rows x labels x C values; over it each label's C search has patience 1
    class_weight: str | None = "balanced"  # scikit-learn class_weight: None or 'balanced'
    max_iter: int = 1000  # solver iterations per fit
    tol: float = 1e-4  # solver tolerance
    seed: int = 42  # liblinear's shuffling

    @classmethod
    def for_task(cls, task: str) -> LexicalSettings:
        """The measured default of a task: multi-class drops NB weighting (-0.04 macro-F1 on conference)."""
        return cls() if task == "multilabel" else cls(nb_weighting=False)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> LexicalSettings:
        values = dict(values)
        for key in ("word_ngrams", "char_ngrams", "c_grid"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)


# ----------------------------------------------------------------------------------------------------------
# Analyzers: the same n-grams as scikit-learn's 'word' and 'char_wb' analyzers, with lowercase on


def strip_accents(text: str) -> str:
    """Decompose (NFKD) and drop combining marks; ASCII text is returned as is."""
    if text.isascii():
        return text
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def normalize(text: str, settings: LexicalSettings) -> str:
    """What the analyzers read: lowercase, then accents stripped if the settings say so. It changes no
    character's neighbourhood across whitespace, so a text normalises as its whitespace-separated chunks do."""
    text = text.lower()
    return strip_accents(text) if settings.strip_accents else text


def word_ngrams(tokens: list[str], low: int, high: int) -> list[str]:
    """Every run of `low`..`high` consecutive tokens, joined by a space."""
    return [" ".join(tokens[i:i + n]) for n in range(low, high + 1) for i in range(len(tokens) - n + 1)]


def char_wb_ngrams(text: str, low: int, high: int) -> list[str]:
    """Character n-grams inside each whitespace-separated word padded with one space on each side."""
    grams: list[str] = []
    for word in text.split():
        padded = f" {word} "
        size = len(padded)
        for n in range(low, high + 1):
            if n >= size:  # a word shorter than n counts once, whole, and ends the longer n-grams
                grams.append(padded)
                break
            grams.extend(padded[i:i + n] for i in range(size - n + 1))
    return grams


@dataclass
class Block:
    """One analyzer's vocabulary (index order) and idf, the part of the feature vector it fills."""

    analyzer: str  # 'word' or 'char_wb'
    ngram_range: tuple[int, int]
    vocabulary: list[str]
    idf: np.ndarray
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = {gram: i for i, gram in enumerate(self.vocabulary)}

    def ngrams(self, text: str, settings: LexicalSettings, pattern: re.Pattern[str]) -> list[str]:
        text = normalize(text, settings)
        if self.analyzer == "word":
            return word_ngrams(pattern.findall(text), *self.ngram_range)
        return char_wb_ngrams(text, *self.ngram_range)

    def tf_idf(self, counts: np.ndarray, columns: np.ndarray, settings: LexicalSettings) -> np.ndarray:
        """Un-normalised tf-idf of n-grams seen `counts` times (0 gives 0)."""
        counts = np.asarray(counts, dtype=np.float64)
        tf = np.where(counts > 0, np.log(np.maximum(counts, 1.0)) + 1.0, 0.0) if settings.sublinear_tf else counts
        return tf * self.idf[columns]

    def encode(self, text: str, settings: LexicalSettings,
               pattern: re.Pattern[str]) -> tuple[np.ndarray, np.ndarray]:
        """Column indices and l2-normalised tf-idf values of the text's known n-grams."""
        counts = Counter(self.ngrams(text, settings, pattern))
        known = [(self.index[g], c) for g, c in counts.items() if g in self.index]
        columns = np.array([i for i, _ in known], dtype=np.int64)
        values = self.tf_idf(np.array([c for _, c in known], dtype=np.float64), columns, settings)
        norm = np.sqrt(np.dot(values, values))
        return columns, (values / norm if norm > 0 else values)
