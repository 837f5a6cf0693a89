"""Token ids to model inputs, the same way for training and inference: explicit truncation (the head of a long
text, or its head and tail; utils/inference/reading.py reads texts with it), then padded batches of similar lengths.

Plain numpy, no torch: the ONNX serving image runs it too.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from transformers import PreTrainedTokenizerBase

TRUNCATIONS = ("head", "head_tail")


def cut(ids: list[int], budget: int, truncation: str) -> list[int]:
    """At most `budget` ids: the first ones, or the first quarter and the last three quarters of the budget.

    Head plus tail follows Sun et al. (2019), who found the end of a long review as telling as its start.
    """
    if len(ids) <= budget:
        return ids
    if truncation == "head":
        return ids[:budget]
    head = budget // 4
    return ids[:head] + ids[len(ids) - (budget - head):]


def split_specials(ids: list[int], special_mask: list[int]) -> tuple[list[int], list[int], list[int]]:
    """(leading special tokens, content, trailing special tokens) of one encoded text."""
    start = 0
    while start < len(ids) and special_mask[start]:
        start += 1
    end = len(ids)
    while end > start and special_mask[end - 1]:
        end -= 1
    return ids[:start], ids[start:end], ids[end:]


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    pad = tokenizer.pad_token_id
    return int(pad) if isinstance(pad, int) else 0


def pad_batch(sequences: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) as int64 arrays, padded on the right to the longest sequence."""
    longest = max(len(ids) for ids in sequences)
    input_ids = np.full((len(sequences), longest), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(sequences), longest), dtype=np.int64)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


def sorted_batches(lengths: list[int], batch_size: int) -> Iterator[list[int]]:
    """Indices in batches of ascending length (for inference); callers put results back in input order."""
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size].tolist()
