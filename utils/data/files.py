"""Opening a user's file as data frames: its format, encoding and delimiter found (or given), every path alike."""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from utils.checkpoint.errors import UserError


class DataError(UserError):
    """A problem with an input file, naming where it is."""


SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".tsv": "tsv", ".tab": "tsv", ".csv": "csv",
            ".xlsx": "xlsx", ".parquet": "parquet"}
DELIMITERS = ",;\t|"
SAMPLE_BYTES = 1 << 20  # what the encoding and the delimiter are told from
NUMBERS = re.compile(r"\s*-?\d+(\.\d+)?(\s*[,;|]\s*-?\d+(\.\d+)?)*\s*")  # a number or a list of numbers
SENTENCE_CHARS, SENTENCE_WORDS = 40, 5  # a first-row cell this long reads as a text, not a column's name
HEADER_CHECK_ROWS = 200  # the rows below the first that its cells are compared with
# The longest text a file may hold: 10 million characters (about 1.7 million words, several long novels; up to
# 40 MB of UTF-8), kept whole. Longer is rather an unclosed quote that joined the rows after it into one field, and
# would hold the whole file in one string.
MAX_TEXT_CHARS = 10_000_000
SAMPLE_LINES = 3  # line breaks a sample holds at least: the header and a record or two whole beyond a long one
SAMPLE_MAX_BYTES = SAMPLE_BYTES + 4 * MAX_TEXT_CHARS  # the most read on past the first megabyte: a longest text
# Python's csv module, which reads the samples, stops at fields of 131,072 characters by default; it is raised to
# the longest sample (41 MB), a bounded value that fits a C long on every platform (sys.maxsize overflows it on
# 64-bit Windows). pandas' C parser, which reads whole files, has no such limit.
CSV_FIELD_LIMIT = SAMPLE_MAX_BYTES


@dataclass(frozen=True)
class FileReading:
    """How a file is read: its format, and for text files the encoding and delimiter (found or given)."""

    path: Path
    format: str  # csv, tsv, jsonl, xlsx or parquet
    encoding: str | None = None
    delimiter: str | None = None
    sheet: str | None = None
    found: tuple[str, ...] = ()  # what was detected rather than given, for the report
    header: bool = True  # False: the first row is data, and the columns are named column_1, column_2, ...

    def describe(self) -> dict[str, Any]:
        return {"file": str(self.path), "format": self.format, "encoding": self.encoding,
                "delimiter": self.delimiter, "sheet": self.sheet, "header": self.header,
                "detected": list(self.found)}


def open_file(path: str | Path, encoding: str | None = None, delimiter: str | None = None,
              sheet: str | None = None) -> FileReading:
    """The reading of `path`: given settings kept, the others detected from its first megabyte (the delimiter and
    header from its first records, read on past the megabyte when one holds a longer text)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    fmt = file_format(path)
    if fmt in ("xlsx", "parquet"):
        return FileReading(path, fmt, sheet=(sheet or None) if fmt == "xlsx" else None)
    found = []
    sample_bytes = path.open("rb").read(SAMPLE_BYTES)
    if encoding is None:
        encoding = detect_encoding(sample_bytes, path)
        found.append("encoding")
    else:
        check_encoding(encoding)
    if fmt == "jsonl":
        return FileReading(path, fmt, encoding, found=tuple(found))
    sample_bytes, truncated = records_sample(path, sample_bytes)
    sample = sample_bytes.decode(encoding, errors="replace")
    if delimiter is None:
        delimiter = "\t" if fmt == "tsv" else sniff_delimiter(sample, truncated)
        found.append("delimiter")
    elif len(delimiter.encode("unicode_escape").decode()) > 2 or not delimiter:
        raise DataError(f"--delimiter {delimiter!r}: expected one character")
    delimiter = "\t" if delimiter == "\\t" else delimiter
    header = has_header(sample, delimiter, fmt, truncated)
    return FileReading(path, fmt, encoding, delimiter, found=(*found, "header"), header=header)


def records_sample(path: Path, head: bytes) -> tuple[bytes, bool]:
    """The file's first megabyte `head`, read on while it holds under SAMPLE_LINES line breaks (a record longer
    than the megabyte: a long text), to SAMPLE_MAX_BYTES at most; and whether the file goes on past it (its last
    record may be cut)."""
    parts, lines, size = [head], line_breaks(head), len(head)
    with path.open("rb") as file:
        file.seek(size)
        while lines < SAMPLE_LINES and size < SAMPLE_MAX_BYTES:
            more = file.read(min(SAMPLE_BYTES, SAMPLE_MAX_BYTES - size))
            if not more:
                break
            parts.append(more)
            lines, size = lines + line_breaks(more), size + len(more)
        truncated = bool(file.read(1))
    return b"".join(parts), truncated


def line_breaks(data: bytes) -> int:
    return max(data.count(b"\n"), data.count(b"\r"))  # Unix, Windows or old Mac line ends


def file_format(path: Path) -> str:
    """csv, tsv, jsonl, xlsx or parquet: by the file's suffix, or for a .txt file by its first lines."""
    suffix = path.suffix.lower()
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    if suffix == ".txt" and path.is_file():
        return sniff_format(path)
    raise DataError(f"{path}: unknown file type '{suffix}' (expected .csv, .tsv, .jsonl, .xlsx, .parquet, or a .txt "
                    "file of comma-, tab-separated values or JSON lines)")


