"""The rows export measures and calibrates on, stored in the checkpoint at training's finish (EXPORT_ROWS_FILE):
so that an export needs the checkpoint only, not the training data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

from models.lexical import LexicalModel
from utils.checkpoint.contract import LEXICAL, CheckpointFolder
from utils.checkpoint.rows import ExportRows
from utils.data.readers import LabeledTexts
from utils.inference.reading import Reading
from utils.inference.tokens import pad_token_id

MEASURED_ROWS = 2000  # validation rows export scores per variant at most (a seeded sample of larger splits) ...
MEASURED_SEQUENCES = 2000  # ... and fewer where their windows would make more sequences than this (a long
MIN_MEASURED_ROWS = 100  # text's windows cost it in four passes of each graph), but never fewer rows than this
CALIBRATION_ROWS = 256  # training rows static quantization sees: more moved its ranges by under 1%


def measured_rows(sequences_per_text: float, sequences: int = MEASURED_SEQUENCES) -> int:
    """Validation rows export measures when each makes this many sequences (windows) on average and the
    measurement may score `sequences` of them."""
    return max(MIN_MEASURED_ROWS, min(MEASURED_ROWS, int(sequences / max(1.0, sequences_per_text))))


def write_export_rows(checkpoint: str | Path, validation: LabeledTexts, train: LabeledTexts,
                      most_sequences: int = MEASURED_SEQUENCES) -> Path:
    """Store in the written checkpoint the token ids of its validation rows (a seeded sample of at most
    `measured_rows`, within `most_sequences` sequences) with their labels, and of CALIBRATION_ROWS training rows; read
    as serving reads them (cut, or in windows), with the checkpoint's own tokenizer and reading."""
    folder = CheckpointFolder(checkpoint)
    info = folder.info
    tokenizer = AutoTokenizer.from_pretrained(folder.path)
    reading = Reading.of(info)
    windows = reading.encode(tokenizer, validation.texts).windows_per_text
    most = measured_rows(float(windows.mean()) if len(windows) else 1.0, most_sequences)
    if len(validation) > most:
        validation = validation.subset(np.sort(np.random.default_rng(0).permutation(len(validation))[:most]))
    sequences = reading.encode(tokenizer, validation.texts)
    calibration = [train.texts[i] for i in np.random.default_rng(0).permutation(len(train))[:CALIBRATION_ROWS]]
    lexical = LexicalModel.load(folder.path).scores(validation.texts) if LEXICAL in info.members else None
    cut = Reading(info.max_length, info.truncation)
    rows = ExportRows(validation_ids=sequences.input_ids, labels=validation.labels, lexical_scores=lexical,
                      calibration_ids=cut.encode(tokenizer, calibration).input_ids,
                      pad_id=pad_token_id(tokenizer), max_length=info.max_length, truncation=info.truncation,
                      validation_owner=sequences.owner)
    return rows.save(folder.path)
