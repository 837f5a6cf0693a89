"""The page's label corrections, appended to CORRECTIONS_FILE: one JSON object a line in the plain form that
`--extra-data` reads ({"text": ..., "labels": [...]}), each line whole and on disk before the answer says saved.

Appends are atomic across gunicorn's workers (an exclusive lock on the file, one write of the whole line, then
fsync). A line cut short by a crash was never answered as saved: the next append removes it first, so the file
always reads back whole.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

TAIL_CHUNK = 1 << 16  # bytes read at a time, backwards, when looking for the end of the last whole line


class CorrectionsFull(Exception):
    """The file is at CORRECTIONS_MAX_BYTES: nothing more is appended."""


@dataclass(frozen=True)
class CorrectionsFile:
    """Where corrections go, and the size past which they are refused."""

    path: Path
    max_bytes: int

    def check(self) -> None:
        """At start-up: a ValueError naming the file when corrections could not be appended to it."""
        problem = None
        if self.path.is_dir():
            problem = "it is a folder"
        elif self.path.exists():
            problem = None if os.access(self.path, os.W_OK) else "it is not writable"
        elif not self.path.parent.is_dir():
            problem = f"its folder {self.path.parent} does not exist"
        elif not os.access(self.path.parent, os.W_OK | os.X_OK):
            problem = f"its folder {self.path.parent} is not writable"
        if problem:
            raise ValueError(f"CORRECTIONS_FILE {self.path}: cannot append corrections there: {problem}")

    def append(self, record: dict[str, Any]) -> int:
        """Appends `record` as one line; the file's size after it. OSError when the file cannot be written (then
        the file is as it was), CorrectionsFull when the line would take it past `max_bytes`."""
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        created = not self.path.exists()
        descriptor = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)  # released by close
            size = whole_lines_end(descriptor)
            if size + len(line) > self.max_bytes:
                raise CorrectionsFull
            written = os.write(descriptor, line)
            if written != len(line):  # a full disk: take the part back
                os.ftruncate(descriptor, size)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        if created:
            sync_folder(self.path.parent)
        return size + len(line)


def whole_lines_end(descriptor: int) -> int:
    """The file's size once a last line without its newline (a write a crash cut short) is removed."""
    size = os.fstat(descriptor).st_size
    if size == 0 or os.pread(descriptor, 1, size - 1) == b"\n":
        return size
    end = size
    while end > 0:  # back to the newline that ends the last whole line, or to the start
        start = max(0, end - TAIL_CHUNK)
        newline = os.pread(descriptor, end - start, start).rfind(b"\n")
        end = start + newline + 1 if newline >= 0 else start
        if newline >= 0:
            break
    os.ftruncate(descriptor, end)
    os.fsync(descriptor)
    return end


def sync_folder(folder: Path) -> None:
    """A new file's name on disk too, so that a crash cannot lose the file itself."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def correction_record(text: str, labels: list[str], model_labels: list[str] | None, checkpoint_id: str) -> dict:
    """One line of the file: what `--extra-data` reads (text, labels), then what the model said and when."""
    record: dict[str, Any] = {"text": text, "labels": labels}
    if model_labels is not None:
        record["model_labels"] = model_labels
    return record | {"checkpoint_id": checkpoint_id,
                     "saved_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")}