def sniff_format(path: Path, sample_bytes: int = 65536) -> str:
    """A text file's format from its first lines: JSON objects, tab-separated (every line with the same number of
    tabs, as SemEval and many shared tasks publish them) or comma-separated."""
    with path.open(encoding="utf-8", errors="replace", newline="") as file:
        sample = file.read(sample_bytes)
    lines = [line for line in sample.splitlines()[:-1 if len(sample) == sample_bytes else None] if line.strip()]
    if not lines:
        return "csv"  # nothing to tell from; reading it reports the empty file
    if all(line.lstrip().startswith("{") for line in lines):
        return "jsonl"
    tabs = {line.count("\t") for line in lines}
    if len(tabs) == 1 and tabs != {0}:
        return "tsv"
    try:
        if csv.Sniffer().sniff("\n".join(lines), delimiters=",\t").delimiter == ",":
            return "csv"
    except csv.Error:
        pass
    if 0 not in tabs:
        return "tsv"
    raise DataError(f"{path}: cannot tell whether its columns are separated by tabs or commas; rename it .tsv or "
                    ".csv")


def detect_encoding(sample: bytes, path: Path) -> str:
    """utf-8-sig with a byte-order mark, utf-8 when the sample decodes as it, else charset-normalizer's guess."""
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)  # a character cut at the end is fine
        return "utf-8"
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    results = list(from_bytes(sample))
    if not results:
        raise DataError(f"{path}: cannot tell its text encoding; give --encoding (e.g. cp1252, latin-1)")
    # Accented Latin text fits several code pages equally well (cp1250, cp1252, cp1257 all decode 0xfc as u
    # umlaut); among those tied with the best, Windows' Western one is what spreadsheets export most.
    tied = [r.encoding for r in results if (r.chaos, r.coherence) == (results[0].chaos, results[0].coherence)]
    return codecs.lookup(next((e for e in ("cp1252", "latin_1") if e in tied), results[0].encoding)).name


def check_encoding(encoding: str) -> None:
    try:
        codecs.lookup(encoding)
    except LookupError as error:
        raise DataError(f"--encoding {encoding!r}: not an encoding Python knows") from error


def sniff_delimiter(sample: str, truncated: bool) -> str:
    """The one of , ; tab | that cuts every record of the sample into the same number (>1) of fields; several
    such: csv.Sniffer's choice among them, else the one giving most fields; none: a comma (one column)."""
    fields: dict[str, int] = {}
    for delimiter in DELIMITERS:
        rows = csv_records(sample, delimiter)
        rows = rows[:-1] if truncated and len(rows) > 1 else rows  # the last record may be cut
        counts = {len(row) for row in rows}
        if len(counts) == 1 and counts != {1}:
            fields[delimiter] = counts.pop()
    if len(fields) > 1:
        try:
            sniffed = csv.Sniffer().sniff(sample[:65536], delimiters="".join(fields)).delimiter
            if sniffed in fields:
                return sniffed
        except csv.Error:
            pass
    return max(fields, key=lambda d: fields[d]) if fields else ","


def csv_records(sample: str, delimiter: str, quoting: int = csv.QUOTE_MINIMAL) -> list[list[str]]:
    """The sample's non-empty records, a field as long as the sample allowed (the limit is the csv module's, for
    the whole process: it is only ever raised, never lowered below what another caller set)."""
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    return [row for row in csv.reader(io.StringIO(sample), delimiter=delimiter, quoting=quoting) if row]


