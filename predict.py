"""Predicting from the command line: `--text` strings to JSON lines, or a file (CSV/TSV/TXT/JSONL/XLSX/Parquet,
read as training reads it) scored in chunks into CSV (the input's encoding and delimiter), JSONL or Parquet.

    python main.py --mode predict --checkpoint DIR --text "first text" --text "second"
    python main.py --mode predict --checkpoint DIR --input comments.csv --output scored.csv
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from inferer import ModelInferer
from utils.checkpoint.atomic import staged_file
from utils.checkpoint.errors import UserError
from utils.config import Config
from utils.data.files import DataError, FileReading, find_columns, iter_frames, open_file

CHUNK_ROWS = 4096  # rows read, scored and written at a time: memory stays flat whatever the file's size
OUTPUT_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
LABEL_SEPARATOR = "|"


def run(config: Config, checkpoint: str | Path) -> None:
    """`--mode predict` on one process (main.py sends `--engine ray` to predict_ray.py, which reuses this
    module's scoring of a chunk)."""
    if bool(config.text) == bool(config.input):
        raise UserError("--mode predict needs --text (repeatable) or --input FILE --output FILE, one of the two")
    if config.input and not config.output:
        raise UserError("--input needs --output FILE (.csv, .jsonl or .parquet) for the scored rows")
    if config.output:
        output_format(Path(config.output))
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    inferer = ModelInferer(checkpoint, quantize=config.quantize, precision=config.precision, backend=config.backend,
                           **config.reading_overrides())
    print(inferer.backend_choice.line(), file=sys.stderr)  # the same choice as the server's for this checkpoint
    if config.text:
        for text, prediction in zip(config.text, inferer.predict_batch(config.text), strict=True):
            print(json.dumps({"text": text} | prediction, ensure_ascii=False))
        return
    column = config.text_column or inferer.info.text_column or "text"
    reading = open_file(str(config.input), config.encoding, config.delimiter, config.sheet)
    rows = predict_file(inferer, reading, Path(str(config.output)), column, batch_size=config.eval_batch_size)
    print(f"scored {rows} rows of {config.input} (text column '{column}') into {config.output}", file=sys.stderr)


def output_format(path: Path) -> str:
    fmt = OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"{path}: unknown output type '{path.suffix}' (expected .csv, .jsonl or .parquet)")
    return fmt


def predict_file(inferer: ModelInferer, source: Path | FileReading, target: Path, text_column: str,
                 chunk_rows: int = CHUNK_ROWS, batch_size: int = 64) -> int:
    """Score every row of `source` into `target`: the input columns, a `score_<label>` column per label and
    `labels` (CSV: joined with "|", in the input's encoding and delimiter when it was CSV; JSONL and Parquet: a
    list). Written to a temporary file, renamed when complete: a failure (a bad row, a full disk) leaves no
    partial output, and a previous `target` as it was."""
    reading = source if isinstance(source, FileReading) else open_file(source)
    fmt = output_format(target)
    if reading.path.resolve() == target.resolve():
        raise UserError(f"{target}: the output would overwrite the input")
    rows, columns = 0, None
    with staged_file(target, "predictions") as partial, chunk_writer(partial, fmt, reading) as write, \
            tqdm(unit=" rows", desc="predict") as bar:
        for frame in read_chunks(reading, chunk_rows):
            texts = chunk_texts(frame, text_column, reading.path, first_row=rows + 1)
            if fmt != "jsonl":  # one header for the whole file: JSONL input may bring new keys later
                columns = list(frame.columns) if columns is None else columns
                frame = same_columns(frame, columns, reading.path, first_row=rows + 1)
            write(scored_frame(frame, inferer.predict_batch(texts, batch_size=batch_size), inferer), rows == 0)
            rows += len(frame)
            bar.update(len(frame))
        if rows == 0:
            raise DataError(f"{reading.path}: no rows")
    return rows


def read_chunks(reading: FileReading, chunk_rows: int) -> Iterator[pd.DataFrame]:
    for frame in iter_frames(reading, chunksize=chunk_rows):
        if len(frame):
            yield frame


def chunk_texts(frame: pd.DataFrame, column: str, path: Path, first_row: int) -> list[str]:
    """The text column of one chunk (its header matched ignoring case and spaces); a value that is not text names
    its row (1 = first data row)."""
    column = find_columns(frame, [column], path)[0]
    texts = frame[column].tolist()
    for offset, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(f"{path}: row {first_row + offset}, column '{column}': expected text, got {text!r}")
    return texts


def same_columns(frame: pd.DataFrame, columns: list[str], path: Path, first_row: int) -> pd.DataFrame:
    """The chunk with the first chunk's columns (absent ones empty); a column first seen later is an error."""
    for column in frame.columns:
        if column not in columns:
            row = first_row + int(frame[column].notna().to_numpy().argmax())
            raise DataError(f"{path}: row {row}, column '{column}': not in the earlier rows, so a CSV output has no "
                            "column for it; write .jsonl instead (each record keeps its own keys)")
    return frame.reindex(columns=columns)


def scored_frame(frame: pd.DataFrame, predictions: list[dict], inferer: ModelInferer) -> pd.DataFrame:
    """The chunk with the prediction columns added; an input column of the same name is kept as `<name>_input`."""
    added = {f"score_{name}": [p["scores"][name] for p in predictions] for name in inferer.label_names}
    added["labels"] = [p["labels"] for p in predictions]
    added["truncated"] = [p["truncated"] for p in predictions]
    if inferer.rules.none_rule is not None:
        added["none_of_these"] = [p["none_of_these"] for p in predictions]
        added["none_score"] = [p["none_score"] for p in predictions]
    clashes = {c: f"{c}_input" for c in frame.columns if c in added}
    return pd.concat([frame.rename(columns=clashes).reset_index(drop=True), pd.DataFrame(added)], axis=1)


@contextmanager
def chunk_writer(partial: Path, fmt: str, reading: FileReading) -> Iterator[Any]:
    """A function writing one scored chunk (and, first, the header) to `partial` in `fmt`; CSV keeps the input's
    encoding and delimiter where the input was delimited text."""
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        writer: list[Any] = []

        def write_parquet(frame: pd.DataFrame, first: bool) -> None:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if not writer:
                writer.append(pq.ParquetWriter(partial, table.schema))
            writer[0].write_table(table.cast(writer[0].schema))

        try:
            yield write_parquet
        finally:
            if writer:
                writer[0].close()
        return
    delimited = reading.format in ("csv", "tsv")
    encoding = reading.encoding if delimited and fmt == "csv" else "utf-8"
    with partial.open("w", encoding=encoding, newline="") as out:
        yield lambda frame, first: write_chunk(frame, out, fmt, first,
                                               reading.delimiter if delimited else ",")


def write_chunk(frame: pd.DataFrame, out, fmt: str, header: bool, delimiter: str = ",") -> None:
    if fmt == "csv":
        frame = frame.assign(labels=[LABEL_SEPARATOR.join(labels) for labels in frame["labels"]])
        frame.to_csv(out, header=header, index=False, sep=delimiter)
    else:
        for record in frame.to_dict(orient="records"):
            # A key another row has but this one lacks comes back as NaN: leave it out, as in the input.
            record = {k: v for k, v in record.items() if not (isinstance(v, float) and v != v)}
            out.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
