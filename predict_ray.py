"""Scoring files on Ray Data: CSV/TSV/JSONL/Parquet files (one, a glob or a folder) into a folder of shards.

    python main.py --mode predict --engine ray --checkpoint DIR --input 'comments/*.parquet' --output scored \
                   --batch-size 1024                      # rows per Ray batch (the training default, 32, pads)
    python main.py --mode predict --engine ray --ray-address HEAD:6379 --checkpoint DIR --input /shared/in \
                   --output /shared/scored.csv            # a folder of CSV shards; any other name: Parquet

Each input file is read in chunks by a Ray task (the parsing and checks of predict.py), every row tagged with its
file and row number; a pool of actors, each loading the checkpoint once through ModelInferer, scores the rows; Ray
writes the shards into a temporary sibling folder, renamed to --output once every input row is found there
exactly once.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil
import sys
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import ray
import ray.exceptions
import ray.job_config
from ray.data import Datasink
from ray.data.block import BlockAccessor
from ray.exceptions import UserCodeException

from utils.checkpoint.atomic import output_folder
from utils.checkpoint.contract import CheckpointFolder
from utils.checkpoint.errors import MissingFileError, UserError
from utils.data.files import DataError, find_columns, iter_frames, open_file
from utils.inference.backends import AUTO, backend_for

if TYPE_CHECKING:
    from utils.config import Config

# Ray's read and write workers import this module: torch and transformers are imported only where the model is
# (the Scorer actors and the driver), which spares each of those workers seconds of start-up.

ROOT = Path(__file__).resolve().parent
ROW_FILE, ROW_NUMBER = "source_file", "source_row"  # the row id: input file and data row (1 = first)
INPUT_SUFFIXES = (".csv", ".tsv", ".txt", ".jsonl", ".ndjson", ".parquet", ".xlsx")
ROWS_PER_SHARD = 100_000  # rows gathered into one output file (fewer shards than batches)
MAX_RESTARTS = 3  # a scoring actor that dies (killed, out of memory) is started again this many times,
MAX_TASK_RETRIES = 3  # and the batch it held is scored again: bounded, so a model that always crashes stops


@dataclass(frozen=True)
class ScorerSettings:
    """What every actor needs to load its ModelInferer and shape its output."""

    checkpoint: str
    text_column: str
    quantize: bool = False
    precision: str = "auto"
    backend: str = AUTO  # the driver passes the backend it chose (run); auto: each actor chooses as the server
    device: str | None = None  # None: the inferer's default (a GPU where torch sees one, unless a graph runs)
    threads: int = 1  # torch / ONNX Runtime threads, as many as the actor's CPUs
    forward_batch_size: int = 128  # texts per forward pass, sorted by length inside a Ray batch
    labels_as_text: bool = False  # CSV shards: labels joined with "|", as predict.py writes them
    encoding: str | None = None  # --encoding, --delimiter, --sheet: how every input file is read (else detected)
    delimiter: str | None = None
    sheet: str | None = None
    reading: dict[str, Any] = field(default_factory=dict)  # how long texts are read where given (else the checkpoint's)


def run(config: Config, checkpoint: str | Path) -> None:
    """`--mode predict --engine ray`: score --input into the --output folder on a local or a joined cluster."""
    if config.text or not config.input or not config.output:
        raise UserError("--engine ray scores files: give --input PATH_OR_GLOB_OR_FOLDER and --output DIR (not --text)")
    if config.cpus_per_actor < 1 or (config.num_actors is not None and config.num_actors < 1):
        raise UserError("--num-actors and --cpus-per-actor must be >= 1")
    if config.batch_size < 1 or config.eval_batch_size < 1:
        raise UserError("--batch-size and --eval-batch-size must be >= 1")
    output = Path(config.output).absolute()
    folder = CheckpointFolder(checkpoint)
    text_column = config.text_column or folder.info.text_column or "text"
    settings = ScorerSettings(
        checkpoint=str(Path(checkpoint).absolute()), text_column=text_column,
        quantize=config.quantize, precision=config.precision, backend=config.backend,
        threads=config.cpus_per_actor, forward_batch_size=config.eval_batch_size,
        labels_as_text=output_format(output) == "csv", encoding=config.encoding, delimiter=config.delimiter,
        sheet=config.sheet, reading=config.reading_overrides())
    # chosen once here, with the arguments the actors build their inferer with, so every actor of every node
    # runs the same backend
    choice = backend_for(folder, settings.backend, quantize=settings.quantize, precision=settings.precision,
                         device=settings.device)
    print(choice.line(), file=sys.stderr)
    settings = dataclasses.replace(settings, backend=choice.backend)
    files = input_files(config.input)
    check_before_start(output, settings)  # before a cluster starts, not after
    with ray_cluster(config.ray_address):
        rows = score_files(files, output, settings, num_actors=config.num_actors, batch_size=config.batch_size)
    print(f"scored {rows} rows of {len(files)} file(s) (text column '{settings.text_column}') into {output}, "
          "each row once", file=sys.stderr)


def output_format(output: Path) -> str:
    """A folder named *.csv gets CSV shards, any other Parquet shards."""
    return "csv" if output.suffix.lower() == ".csv" else "parquet"


def input_files(pattern: str) -> list[Path]:
    """The files to score: one file, the data files of a folder (recursively), or those a glob matches."""
    path = Path(pattern)
    if path.is_file():
        if path.suffix.lower() not in INPUT_SUFFIXES:
            raise DataError(f"{path}: unknown file type '{path.suffix}' (expected {', '.join(INPUT_SUFFIXES)})")
        return [path.absolute()]
    if path.is_dir():
        found = [p for p in path.rglob("*") if p.is_file() and not is_hidden(p.relative_to(path))]
    elif any(char in pattern for char in "*?["):
        found = [Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file()]
    else:
        raise DataError(f"{path}: no such file or folder")
    files = sorted(p.absolute() for p in found if p.suffix.lower() in INPUT_SUFFIXES)
    if not files:
        raise DataError(f"{pattern}: no {', '.join(INPUT_SUFFIXES)} files there")
    return files


def is_hidden(relative: Path) -> bool:
    """Dot and underscore names (.partial folders, _SUCCESS markers) are not data."""
    return any(part.startswith((".", "_")) for part in relative.parts)


@contextmanager
def ray_cluster(address: str | None) -> Iterator[None]:
    """Join the cluster at `address`, or start a local one on this machine's cores (stopped at the end).

    Usage statistics are off. Workers find this project's modules through the job's code search path, which
    assumes the project sits at the same path on every node (with the same virtual environment).
    """
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # read when the cluster starts (and by `ray start` beside it)
    if ray.is_initialized():  # a notebook or a caller that set Ray up itself keeps its session
        yield
        return
    job_config = ray.job_config.JobConfig(code_search_path=[str(ROOT)])
    if address:
        ray.init(address=address, job_config=job_config)
    else:
        # "local": a new cluster even where `ray start` left one running (ray.init() alone would join that one)
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, job_config=job_config)
    try:
        yield
    finally:
        ray.shutdown()


def score_files(files: list[Path], output: Path, settings: ScorerSettings, num_actors: int | None = None,
                batch_size: int = 1024, scorer: type | None = None) -> int:
    """Score every row of `files` into the folder `output` on the connected Ray cluster; returns the row count.

    `batch_size` rows are read, scored (one actor call, retried as a unit) at a time. The shards go to a temporary
    sibling folder that is renamed to `output` only when each input row is in it exactly once; on any error it is
    removed, so `output` never holds a partial result. `scorer` replaces the Scorer class (tests use it).
    """
    check_before_start(output, settings)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    num_actors = num_actors or max(1, cpus // settings.threads)
    if num_actors * settings.threads > cpus:
        print(f"warning: {num_actors} actors x {settings.threads} CPUs ask for more than the cluster's {cpus} "
              "CPUs; the pool waits for them (an autoscaling cluster adds nodes)", file=sys.stderr)
    partial = output.with_name(f".{output.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        dataset = scored_dataset(files, settings, num_actors, batch_size, scorer or Scorer)
        partial.mkdir(parents=True)
        try:
            dataset.write_datasink(ShardSink(partial, output_format(output)), ray_remote_args={"num_cpus": 0})
        except ray.exceptions.RayError as error:
            raise worker_error(error) from None
        rows = count_rows_once(partial, files, output_format(output))
        output_folder(output.parent)
        os.rename(partial, output)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return rows


def check_before_start(output: Path, settings: ScorerSettings) -> None:
    """An output folder that exists, or a checkpoint (or its exported graph) that does not, fails before any actor
    starts; the output is never overwritten."""
    if output.exists():
        raise UserError(f"{output}: already exists; remove it or choose another --output folder")
    folder = CheckpointFolder(settings.checkpoint)
    if settings.backend not in (AUTO, "torch") and not folder.onnx_file(settings.backend).is_file():
        raise MissingFileError(f"{settings.checkpoint}: no {folder.onnx_file(settings.backend).name}; export it "
                               f"with `python main.py --mode export --checkpoint {settings.checkpoint}`")


def scored_dataset(files: list[Path], settings: ScorerSettings, num_actors: int, batch_size: int,
                   scorer: type) -> ray.data.Dataset:
    """files -> rows tagged with their id (one read task per file) -> scored rows (an actor pool)."""
    paths = ray.data.from_items([{"path": str(p)} for p in files], override_num_blocks=len(files))
    # Reading and writing take no CPU slot: the actors hold them all, and parsing costs little beside the model.
    reading = {"encoding": settings.encoding, "delimiter": settings.delimiter, "sheet": settings.sheet}
    rows = paths.map_batches(read_file, fn_kwargs={"text_column": settings.text_column, "chunk_rows": batch_size,
                                                   "reading": reading},
                             batch_size=1, num_cpus=0,
                             compute=ray.data.TaskPoolStrategy(size=min(len(files), num_actors)))
    with warnings.catch_warnings():
        # Ray 2.60 deprecates these remote arguments with no named replacement yet; its default is unbounded.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        # batch_size=None: one call per block, so a batch never mixes rows of two files (nor their column types).
        return rows.map_batches(scorer, fn_constructor_args=(settings,), batch_size=None, batch_format="pandas",
                                compute=ray.data.ActorPoolStrategy(size=num_actors), num_cpus=settings.threads,
                                max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES)


class InputError(UserCodeException, DataError):
    """A DataError raised in a Ray task, marked as the user's: Ray Data would otherwise log an error raised while
    a generator UDF runs as a bug of its own ("please open an issue"), with its whole stack."""


def read_file(batch: dict[str, np.ndarray], text_column: str, chunk_rows: int,
              reading: dict[str, str | None] | None = None) -> Iterator[pd.DataFrame]:
    """Each file of the batch as chunks of rows with their id; a bad row or file stops the job, named."""
    for name in batch["path"]:
        path, first_row = Path(str(name)), 1
        try:
            for frame in file_chunks(path, chunk_rows, reading or {}):
                check_texts(frame, text_column, path, first_row)
                clashes = {c: f"{c}_input" for c in (ROW_FILE, ROW_NUMBER) if c in frame.columns}
                frame = frame.rename(columns=clashes).reset_index(drop=True)
                frame.insert(0, ROW_NUMBER, np.arange(first_row, first_row + len(frame), dtype=np.int64))
                frame.insert(0, ROW_FILE, str(path))
                first_row += len(frame)
                yield frame
            if first_row == 1:
                raise DataError(f"{path}: no rows")
        except DataError as error:
            raise InputError(str(error)) from None


def file_chunks(path: Path, chunk_rows: int, reading: dict[str, str | None]) -> Iterator[pd.DataFrame]:
    """Any input as predict.py and training read it (text stays text; encoding and delimiter detected unless
    given), in chunks."""
    source = open_file(path, reading.get("encoding"), reading.get("delimiter"), reading.get("sheet"))
    yield from (frame for frame in iter_frames(source, chunksize=chunk_rows) if len(frame))


def check_texts(frame: pd.DataFrame, column: str, path: Path, first_row: int) -> None:
    """predict.chunk_texts' check (empty text allowed; anything but text names its row), without its imports."""
    if first_row > 1 and column not in frame.columns:  # JSONL: a whole chunk of rows without the key
        raise DataError(f"{path}: row {first_row}, column '{column}': expected text, got no value")
    column = find_columns(frame, [column], path)[0]
    for offset, text in enumerate(frame[column].tolist()):
        if not isinstance(text, str):
            raise DataError(f"{path}: row {first_row + offset}, column '{column}': expected text, got {text!r}")


