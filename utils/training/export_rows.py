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
from utils.inference.tokens import encode, pad_token_id

MEASURED_ROWS = 2000  # validation rows export scores per variant at most (a seeded sample of larger splits)
CALIBRATION_ROWS = 256  # training rows static quantization sees: more moved its ranges by under 1%


def write_export_rows(checkpoint: str | Path, validation: LabeledTexts, train: LabeledTexts) -> Path:
    """Store in the written checkpoint the token ids of its validation rows (a seeded sample of MEASURED_ROWS at
    most) with their labels, and of CALIBRATION_ROWS training rows; tokenized as serving tokenizes, with the
    checkpoint's own tokenizer, max length and truncation."""
    folder = CheckpointFolder(checkpoint)
    info = folder.info
    tokenizer = AutoTokenizer.from_pretrained(folder.path)
    if len(validation) > MEASURED_ROWS:
        validation = validation.subset(np.sort(np.random.default_rng(0).permutation(len(validation))[:MEASURED_ROWS]))
    calibration = [train.texts[i] for i in np.random.default_rng(0).permutation(len(train))[:CALIBRATION_ROWS]]
    lexical = LexicalModel.load(folder.path).scores(validation.texts) if LEXICAL in info.members else None
    rows = ExportRows(validation_ids=encode(tokenizer, validation.texts, info.max_length, info.truncation).input_ids,
                      labels=validation.labels, lexical_scores=lexical,
                      calibration_ids=encode(tokenizer, calibration, info.max_length, info.truncation).input_ids,
                      pad_id=pad_token_id(tokenizer), max_length=info.max_length, truncation=info.truncation)
    return rows.save(folder.path)
