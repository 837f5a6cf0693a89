"""Word attributions: how much each word of a text moves a label's score (for `ModelInferer.explain`).

Words are what a person reads: the whitespace-separated chunks of the text, with leading and trailing punctuation
as words of their own ("idiot!!" gives "idiot" and "!!"; "don't" and "f***ing" stay whole). A word owns the word
pieces whose characters overlap it (the fast tokenizer's offsets), in each sequence the model reads: the cut
text, or each window of a text read whole (utils/inference/reading.py), where a word may lie in two windows. A
word no sequence reads (cut away) has no score (NaN here, null in JSON). Over windows, occlusion deletes the
word from every window holding it and pools the windows as prediction does; the gradient methods weight each
window by how much it moves the pooled logit (under max pooling, only the window holding a label's highest).

Every method scores in the units of the label's log-odds (multi-label) or log-probability (multi-class):
- `occlusion`: how much the label's log-odds drop when the word's pieces are deleted from the input. It needs
  only logits, so it runs on every backend (torch, int8, ONNX); one forward pass per word serves all labels.
- `gradient_x_input`: the gradient of the label's log-odds with respect to the pieces' embeddings, dotted with
  the embeddings.
- `integrated_gradients` (Sundararajan et al., 2017): that gradient averaged along the straight path from [PAD]
  embeddings to the text's, dotted with the difference; needs the torch backend without int8, like the above.
The default was chosen by deletion curves on held-out toxic comments: docs/EXPLAIN.md, bench/explain.py.

A blended checkpoint (a TF-IDF member beside the transformer) is explained by occlusion of the blend itself: each
member scores the input without the word (the lexical member the text without it, so it also scores words
truncation cut away), the blend combines them, and the drop is taken there. `blend_word_scores` combines members'
word scores by the blend weights where they come separately (the gradient methods).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.scoring import scores_from_logits
from utils.inference.reading import Reading
from utils.inference.runners import LogitsFn, score_sequences
from utils.inference.tokens import split_specials

METHODS = ("occlusion", "gradient_x_input", "integrated_gradients")
DEFAULT_METHOD = "occlusion"
GRADIENT_METHODS = ("gradient_x_input", "integrated_gradients")
IG_STEPS = 16  # path points of integrated gradients (midpoint rule)
_EDGES = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)



@dataclass
class WindowToExplain:
    """One sequence the model reads of a text: its token ids and which of its positions belong to which word."""

    input_ids: np.ndarray  # (tokens,) int64, special tokens included
    special: np.ndarray  # (tokens,) bool: [CLS], [SEP] and the like
    pieces: dict[int, list[int]]  # word index -> its token positions here, for the words this window reads


@dataclass
class TextToExplain:
    """One text as the model reads it (one sequence, or its windows), and where each of its words lies."""

    text: str
    words: list[tuple[int, int]]  # character spans, in text order
    windows: list[WindowToExplain]
    truncated: bool
    reading: Reading

    @property
    def seen(self) -> list[int]:
        """The words some sequence reads, in text order (truncation may cut others away)."""
        return sorted({word for window in self.windows for word in window.pieces})

    def pool(self, logits: np.ndarray) -> np.ndarray:
        """The text's logits from its windows' (windows, labels), as prediction pools them."""
        return self.reading.pool(logits, np.zeros(len(logits), dtype=np.int64))[0]


def split_words(text: str) -> list[tuple[int, int]]:
    """Character spans of the words: whitespace-separated chunks, their edge punctuation apart."""
    spans = []
    for chunk in re.finditer(r"\S+", text):
        position = chunk.start()
        for part in _EDGES.match(chunk.group()).groups():  # type: ignore[union-attr]  # the pattern always matches
            if part:
                spans.append((position, position + len(part)))
                position += len(part)
    return spans


def prepare_text(tokenizer: Any, text: str, reading: Reading) -> TextToExplain:
    """Tokenize `text` exactly as for prediction (cut, or in windows), and give each word the positions of its
    pieces in each sequence; needs a fast (Rust) tokenizer for the character offsets."""
    if not tokenizer.is_fast:
        raise ValueError("character offsets need a fast tokenizer (tokenizer.json in the checkpoint)")
    encoded = tokenizer(text, add_special_tokens=True, truncation=False, verbose=False,
                        return_special_tokens_mask=True, return_offsets_mapping=True, return_attention_mask=False,
                        return_token_type_ids=False)
    ids, mask, offsets = encoded["input_ids"], encoded["special_tokens_mask"], encoded["offset_mapping"]
    lead, content, trail = split_specials(list(range(len(ids))), mask)  # positions, read as ids are read
    kept, truncated = reading.content_windows(content, reading.max_length - len(lead) - len(trail))
    words = split_words(text)
    starts = [start for start, _ in words]
    windows = []
    for window in kept:
        positions = lead + window + trail
        pieces: dict[int, list[int]] = {}
        for place, position in enumerate(positions):
            start, end = offsets[position]
            if mask[position] or start == end:
                continue
            index = max(bisect.bisect_right(starts, start) - 1, 0)
            while index < len(words) and words[index][0] < end:
                if words[index][1] > start:  # the piece overlaps the word
                    pieces.setdefault(index, []).append(place)
                index += 1
        windows.append(WindowToExplain(np.asarray([ids[p] for p in positions], dtype=np.int64),
                                       np.array([bool(mask[p]) for p in positions]), pieces))
    return TextToExplain(text, words, windows, truncated, reading)


def label_targets(task: str, logits: np.ndarray) -> np.ndarray:
    """What attributions explain: the logits (multi-label log-odds) or the log-softmax (multi-class)."""
    logits = np.asarray(logits, dtype=np.float64)
    if task == "multilabel":
        return logits
    top = logits.max(axis=-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))


def occluded_logits(logits_fn: LogitsFn, item: TextToExplain, pad_id: int, batch_size: int = 64) -> np.ndarray:
    """Logits (1 + words, labels): the text whole, then without each word's pieces, in every window that reads
    it, pooled over the windows as prediction pools them (a word no window reads leaves the text whole)."""
    sequences: list[np.ndarray] = []
    deleted: dict[int, list[tuple[int, int]]] = {}  # word -> (window, row of its deletion there)
    for w, window in enumerate(item.windows):
        sequences.append(window.input_ids)
        for word, positions in window.pieces.items():
            deleted.setdefault(word, []).append((w, len(sequences)))
            sequences.append(np.delete(window.input_ids, positions))
    logits = score_sequences(logits_fn, sequences, pad_id, batch_size)
    base_rows = [0] + np.cumsum([1 + len(window.pieces) for window in item.windows])[:-1].tolist()
    base = logits[base_rows]
    rows = np.repeat(item.pool(base)[None], 1 + len(item.words), axis=0)
    for word, places in deleted.items():
        without = base.copy()
        for w, row in places:
            without[w] = logits[row]
        rows[1 + word] = item.pool(without)
    return rows


def occlusion(logits_fn: LogitsFn, item: TextToExplain, task: str, label_ids: Sequence[int], pad_id: int,
              batch_size: int = 64) -> np.ndarray:
    """(labels, words): the drop of each label's target when the word's pieces are deleted; NaN for a word no
    sequence reads."""
    seen = item.seen
    targets = label_targets(task, occluded_logits(logits_fn, item, pad_id, batch_size))[:, list(label_ids)]
    scores = np.full((len(label_ids), len(item.words)), np.nan)
    scores[:, seen] = targets[0][:, None] - targets[1 + np.array(seen, dtype=int)].T
    return scores


def occlusion_scores(logits_fn: LogitsFn, item: TextToExplain, task: str, pad_id: int,
                     batch_size: int = 64) -> np.ndarray:
    """Scores (1 + words, labels): the whole input, then the input without each word's pieces (a word truncation
    cut away leaves the input whole)."""
    return scores_from_logits(task, occluded_logits(logits_fn, item, pad_id, batch_size))


def transformer_tokens(method: str, item: TextToExplain, label_count: int) -> int:
    """Tokens `method` feeds the transformer to explain `item`, a backward pass counted as two forward ones:
    occlusion each sequence whole, then without each word's pieces it reads, whatever the labels; the gradient
    methods one pass per path point and a backward pass per label of each sequence (and, over windows, one pass
    to find the windows the pooling weighs)."""
    lengths = [len(window.input_ids) for window in item.windows]
    if method == "occlusion":
        return sum(length + sum(length - len(positions) for positions in window.pieces.values())
                   for length, window in zip(lengths, item.windows, strict=True))
    steps = IG_STEPS if method == "integrated_gradients" else 1
    windows_pass = sum(lengths) if len(lengths) > 1 else 0
    return windows_pass + sum(steps * length * (1 + 2 * label_count) for length in lengths)


def score_targets(task: str, scores: np.ndarray) -> np.ndarray:
    """What attributions explain, from probabilities: log-odds (multi-label) or log-probabilities (multi-class)."""
    clipped = np.clip(np.asarray(scores, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(clipped) - np.log1p(-clipped) if task == "multilabel" else np.log(clipped)


def drops(task: str, scores: np.ndarray, label_ids: Sequence[int]) -> np.ndarray:
    """(labels, words) from scores (1 + words, labels): how far each label's target falls without each word."""
    targets = score_targets(task, scores)[:, list(label_ids)]
    return targets[0][:, None] - targets[1:].T