class Scorer:
    """The map_batches UDF: one ModelInferer per actor, loaded once, scoring batch after batch."""

    def __init__(self, settings: ScorerSettings) -> None:
        from transformers.utils import logging as hf_logging

        from inferer import ModelInferer

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        self.settings = settings
        self.inferer = ModelInferer(settings.checkpoint, quantize=settings.quantize, precision=settings.precision,
                                    device=settings.device, backend=settings.backend, num_threads=settings.threads,
                                    **settings.reading)

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        from predict import scored_frame

        column = find_columns(batch, [self.settings.text_column], Path("batch"))[0]  # case and spaces ignored
        predictions = self.inferer.predict_batch(batch[column].tolist(),
                                                 batch_size=self.settings.forward_batch_size)
        return arrow_table(scored_frame(batch, predictions, self.inferer), self.inferer.label_names,
                           self.settings.labels_as_text)


def arrow_table(scored: pd.DataFrame, label_names: list[str], labels_as_text: bool) -> pa.Table:
    """The scored rows with fixed types for the added columns, so every shard has the same schema for them
    (pandas would guess list<null> for a batch where no row has a label)."""
    added = {f"score_{name}": pa.float64() for name in label_names}
    added |= {"labels": pa.string() if labels_as_text else pa.list_(pa.string()), "truncated": pa.bool_()}
    if "none_score" in scored:  # a multi-class checkpoint that can answer "none of these"
        added |= {"none_of_these": pa.bool_(), "none_score": pa.float64()}
    labels = scored["labels"]
    if labels_as_text:
        from predict import LABEL_SEPARATOR

        labels = [LABEL_SEPARATOR.join(names) for names in labels]
    table = pa.Table.from_pandas(scored.drop(columns=list(added)), preserve_index=False)
    for name, kind in added.items():
        values = labels if name == "labels" else scored[name].tolist()
        table = table.append_column(pa.field(name, kind), pa.array(values, type=kind))
    return table


