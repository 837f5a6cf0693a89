"""The rows export works on, as the checkpoint stores them (EXPORT_ROWS_FILE, safetensors; no pickle).

Tensors: `validation_input_ids` and `validation_lengths` (the token ids of each validation row, concatenated, and
each row's count), `validation_labels` ((N, L) 0/1 multi-label or (N,) class ids), `validation_lexical_scores`
((N, L), a blended checkpoint's TF-IDF member's scores of those rows: they need the texts, which are not stored),
`calibration_input_ids` and `calibration_lengths` (training rows, for static int8). The metadata records the format
version, the padding id, and the max length and truncation the ids were cut with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.checkpoint.atomic import staged_file
from utils.checkpoint.contract import EXPORT_ROWS_FILE, CheckpointError

ROWS_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ExportRows:
    """Token ids (special tokens included, cut to the checkpoint's max length) of the validation rows with their
    labels, and of the training rows static int8 calibrates on."""

    validation_ids: list[list[int]]
    labels: np.ndarray
    lexical_scores: np.ndarray | None  # a blend's TF-IDF member's scores of the validation rows; None without one
    calibration_ids: list[list[int]]
    pad_id: int  # the tokenizer's padding id, which batches of these rows are padded with
    max_length: int
    truncation: str
    # the validation row each sequence reads, where long rows are read in windows (several sequences a row);
    # None: one sequence a row
    validation_owner: np.ndarray | None = None

    def __len__(self) -> int:
        """The validation rows (not their sequences)."""
        return len(self.labels)

    @property
    def owner(self) -> np.ndarray:
        """The validation row each sequence reads."""
        return (self.validation_owner if self.validation_owner is not None
                else np.arange(len(self.validation_ids), dtype=np.int64))

    def save(self, folder: str | Path) -> Path:
        """Write EXPORT_ROWS_FILE into `folder` atomically; returns its path."""
        from safetensors.numpy import save_file

        tensors = {"validation_labels": np.ascontiguousarray(self.labels),
                   **ragged("validation", self.validation_ids), **ragged("calibration", self.calibration_ids)}
        if self.lexical_scores is not None:
            tensors["validation_lexical_scores"] = np.ascontiguousarray(self.lexical_scores)
        if self.validation_owner is not None:
            tensors["validation_owner"] = np.ascontiguousarray(self.validation_owner, dtype=np.int64)
        metadata = {"format_version": str(ROWS_FORMAT_VERSION), "pad_id": str(self.pad_id),
                    "max_length": str(self.max_length), "truncation": self.truncation}
        path = Path(folder) / EXPORT_ROWS_FILE
        with staged_file(path, "export rows") as partial:
            save_file(tensors, str(partial), metadata=metadata)
        return path

    @classmethod
    def load(cls, folder: str | Path) -> ExportRows | None:
        """The rows stored in `folder`; None where the checkpoint has none (written before they were stored)."""
        from safetensors import safe_open

        path = Path(folder) / EXPORT_ROWS_FILE
        if not path.is_file():
            return None
        try:
            with safe_open(path, framework="np") as stored:
                metadata = stored.metadata() or {}
                tensors = {name: stored.get_tensor(name) for name in stored.keys()}  # noqa: SIM118 (not a dict)
        except Exception as error:  # safetensors raises its own error type
            raise CheckpointError(f"{path}: not a readable safetensors file ({error}); export it again after "
                                  "deleting it, or train again") from None
        if metadata.get("format_version") != str(ROWS_FORMAT_VERSION):
            raise CheckpointError(f"{path}: format version {metadata.get('format_version')!r}, this toolkit reads "
                                  f"{ROWS_FORMAT_VERSION}")
        return cls(unragged(tensors, "validation"), tensors["validation_labels"],
                   tensors.get("validation_lexical_scores"), unragged(tensors, "calibration"),
                   int(metadata["pad_id"]), int(metadata["max_length"]), metadata["truncation"],
                   tensors.get("validation_owner"))


def ragged(name: str, rows: list[list[int]]) -> dict[str, np.ndarray]:
    """Rows of token ids of different lengths as two tensors: all ids one after the other, and each row's count."""
    lengths = np.array([len(ids) for ids in rows], dtype=np.int64)
    flat = np.fromiter((i for ids in rows for i in ids), dtype=np.int32, count=int(lengths.sum()))
    return {f"{name}_input_ids": flat, f"{name}_lengths": lengths}


def unragged(tensors: dict[str, np.ndarray], name: str) -> list[list[int]]:
    ends = np.cumsum(tensors[f"{name}_lengths"])
    return [part.tolist() for part in np.split(tensors[f"{name}_input_ids"], ends[:-1])] if len(ends) else []
