"""Exporting a checkpoint to ONNX Runtime graphs, then measuring each one against PyTorch on the validation rows the
checkpoint holds.

    python main.py --mode export --checkpoint DIR [--onnx-static-int8] [--output FILE]

Writes the graphs into DIR (utils/export/graphs.py: plain, int8, fused, fused int8 and, with --onnx-static-int8,
static int8 calibrated on training rows; the int8 weights 7-bit where the CPU needs them, `choose_int8`, or as
--onnx-int8-reduce-range says), then measures them (utils/export/variants.py) on the token ids of the validation
rows training stored in the checkpoint (EXPORT_ROWS_FILE) and writes variants.json (VariantsReport): the speed and
metric cost of each, which BACKEND=auto chooses from, and the int8 choice. A checkpoint written before training
stored those rows gets them from the data its training_config.json names, stored then; where that data is gone too,
the graphs are written unmeasured (BACKEND=auto serves torch) and static int8 is skipped. `--output FILE` writes the
graphs beside FILE instead (FILE, then its `.int8.onnx`, `.fused.onnx`, ... twins) and measures nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

from utils.checkpoint.contract import EXPORT_ROWS_FILE, CheckpointFolder
from utils.checkpoint.rows import ExportRows
from utils.export.graphs import CalibrationBatches, choose_int8, export_graphs, missing_engines, say
from utils.export.variants import measure_variants, report_lines

# main.py calls run and missing_engines; tests and bench/ call export_graphs
__all__ = ["export_graphs", "export_rows", "missing_engines", "run"]


def run(checkpoint: str | Path, output: str | Path | None = None, static_int8: bool = False,
        reduce_range: bool | None = None) -> None:
    """The command line's export: the graphs, then (into the checkpoint only) their measurement.

    `reduce_range` None: 7-bit int8 weights where this CPU needs them (`choose_int8`); True or False forces it."""
    started = time.time()
    int8 = choose_int8(reduce_range)
    say(f"int8 weights {7 if int8.reduce_range else 8}-bit: {int8.reason}")
    rows = export_rows(checkpoint) if output is None else None
    calibration = None
    if static_int8 and rows is not None and rows.calibration_ids:
        calibration = CalibrationBatches(rows.calibration_ids, rows.pad_id)
    elif static_int8:
        say("static int8 needs the training rows to calibrate on; skipped")
    written = export_graphs(checkpoint, output, calibration=calibration, int8=int8)
    for path in written.values():
        say(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if rows is not None and len(rows):
        report = measure_variants(checkpoint, rows, list(written), int8=int8)
        path = CheckpointFolder(checkpoint).write_variants(report)
        for line in report_lines(report):
            say(line)
        say(f"wrote {path}")
    say(f"export took {time.time() - started:.0f} s")


def export_rows(checkpoint: str | Path) -> ExportRows | None:
    """The rows the checkpoint holds for export; for a checkpoint from before they were stored, the rows of the data
    its training_config.json names, split again as training split them and stored now; None (and why) where that
    data is gone."""
    rows = ExportRows.load(checkpoint)
    if rows is not None:
        return rows
    from utils.config import config_from_saved
    from utils.data.prepare import prepare_splits
    from utils.data.readers import DataError
    from utils.training.export_rows import write_export_rows

    say(f"{Path(checkpoint) / EXPORT_ROWS_FILE} is missing (a checkpoint written before training stored it): its "
        "rows come from the data named in training_config.json")
    settings = CheckpointFolder(checkpoint).training_config()
    try:
        splits = prepare_splits(config_from_saved(settings))
    except (DataError, OSError, ValueError, TypeError) as error:
        say(f"no validation rows to measure the graphs on ({error}): BACKEND=auto will serve torch")
        return None
    write_export_rows(checkpoint, splits.validation, splits.train)
    return ExportRows.load(checkpoint)