class ShardSink(Datasink):
    """Writes each write task's blocks (at least ROWS_PER_SHARD rows) into `folder` as shards."""

    def __init__(self, folder: Path, fmt: str) -> None:
        self.folder, self.fmt = folder, fmt

    @property
    def min_rows_per_write(self) -> int:
        return ROWS_PER_SHARD

    def write(self, blocks: Any, ctx: Any) -> int:
        tables = [BlockAccessor.for_block(block).to_arrow() for block in blocks]
        return write_shards(tables, self.folder, self.fmt, prefix=f"part-{ctx.task_idx:06d}")


def write_shards(tables: list[pa.Table], folder: Path, fmt: str, prefix: str) -> int:
    """One shard per schema among the tables (files may differ in columns or types); returns the rows written.

    Names depend only on the task and its input, and each file appears by rename, so a retried task replaces
    its shards instead of adding to them.
    """
    groups: dict[str, list[pa.Table]] = {}
    for table in tables:
        if table.num_rows:
            groups.setdefault(table.schema.to_string(), []).append(table)
    for number, group in enumerate(groups.values()):
        target = folder / f"{prefix}-{number:03d}.{fmt}"
        temporary = folder / f".{target.name}.tmp"
        if fmt == "csv":
            pa_csv.write_csv(pa.concat_tables(group), temporary)
        else:
            pq.write_table(pa.concat_tables(group), temporary)
        os.replace(temporary, target)
    return sum(table.num_rows for table in tables)


