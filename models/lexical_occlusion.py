"""The TF-IDF member's logits for a text without each of its words, in one pass over the text.

Deleting a word (its characters replaced by one space, so that its neighbours stay apart) changes
only the n-grams near it: the char_wb n-grams of the whitespace-separated chunk it lies in, and the word n-grams
that reach that chunk's tokens. Normalising (lowercase, accents) never looks across whitespace, so each chunk
reads alone as it does inside the text. Each deletion is then the text's n-gram counts plus a small change, and
each block's dot products and squared norm are updated from the changed n-grams alone: linear in the text's
length, where scoring every shortened text anew is quadratic (seconds for the longest texts the API accepts).
Equal to `LexicalModel.logits` of the shortened texts up to float rounding (tests/test_lexical.py).
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from models.lexical_features import Block, LexicalSettings, char_wb_ngrams, normalize, word_ngrams

CANCELLATION = 1e-6  # a deletion leaving less than this share of a block's squared norm is scored anew


class LinearTfIdf(Protocol):
    """What is read of `models.lexical.LexicalModel`: its features, their (F, L) weights, and its logits."""

    settings: LexicalSettings
    blocks: list[Block]
    intercept: np.ndarray

    @property
    def pattern(self) -> re.Pattern[str]: ...

    @property
    def weights(self) -> np.ndarray: ...

    def logits(self, texts: list[str]) -> np.ndarray: ...


class ChunkedText:
    """A text as its whitespace-separated chunks, each normalised alone, with its word tokens' positions."""

    def __init__(self, model: LinearTfIdf, text: str) -> None:
        self.model, self.text = model, text
        spans = [m.span() for m in re.finditer(r"\S+", text)]
        self.starts, self.ends = [s for s, _ in spans], [e for _, e in spans]
        self.tokens: list[str] = []
        self.token_starts = [0]  # chunk k's tokens are tokens[token_starts[k]:token_starts[k + 1]]
        for start, end in spans:
            self.tokens += self.words(text[start:end])
            self.token_starts.append(len(self.tokens))

    def words(self, piece: str) -> list[str]:
        return self.model.pattern.findall(normalize(piece, self.model.settings))

    def changes(self, block: Block, start: int, end: int) -> Counter[str]:
        """How the counts of `block`'s n-grams change when text[start:end] becomes one space."""
        first = bisect.bisect_right(self.ends, start)  # the chunks the span touches: first..last
        last = bisect.bisect_left(self.starts, end) - 1
        change: Counter[str] = Counter()
        if first > last:  # whitespace only: the n-grams stay
            return change
        left, right = self.text[self.starts[first]:start], self.text[end:self.ends[last]]
        low, high = block.ngram_range
        if block.analyzer == "word":
            a, b = self.token_starts[first], self.token_starts[last + 1]
            before, after = self.tokens[max(0, a - high + 1):a], self.tokens[b:b + high - 1]
            change.update(word_ngrams(before + self.words(left) + self.words(right) + after, low, high))
            change.subtract(word_ngrams(before + self.tokens[a:b] + after, low, high))
            return change
        settings = self.model.settings
        for piece in (left, right):
            change.update(char_wb_ngrams(normalize(piece, settings), low, high))
        for k in range(first, last + 1):
            change.subtract(char_wb_ngrams(normalize(self.text[self.starts[k]:self.ends[k]], settings), low, high))
        return change


def occlusion_logits(model: LinearTfIdf, text: str, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """(1 + spans, L) logits: the text whole, then with each span's characters replaced by one space."""
    chunked = ChunkedText(model, text)
    if chunked.tokens != model.pattern.findall(normalize(text, model.settings)):  # a token pattern across spaces
        return model.logits([text] + [text[:start] + " " + text[end:] for start, end in spans])
    logits = np.tile(model.intercept.astype(np.float64), (1 + len(spans), 1))
    rescore = np.zeros(1 + len(spans), dtype=bool)
    offset = 0
    for block in model.blocks:
        weights = model.weights[offset:offset + len(block.vocabulary)]
        offset += len(block.vocabulary)
        dots, squares, known = block_sums(model, block, weights, chunked, spans)
        seen = known > 0
        logits[seen] += dots[seen] / np.sqrt(squares[seen])[:, None]
        rescore |= seen & (squares < CANCELLATION * squares[0])
    for row in np.flatnonzero(rescore):  # nearly every feature gone: rounding would swamp what is left
        start, end = spans[row - 1]
        logits[row] = model.logits([text[:start] + " " + text[end:]])[0]
    return logits


def block_sums(model: LinearTfIdf, block: Block, weights: np.ndarray, chunked: ChunkedText,
               spans: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the text, then each deletion: the block's un-normalised logit parts (rows, L), squared norm (rows,)
    and count of known n-grams (rows,)."""
    settings = model.settings
    counts = Counter(block.ngrams(chunked.text, settings, model.pattern))
    base = {block.index[g]: c for g, c in counts.items() if g in block.index}
    columns = np.fromiter(base, dtype=np.int64, count=len(base))
    values = block.tf_idf(np.fromiter(base.values(), dtype=np.float64, count=len(base)), columns, settings)
    moves = [(row, column, base.get(column, 0), change)  # deletion, n-gram's column, count before, change
             for row, (start, end) in enumerate(spans, start=1)
             for gram, change in chunked.changes(block, start, end).items()
             if change and (column := block.index.get(gram)) is not None]
    rows, changed, before, change = np.array(moves, dtype=np.int64).reshape(-1, 4).T
    old, new = block.tf_idf(before, changed, settings), block.tf_idf(before + change, changed, settings)
    size = 1 + len(spans)
    dots = np.tile(values @ weights[columns], (size, 1))
    np.add.at(dots, rows, (new - old)[:, None] * weights[changed])
    squares = np.dot(values, values) + np.bincount(rows, new ** 2 - old ** 2, minlength=size)
    known = len(base) + np.bincount(rows, (before + change > 0).astype(np.int64) - (before > 0), minlength=size)
    return dots, squares, known
