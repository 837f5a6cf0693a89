"""Batches with dynamic padding, grouped by length so that little compute is spent on padding."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerBase
from transformers.trainer_pt_utils import LengthGroupedSampler

from utils.inference.tokens import pad_batch, pad_token_id


class EncodedDataset(Dataset):
    """Token ids with optional labels, one example per index."""

    def __init__(self, input_ids: list[list[int]], labels: np.ndarray | None = None) -> None:
        self.input_ids = input_ids
        self.labels = labels

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict:
        item = {"input_ids": self.input_ids[index], "index": index}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item


class PaddingCollator:
    """Pads a list of examples to the longest one and stacks labels (float for multi-label, long else)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = pad_batch([e["input_ids"] for e in examples], self.pad_id)
        batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention_mask),
                 "index": torch.tensor([e["index"] for e in examples], dtype=torch.long)}
        if "labels" in examples[0]:
            labels = np.stack([np.asarray(e["labels"]) for e in examples])
            batch["labels"] = torch.from_numpy(labels)
        return batch


def training_loader(dataset: EncodedDataset, tokenizer: PreTrainedTokenizerBase, batch_size: int,
                    generator: torch.Generator, num_workers: int = 0) -> DataLoader:
    """Shuffled batches of similar lengths (megabatches of 50 batches sorted by length, as in transformers).

    The order follows `generator`; seeding it per epoch makes any epoch's order reproducible on resume.
    """
    sampler = LengthGroupedSampler(batch_size, lengths=[len(ids) for ids in dataset.input_ids],
                                   generator=generator)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, 
                      collate_fn=PaddingCollator(pad_token_id(tokenizer)),
                      num_workers=num_workers, drop_last=False)