def has_header(sample: str, delimiter: str, fmt: str, truncated: bool) -> bool:
    """Whether the first record names the columns. It does not when one of its cells reads as data: a number or
    a list of numbers, a sentence, or a value its column holds again in the rows below (a class name)."""
    quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL  # as the file is read
    rows = csv_records(sample, delimiter, quoting)
    rows = rows[:-1] if truncated and len(rows) > 2 else rows  # the last record may be cut
    if not rows or (len(rows) < 2 and not truncated):  # a record over the sample's megabyte is checked alone
        return True
    below = rows[1:HEADER_CHECK_ROWS + 1]
    for j, cell in enumerate(rows[0]):
        sentence = len(cell) >= SENTENCE_CHARS and len(cell.split()) >= SENTENCE_WORDS
        repeated = bool(cell.strip()) and sum(len(row) > j and row[j] == cell for row in below) >= 2
        if NUMBERS.fullmatch(cell) or sentence or repeated:
            return False
    return True


def iter_frames(reading: FileReading, chunksize: int | None = None,
                column_names: Sequence[str] | None = None) -> Iterator[pd.DataFrame]:
    """The file as data frames of raw values (text stays text: no NA guessing), in chunks if asked."""
    path, fmt = reading.path, reading.format
    try:
        if fmt == "parquet":
            yield from parquet_frames(path, chunksize)
        elif fmt == "xlsx":
            frame = pd.read_excel(path, sheet_name=sheet_name(reading), dtype=object, keep_default_na=False)
            frame = frame.map(lambda v: v.item() if hasattr(v, "item") else v)
            yield from chunks(frame, chunksize)
        elif fmt == "jsonl":
            result = pd.read_json(path, lines=True, dtype=False, chunksize=chunksize, encoding=reading.encoding)
            yield from (result if chunksize else [result])
        else:
            yield from delimited_frames(reading, chunksize, column_names)
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not valid {reading.encoding} at byte {error.start} (read as {reading.encoding}); "
                        "give --encoding") from error
    except (ValueError, pd.errors.ParserError, OSError) as error:
        if isinstance(error, DataError):
            raise
        how = {"parquet": "read as Parquet", "xlsx": "read as XLSX"}.get(fmt, f"parsed as {fmt.upper()}")
        raise DataError(f"{path}: cannot be {how}: {error}") from error


def delimited_frames(reading: FileReading, chunksize: int | None,
                     column_names: Sequence[str] | None) -> Iterator[pd.DataFrame]:
    options: dict[str, Any] = {"sep": reading.delimiter or ",", "dtype": str, "keep_default_na": False,
                               "chunksize": chunksize, "encoding": reading.encoding}
    if column_names:
        options.update(header=None, names=list(column_names))
    elif not reading.header:
        options["header"] = None
    if reading.format == "tsv":
        options["quoting"] = 3  # csv.QUOTE_NONE: GoEmotions-style TSV carries raw quotes in text
    result = pd.read_csv(reading.path, **options)
    for frame in result if chunksize else [result]:
        if options.get("header", 0) is None and not column_names:
            frame.columns = [f"column_{index + 1}" for index in range(frame.shape[1])]
        yield frame


def sheet_name(reading: FileReading) -> str | int:
    """The sheet asked for, else the first; a missing one lists those the workbook has."""
    if reading.sheet is None:
        return 0
    from openpyxl import load_workbook

    names = load_workbook(reading.path, read_only=True).sheetnames
    if reading.sheet not in names:
        raise DataError(f"{reading.path}: no sheet {reading.sheet!r}; it has {', '.join(map(repr, names))}")
    return reading.sheet


def parquet_frames(path: Path, chunksize: int | None) -> Iterator[pd.DataFrame]:
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install -r requirements_ray.txt)") from error
    if chunksize:
        yield from (batch.to_pandas() for batch in pq.ParquetFile(path).iter_batches(batch_size=chunksize))
    else:
        yield pq.read_table(path).to_pandas()


def chunks(frame: pd.DataFrame, chunksize: int | None) -> Iterator[pd.DataFrame]:
    if not chunksize:
        yield frame
        return
    for start in range(0, max(len(frame), 1), chunksize):
        yield frame.iloc[start:start + chunksize].reset_index(drop=True)


def canonical(name: Any) -> str:
    """A header as it is matched: case and surrounding spaces ignored."""
    return str(name).strip().casefold()


def find_columns(frame: pd.DataFrame, wanted: Sequence[str], path: Path) -> list[str]:
    """The frame's own headers for `wanted` names, matched ignoring case and surrounding spaces."""
    exact = {str(c): str(c) for c in frame.columns}
    loose = {canonical(c): str(c) for c in frame.columns}
    found = [exact.get(name) or loose.get(canonical(name)) for name in wanted]
    missing = [name for name, column in zip(wanted, found, strict=True) if column is None]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(map(repr, missing))}; "
                        f"the file has {', '.join(map(repr, frame.columns))}")
    return [str(column) for column in found]
