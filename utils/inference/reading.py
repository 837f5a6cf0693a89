"""How a text longer than the model's window is read: cut (its head, or head and tail), or read whole in windows
whose logits are pooled per label. One `Reading` serves training's validation, eval, predict, the inferer, the
API, Ray and export's measurement alike.

Windows hold `max_length` tokens each, special tokens included, and start `window_stride` content tokens apart (by
default three quarters of a window: a sentence cut by one window's edge lies whole in the next). The last window
ends with the text. Past `max_windows`, the windows spread evenly over the text, overlapping less; only when even
that leaves gaps is a part of the text unread, and the text is reported truncated. Cost grows linearly with the
text: about (tokens / stride) windows.

Plain numpy, no torch: the ONNX serving image runs it too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from utils.checkpoint.contract import DEFAULT_MAX_WINDOWS
from utils.inference.tokens import TRUNCATIONS, cut, split_specials

LONG_TEXTS = ("truncate", "windows")
WINDOW_POOLINGS = ("max", "mean")  # a label's logit over the windows: its highest, or the average
STRIDE_SHARE = 0.75  # windows start this share of a window's content apart, by default


@dataclass(frozen=True)
class Sequences:
    """The token sequences that read a batch of texts, and which text each reads (texts in order, their windows in
    text order)."""

    input_ids: list[list[int]]
    owner: np.ndarray  # (sequences,) the index of the text each sequence reads
    truncated: list[bool]  # per text: some of its tokens were never read
    texts: int

    @property
    def windows_per_text(self) -> np.ndarray:
        return np.bincount(self.owner, minlength=self.texts)

    @property
    def tokens_per_text(self) -> np.ndarray:
        """Tokens each text feeds the model, special tokens of every window included."""
        lengths = np.array([len(ids) for ids in self.input_ids], dtype=np.int64)
        return np.bincount(self.owner, weights=lengths, minlength=self.texts).astype(np.int64)


@dataclass(frozen=True)
class Reading:
    """The settings of reading: `max_length` tokens a sequence; beyond it `truncation` (head or head_tail) under
    `long_texts` "truncate", or windows pooled by `window_pooling` under "windows"."""

    max_length: int
    truncation: str = "head_tail"
    long_texts: str = "truncate"
    window_stride: int | None = None  # content tokens between window starts; None: STRIDE_SHARE of a window
    max_windows: int = DEFAULT_MAX_WINDOWS
    window_pooling: str = "max"

    def __post_init__(self) -> None:
        if self.truncation not in TRUNCATIONS:
            raise ValueError(f"truncation must be one of {TRUNCATIONS}, got {self.truncation!r}")
        if self.long_texts not in LONG_TEXTS:
            raise ValueError(f"long_texts must be one of {LONG_TEXTS}, got {self.long_texts!r}")
        if self.window_pooling not in WINDOW_POOLINGS:
            raise ValueError(f"window_pooling must be one of {WINDOW_POOLINGS}, got {self.window_pooling!r}")
        if self.max_windows < 1 or (self.window_stride is not None and self.window_stride < 1):
            raise ValueError(f"max_windows and window_stride must be positive, got {self.max_windows} and "
                             f"{self.window_stride}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be at least 8, got {self.max_length}")

    @classmethod
    def of(cls, info: Any, **overrides: Any) -> Reading:
        """A checkpoint's reading (ClassifierInfo), with the values of `overrides` that are not None."""
        fields = {"max_length": info.max_length, "truncation": info.truncation, "long_texts": info.long_texts,
                  "window_stride": info.window_stride, "max_windows": info.max_windows,
                  "window_pooling": info.window_pooling}
        return cls(**(fields | {k: v for k, v in overrides.items() if v is not None}))

    def with_pooling(self, pooling: str) -> Reading:
        return replace(self, window_pooling=pooling)

    def stride(self, content: int) -> int:
        """Content tokens between window starts, for windows of `content` content tokens."""
        return min(content, self.window_stride or max(1, int(content * STRIDE_SHARE)))

    def window_starts(self, tokens: int, content: int) -> tuple[list[int], bool]:
        """Where the windows of a text of `tokens` content tokens start, and whether some tokens go unread."""
        if tokens <= content:
            return [0], False
        if self.long_texts == "truncate":
            return [0], True
        stride = self.stride(content)
        count = 1 + math.ceil((tokens - content) / stride)
        if count <= self.max_windows:
            return [min(i * stride, tokens - content) for i in range(count)], False
        if self.max_windows == 1:
            return [0], True
        starts = np.linspace(0, tokens - content, self.max_windows).round().astype(int).tolist()
        return starts, (tokens - content) / (self.max_windows - 1) > content

    def encode(self, tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> Sequences:
        """The sequences that read `texts`: one per text cut to fit (truncate), or each text's windows."""
        encoded = tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False,
                            return_special_tokens_mask=True, return_attention_mask=False,
                            return_token_type_ids=False)
        input_ids: list[list[int]] = []
        owner: list[int] = []
        truncated: list[bool] = []
        for index, (ids, mask) in enumerate(zip(encoded["input_ids"], encoded["special_tokens_mask"], strict=True)):
            lead, content, trail = split_specials(ids, mask)
            windows = self.content_windows(content, self.max_length - len(lead) - len(trail))
            input_ids += [lead + window + trail for window in windows[0]]
            owner += [index] * len(windows[0])
            truncated.append(windows[1])
        return Sequences(input_ids, np.asarray(owner, dtype=np.int64), truncated, len(texts))

    def content_windows(self, content: list[int], budget: int) -> tuple[list[list[int]], bool]:
        """The content of each sequence reading a text of `content` ids, `budget` ids each, and whether some ids go
        unread; also what explanations map back to words."""
        if self.long_texts == "truncate" or len(content) <= budget:
            return [cut(content, budget, self.truncation)], len(content) > budget
        starts, unread = self.window_starts(len(content), budget)
        return [content[start:start + budget] for start in starts], unread

    def pool(self, logits: np.ndarray, owner: np.ndarray) -> np.ndarray:
        """Logits (texts, labels) from the sequences' logits: each label's highest or mean over a text's windows.
        `owner` runs in text order, as `encode` makes it."""
        logits = np.asarray(logits)
        if len(owner) == 0:
            return logits
        starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
        if len(starts) == len(owner):  # one sequence per text: nothing to pool
            return logits
        if self.window_pooling == "max":
            return np.maximum.reduceat(logits, starts, axis=0)
        counts = np.diff(np.r_[starts, len(owner)])[:, None]
        return (np.add.reduceat(logits.astype(np.float64), starts, axis=0) / counts).astype(logits.dtype)

    def pooling_weights(self, logits: np.ndarray) -> np.ndarray:
        """(windows, labels): how much each window's logit moves the pooled one of one text (the gradient of
        `pool`): 1/windows each (mean), or 1 for the window with the highest (max)."""
        windows = len(logits)
        if self.window_pooling == "mean":
            return np.full(np.shape(logits), 1.0 / windows)
        weights = np.zeros(np.shape(logits))
        weights[np.argmax(logits, axis=0), np.arange(np.shape(logits)[1])] = 1.0
        return weights
