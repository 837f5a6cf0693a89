"""Writing files and folders so that a crash leaves the old version or the new one, never a mix."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from utils.checkpoint.errors import DiskFullError, UnwritableError


def output_folder(folder: Path) -> Path:
    """`folder`, created with its parents where missing; one that cannot be is the user's to fix, said so."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UnwritableError(f"cannot create the output folder {folder}: {error.strerror}") from error
    return folder


@contextlib.contextmanager
def staged_file(target: Path, what: str = "file") -> Iterator[Path]:
    """A temporary sibling of `target` to write; renamed onto `target` only when the block ends cleanly.

    A full disk is reported as such, naming `what` and saying that the partial file is gone.
    """
    output_folder(target.parent)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(handle)
    partial = Path(name)
    try:
        yield partial
        _fsync(partial)  # a full disk can surface only here, on file systems that allocate late
        os.replace(partial, target)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            kept = "the previous version is kept" if target.exists() else "no output was written"
            raise DiskFullError(errno.ENOSPC, f"disk full while writing the {what} {target}; the partial file is "
                                              f"removed and {kept}; free space and run again") from error
        raise
    finally:
        partial.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_folder(target: Path, what: str = "folder") -> Iterator[Path]:
    """A temporary sibling folder to fill; swapped into `target`'s place only when the block ends cleanly.

    A full disk is reported as such, naming `what` and saying that the previous version is kept.
    """
    output_folder(target.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
        for path in staging.rglob("*"):
            if path.is_file():
                _fsync(path)
        replace_folder(staging, target)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise DiskFullError(errno.ENOSPC, f"disk full while writing the {what} {target}; the previous version "
                                              "is kept; free space and run again") from error
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _exchange(first: Path, second: Path) -> bool:
    """Swap two folders in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, bytes(first), at_fdcwd, bytes(second), rename_exchange) == 0


def replace_folder(new: Path, target: Path) -> None:
    """Put `new` at `target` so that `target` is at every moment either the old folder or the new one."""
    if not target.exists():
        os.replace(new, target)
        return
    if _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # `new` now holds the previous version
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def sha256_file(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
