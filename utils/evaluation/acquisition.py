"""Which unlabelled texts would teach a model most (`--mode suggest`, bench/active_learning.py): how uncertain the
served scores are where the answer is decided (each label's tuned threshold; the top two classes), how much the
blend's members disagree, and picks kept apart by the cosine similarity of their TF-IDF vectors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix

from models.scoring import logit

NEAR_DUPLICATE = 0.9  # TF-IDF cosine at or above which a text is never picked beside an already picked one
MAX_CANDIDATES = 50_000  # the greedy pass looks at this many of the most informative rows at most


@dataclass(frozen=True)
class Strategy:
    """One way to rank a pool: the parts of its priority and how strongly a pick pushes similar texts down."""

    name: str
    uncertainty: float = 1.0  # weight of the uncertainty at the decision
    disagreement: float = 0.0  # weight of the members' disagreement
    diversity: float = 0.0  # priority lost per unit of cosine similarity to the closest pick

    @property
    def informed(self) -> bool:
        return self.uncertainty > 0 or self.disagreement > 0


STRATEGIES = {strategy.name: strategy for strategy in (
    Strategy("random", uncertainty=0.0),
    Strategy("uncertainty"),
    Strategy("disagreement", uncertainty=0.0, disagreement=1.0),
    Strategy("uncertainty+disagreement", disagreement=1.0),
    Strategy("uncertainty+diversity", diversity=0.5),
    Strategy("uncertainty+disagreement+diversity", disagreement=1.0, diversity=0.5),
)}
DEFAULT_STRATEGY = "uncertainty+disagreement+diversity"


def uncertainty(task: str, served: np.ndarray, thresholds: np.ndarray | None) -> np.ndarray:
    """(N,) in [0, 1]: 1 where the answer is a coin toss. Multi-label: exp(-|log-odds distance|) from each label's
    threshold, the most uncertain label's; multi-class: one minus the margin between the two best classes."""
    served = np.atleast_2d(np.asarray(served, dtype=np.float64))
    if len(served) == 0:
        return np.zeros(0)
    if task == "multilabel":
        cut = np.full(served.shape[1], 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
        return np.exp(-np.abs(logit(served) - logit(cut))).max(axis=1)
    if served.shape[1] < 2:
        return np.zeros(len(served))
    best = np.sort(served, axis=1)[:, -2:]
    return 1.0 - (best[:, 1] - best[:, 0])


def disagreement(task: str, members: Mapping[str, np.ndarray]) -> np.ndarray:
    """(N,) in [0, 1]: how far apart the blend's members score a text (multi-label: the largest gap of one label's
    probabilities; multi-class: the total variation distance); 0 for a checkpoint of one member."""
    scores = [np.atleast_2d(np.asarray(m, dtype=np.float64)) for m in members.values()]
    if len(scores) < 2:
        return np.zeros(len(scores[0]) if scores else 0)
    first, second = scores[0], scores[1]
    if task == "multilabel":
        return np.abs(first - second).max(axis=1) if first.size else np.zeros(len(first))
    return 0.5 * np.abs(first - second).sum(axis=1)


def priority(strategy: Strategy, uncertain: np.ndarray, apart: np.ndarray) -> np.ndarray:
    """The strategy's score of each row in [0, 1]: its weighted parts."""
    total = strategy.uncertainty + strategy.disagreement
    if total == 0:
        return np.zeros(len(uncertain))
    return (strategy.uncertainty * uncertain + strategy.disagreement * apart) / total


def tfidf_vectors(texts: Sequence[str]) -> csr_matrix:
    """Rows of unit length (dot product = cosine similarity): words and word pairs, sublinear term frequencies."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, dtype=np.float32)
    try:
        return csr_matrix(vectorizer.fit_transform(texts))
    except ValueError:  # no word at all (texts of punctuation): every text its own
        return csr_matrix(np.eye(len(texts), dtype=np.float32))


def choose(strategy: Strategy, scores: np.ndarray, texts: Sequence[str], k: int, seed: int) -> list[int]:
    """Positions of `k` rows (fewer when fewer are far enough apart), best first: by `scores` (ties in a seeded
    order), each next pick losing `strategy.diversity` per unit of similarity to the closest pick made, and never
    a near-duplicate of one (cosine >= NEAR_DUPLICATE). `random` is the seeded order itself."""
    order = np.lexsort((np.random.default_rng(seed).permutation(len(scores)), -np.asarray(scores)))
    if not strategy.informed:
        return order[:k].tolist()
    candidates = order[:MAX_CANDIDATES]
    return [int(candidates[i]) for i in greedy_apart(np.asarray(scores)[candidates],
                                                     tfidf_vectors([texts[i] for i in candidates]), k,
                                                     strategy.diversity)]


def greedy_apart(scores: np.ndarray, vectors: csr_matrix, k: int, penalty: float) -> list[int]:
    """Greedy picks over rows in priority order: the best score less `penalty` times the similarity to the closest
    pick so far, near-duplicates of a pick left out."""
    closest = np.zeros(len(scores))
    alive = np.ones(len(scores), dtype=bool)
    picks: list[int] = []
    while len(picks) < k and alive.any():
        gain = np.where(alive, scores - penalty * closest, -np.inf)
        pick = int(np.argmax(gain))  # the first of equals: the seeded order breaks ties
        picks.append(pick)
        similarity = (vectors @ vectors[pick].T).toarray().ravel()
        closest = np.maximum(closest, similarity)
        alive &= similarity < NEAR_DUPLICATE
        alive[pick] = False
    return picks