def worker_error(error: Exception) -> Exception:
    """The exception a Ray task raised (a DataError naming file, row and column), without Ray's wrapping."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, DataError | ValueError | OSError | ImportError) else error


def count_rows_once(folder: Path, files: list[Path], fmt: str) -> int:
    """Rows in the shards; each input file's rows must be 1..n, each once, or nothing is renamed into place."""
    found: dict[str, list[np.ndarray]] = {str(p): [] for p in files}
    for shard in sorted(p for p in folder.rglob("*") if p.is_file() and not is_hidden(p.relative_to(folder))):
        ids = read_row_ids(shard, fmt)
        for name, rows in ids.groupby(ROW_FILE, sort=False)[ROW_NUMBER]:
            if name not in found:
                raise RuntimeError(f"{shard}: rows of {name}, which is not an input file")
            found[name].append(rows.to_numpy())
    total = 0
    for name, parts in found.items():
        if not parts:
            raise RuntimeError(f"{name}: none of its rows is in the output, so it was not renamed into place")
        rows = np.sort(np.concatenate(parts))
        repeated = np.unique(rows[1:][rows[1:] == rows[:-1]])
        missing = np.setdiff1d(np.arange(1, rows[-1] + 1), rows)
        if len(repeated) or len(missing):
            raise RuntimeError(f"{name}: rows {missing[:5].tolist()} missing and {repeated[:5].tolist()} repeated in "
                               "the output, so it was not renamed into place")
        total += len(rows)
    return total


def read_row_ids(shard: Path, fmt: str) -> pd.DataFrame:
    if fmt == "csv":
        return pd.read_csv(shard, usecols=[ROW_FILE, ROW_NUMBER], dtype={ROW_FILE: str, ROW_NUMBER: np.int64})
    return pq.read_table(shard, columns=[ROW_FILE, ROW_NUMBER]).to_pandas()
