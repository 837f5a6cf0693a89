"""Stopping on SIGTERM / Ctrl-C: the loop saves a resumable state at the next step, on every process."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator


class StopRequest:
    """Records SIGTERM / Ctrl-C so the loop can save a resumable state at the next step and stop."""

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signal_number: int, _frame: Any) -> None:
        self.signal_number = signal_number

    def agreed(self, accelerator: Accelerator) -> bool:
        """True on every process as soon as any process was asked to stop."""
        flag = torch.tensor([1.0 if self.signal_number is not None else 0.0], device=accelerator.device)
        total = accelerator.reduce(flag, reduction="sum")
        return bool(torch.as_tensor(total).item() > 0)

    @property
    def exit_code(self) -> int:
        return 128 + (self.signal_number or signal.SIGTERM)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a state it can resume from."""

    def __init__(self, state_dir: Path, exit_code: int) -> None:
        super().__init__(f"training interrupted; a resumable state is in {state_dir}. Resume with the same "
                         "command and --resume-from-checkpoint auto")
        self.state_dir = state_dir
        self.exit_code = exit_code