def token_gradients(model: Any, item: WindowToExplain, task: str, label_ids: Sequence[int], pad_id: int,
                    steps: int) -> np.ndarray:
    """(labels, tokens): gradient x input (`steps` 0) or integrated gradients from [PAD] embeddings."""
    import torch

    device = next(model.parameters()).device
    ids = torch.as_tensor(item.input_ids, device=device)[None]
    embed = model.get_input_embeddings()
    with torch.no_grad():
        inputs = embed(ids)
        if steps:  # the path starts from [PAD] pieces between the text's own special tokens
            baseline = torch.where(torch.as_tensor(item.special, device=device)[None, :, None], inputs,
                                   embed(torch.full_like(ids, pad_id)))
            alphas = ((torch.arange(steps, device=device) + 0.5) / steps).to(inputs.dtype)[:, None, None]
            path = baseline + alphas * (inputs - baseline)
        else:
            baseline, path = torch.zeros_like(inputs), inputs.clone()
    path.requires_grad_(True)
    mask = torch.ones(path.shape[:2], dtype=torch.long, device=device)
    rows = []
    with torch.enable_grad():
        logits = model(inputs_embeds=path, attention_mask=mask).logits.float()
        targets = logits if task == "multilabel" else torch.log_softmax(logits, dim=-1)
        for n, label in enumerate(label_ids):
            (grad,) = torch.autograd.grad(targets[:, label].sum(), path, retain_graph=n < len(label_ids) - 1)
            rows.append((grad.float().mean(dim=0) * (inputs - baseline)[0].float()).sum(dim=-1))
    return torch.stack(rows).detach().cpu().numpy().astype(np.float64)


