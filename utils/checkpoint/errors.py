"""The user's mistakes: the one error type the command line reports as a message (exit 2) instead of a traceback.

It lives in the lowest layer of utils/, so that settings, data, the checkpoint contract, training and inference can
all raise it; anything else that goes wrong is a bug and keeps its traceback."""

from __future__ import annotations


class UserError(ValueError):
    """A problem the user can fix (a flag, a setting, a file), said in one line that names it."""


# OSError first among the bases: its constructor is the one that reads (errno, message)
class MissingFileError(FileNotFoundError, UserError):
    """A file or folder named by a flag or a setting that is not there."""


class UnwritableError(OSError, UserError):
    """An output file or folder named by a flag that cannot be created (a file in its way, no permission)."""


class DiskFullError(OSError, UserError):
    """The disk filled while an output was written; the message says what is kept and to free space."""
