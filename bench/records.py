"""What every benchmark keeps of a run: the machine it ran on, a timestamped record appended to its JSON
history in docs/results, and its plot."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[1] / "docs"
OUTPUT_DIR_ENV = "BENCH_OUTPUT_DIR"  # set by the tests, which run every benchmark at its smallest size


def results_path(name: str) -> Path:
    """Where a benchmark's JSON history lives: docs/results, or $BENCH_OUTPUT_DIR."""
    override = os.environ.get(OUTPUT_DIR_ENV)
    return Path(override) / name if override else DOCS / "results" / name


def figure_path(name: str) -> Path:
    """Where a benchmark's plot goes: docs/, or $BENCH_OUTPUT_DIR."""
    override = os.environ.get(OUTPUT_DIR_ENV)
    return Path(override) / name if override else DOCS / name


def cpu_model() -> str:
    return next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), platform.processor())


def machine(**extra: Any) -> dict[str, Any]:
    """CPU model, core count and Python version, plus what a benchmark adds (library versions, CPU flags)."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(), **extra}


def new_record(**fields: Any) -> dict[str, Any]:
    """A run's record: when it ran (UTC), the command line, then its own fields."""
    return {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": " ".join(sys.argv), **fields}


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Add the record to the JSON list at `path`, keeping every earlier run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    history = json.loads(path.read_text()) if path.is_file() else []
    path.write_text(json.dumps(history + [record], indent=2) + "\n")


def save_figure(fig: Any, title: str, path: Path) -> None:
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)


def quiet_scoring(threads: int) -> None:
    """A scoring benchmark's set-up: transformers' logging and progress bars off (its output is its table), torch
    on `threads` threads."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(threads)