def word_sums(token_scores: np.ndarray, window: WindowToExplain, words: int) -> np.ndarray:
    """(labels, words) from (labels, tokens) of one sequence: each word's pieces added up; NaN for words it does
    not read."""
    scores = np.full((token_scores.shape[0], words), np.nan)
    for index, positions in window.pieces.items():
        scores[:, index] = token_scores[:, positions].sum(axis=1)
    return scores


def gradient_scores(model: Any, runner: Any, item: TextToExplain, task: str, label_ids: Sequence[int], pad_id: int,
                    steps: int) -> np.ndarray:
    """(labels, words) gradient attributions, summed over the windows each weighted by how much it moves the
    pooled logit (for multi-class, each window's own log-probability stands in for its share of the text's)."""
    if len(item.windows) == 1:
        return word_sums(token_gradients(model, item.windows[0], task, label_ids, pad_id, steps), item.windows[0],
                         len(item.words))
    logits = score_sequences(runner.logits, [window.input_ids for window in item.windows], pad_id)
    weights = item.reading.pooling_weights(logits)[:, list(label_ids)]
    total = np.zeros((len(label_ids), len(item.words)))
    seen = np.zeros(len(item.words), dtype=bool)
    for window, weight in zip(item.windows, weights, strict=True):
        seen[list(window.pieces)] = True
        if weight.any():  # under max pooling, only the windows holding a label's highest logit move it
            sums = word_sums(token_gradients(model, window, task, label_ids, pad_id, steps), window, len(item.words))
            total += weight[:, None] * np.nan_to_num(sums, nan=0.0)
    return np.where(seen, total, np.nan)


def attribute(method: str, runner: Any, item: TextToExplain, task: str, label_ids: Sequence[int],
              pad_id: int) -> np.ndarray:
    """(labels, words) attributions of `item` by `method`, with the runner that predicts."""
    if method == "occlusion":
        return occlusion(runner.logits, item, task, label_ids, pad_id)
    if method not in GRADIENT_METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    model = getattr(runner, "model", None)
    if model is None or runner.quantized:
        raise ValueError(f"{method} needs gradients: the torch backend without int8 quantization; "
                         "method='occlusion' works with every backend")
    steps = IG_STEPS if method == "integrated_gradients" else 0
    return gradient_scores(model, runner, item, task, label_ids, pad_id, steps)


def blend_word_scores(member_scores: Mapping[str, np.ndarray],
                      weights: Mapping[str, float | Sequence[float] | np.ndarray]) -> np.ndarray:
    """A blended checkpoint's word scores from its members' (hook for the lexical member, models/lexical.py).

    `member_scores`: member name -> (labels, words) scores over the same words, in log-odds units (a lexical
    member gives each word the weights of its n-grams); `weights`: member name -> one weight, or one per label.
    The blend averages the members' logits with these weights, so a word's effect on the blend is the same
    weighted average of its effects on the members (exact for occlusion of a multi-label blend). A word one
    member did not see (NaN) counts 0 there; it stays NaN only when no member saw it.
    """
    missing = set(member_scores) - set(weights)
    if missing:
        raise ValueError(f"no blend weight for member(s) {sorted(missing)}")
    total, seen = None, None
    for name, scores in member_scores.items():
        values = np.asarray(scores, dtype=np.float64)
        weight = np.asarray(weights[name], dtype=np.float64)
        weight = weight[:, None] if weight.ndim == 1 else weight
        part = weight * np.nan_to_num(values, nan=0.0)
        total = part if total is None else total + part
        seen = ~np.isnan(values) if seen is None else seen | ~np.isnan(values)
    if total is None or seen is None:
        raise ValueError("no member scores to blend")
    return np.where(seen, total, np.nan)
