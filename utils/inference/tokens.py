"""Texts to model inputs, the same way for training and inference: token ids with explicit truncation (the head
of a long text, or its head and tail), then padded batches of similar lengths.

Plain numpy, no torch: the ONNX serving image runs it too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

TRUNCATIONS = ("head", "head_tail")


@dataclass
class Encoded:
    """Token ids per text (special tokens included) and whether each text was cut."""

    input_ids: list[list[int]]
    truncated: list[bool]

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]


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


def encode(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int,
           truncation: str = "head_tail") -> Encoded:
    """Token ids with the tokenizer's own special tokens, the content cut to fit `max_length`."""
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation must be one of {TRUNCATIONS}, got {truncation!r}")
    encoded = tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False,
                        return_special_tokens_mask=True, return_attention_mask=False,
                        return_token_type_ids=False)
    input_ids, truncated = [], []
    for ids, mask in zip(encoded["input_ids"], encoded["special_tokens_mask"], strict=True):
        lead, content, trail = split_specials(ids, mask)
        budget = max_length - len(lead) - len(trail)
        input_ids.append(lead + cut(content, budget, truncation) + trail)
        truncated.append(len(content) > budget)
    return Encoded(input_ids, truncated)


@dataclass
class EncodedText:
    """One text's token ids as `encode` makes them, with each id's character span in the text (None for special
    tokens): what maps token-level scores back to the words of the text."""

    input_ids: list[int]
    offsets: list[tuple[int, int] | None]
    truncated: bool


def encode_with_offsets(tokenizer: PreTrainedTokenizerBase, text: str, max_length: int,
                        truncation: str = "head_tail") -> EncodedText:
    """The ids `encode` gives for `text`, and where each comes from; needs a fast (Rust) tokenizer."""
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation must be one of {TRUNCATIONS}, got {truncation!r}")
    if not tokenizer.is_fast:
        raise ValueError("character offsets need a fast tokenizer (tokenizer.json in the checkpoint)")
    encoded = tokenizer(text, add_special_tokens=True, truncation=False, verbose=False,
                        return_special_tokens_mask=True, return_offsets_mapping=True, return_attention_mask=False,
                        return_token_type_ids=False)
    ids, mask = encoded["input_ids"], encoded["special_tokens_mask"]
    lead, content, trail = split_specials(list(range(len(ids))), mask)  # positions, cut as `encode` cuts ids
    budget = max_length - len(lead) - len(trail)
    kept = lead + cut(content, budget, truncation) + trail
    offsets = [None if mask[i] else tuple(encoded["offset_mapping"][i]) for i in kept]
    return EncodedText([ids[i] for i in kept], offsets, len(content) > budget)


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
