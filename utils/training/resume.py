"""Resumable training state: weights, optimizer, scheduler, random states and loop position.

Tensors go to safetensors, counters to JSON; the optimizer and scheduler dictionaries (tensors, numbers and
lists only) use torch.save and are read back with `weights_only=True`, so no pickle is ever executed.
Each state is written to a temporary folder and renamed into place: a crash while writing leaves the
previous state whole.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from utils.checkpoint.atomic import staged_folder
from utils.checkpoint.errors import UserError

STATES_DIR = "states"
PROGRESS_FILE = "progress.json"


class ResumeError(UserError):
    """A training state that cannot be resumed by this run."""


@dataclass
class Progress:
    """Where the loop stands, and what it must agree on with a run that resumes it."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_value: float | None = None
    bad_evaluations: int = 0
    identity: dict[str, Any] = field(default_factory=dict)

    def record_evaluation(self, value: float) -> bool:
        """Count one evaluation; True when `value` is the best so far."""
        if self.best_value is None or value > self.best_value:
            self.best_value, self.bad_evaluations = value, 0
            return True
        self.bad_evaluations += 1
        return False

    def should_stop(self, patience: int) -> bool:
        """Early stopping: `patience` evaluations in a row without a gain (0: never)."""
        return patience > 0 and self.bad_evaluations >= patience


def run_identity(task: str, labels: list[str], backbone: str, model_type: str, pooling: str,
                 max_length: int) -> dict[str, Any]:
    """What must match between a saved state and the run resuming it."""
    return {"task": task, "labels": labels, "backbone": backbone, "model_type": model_type,
            "pooling": pooling, "max_length": max_length}


def state_dirs(output_dir: Path) -> list[Path]:
    """Complete saved states, oldest first (temporary folders of interrupted writes are skipped)."""
    folder = output_dir / STATES_DIR
    if not folder.is_dir():
        return []
    complete = [p for p in folder.glob("step-*") if (p / PROGRESS_FILE).is_file()]
    return sorted(complete, key=lambda p: int(p.name.split("-")[1]))


def find_resume_dir(spec: str, output_dir: Path) -> Path | None:
    """`auto`: the latest state in the output folder (None when there is none); else the folder named."""
    if spec == "auto":
        states = state_dirs(output_dir)
        return states[-1] if states else None
    path = Path(spec)
    if not (path / PROGRESS_FILE).is_file():
        raise ResumeError(f"{path}: not a training state folder (no {PROGRESS_FILE})")
    return path


def _cpu_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def random_states() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    np_state = np.random.get_state()
    tensors = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64))}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    py_state = random.getstate()
    meta = {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": [py_state[0], list(py_state[1]), py_state[2]]}
    return tensors, meta


def restore_random_states(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    name, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((name, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save_training_state(output_dir: Path, progress: Progress, model_state: dict[str, torch.Tensor],
                        best_state: dict[str, torch.Tensor] | None, optimizer: torch.optim.Optimizer,
                        scheduler: Any, keep_last: int) -> Path:
    """Write one state folder atomically, then drop all but the newest `keep_last` states."""
    parent = output_dir / STATES_DIR
    parent.mkdir(parents=True, exist_ok=True)
    target = parent / f"step-{progress.step:07d}"
    with staged_folder(target, "training state") as staging:
        save_file(_cpu_state(model_state), str(staging / "model.safetensors"))
        if best_state is not None:
            save_file(_cpu_state(best_state), str(staging / "best_model.safetensors"))
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        torch.save(scheduler.state_dict(), staging / "scheduler.pt")
        rng_tensors, rng_meta = random_states()
        save_file(rng_tensors, str(staging / "random_states.safetensors"))
        (staging / "random_states.json").write_text(json.dumps(rng_meta))
        (staging / PROGRESS_FILE).write_text(json.dumps(asdict(progress), indent=2))
    for old in state_dirs(output_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return target


@dataclass
class LoadedState:
    progress: Progress
    model_state: dict[str, torch.Tensor]
    best_state: dict[str, torch.Tensor] | None
    optimizer_state: dict[str, Any]
    scheduler_state: dict[str, Any]
    rng_tensors: dict[str, torch.Tensor]
    rng_meta: dict[str, Any]


def load_training_state(folder: Path, identity: dict[str, Any]) -> LoadedState:
    """Read a state folder, refusing one from a run with other labels, backbone or input settings."""
    progress = Progress(**json.loads((folder / PROGRESS_FILE).read_text()))
    differences = {k: (progress.identity.get(k), v) for k, v in identity.items() if progress.identity.get(k) != v}
    if differences:
        details = "; ".join(f"{k}: saved {old!r}, now {new!r}" for k, (old, new) in differences.items())
        raise ResumeError(f"{folder}: this state comes from an incompatible run ({details})")
    best_path = folder / "best_model.safetensors"
    return LoadedState(
        progress=progress,
        model_state=load_file(str(folder / "model.safetensors")),
        best_state=load_file(str(best_path)) if best_path.is_file() else None,
        optimizer_state=torch.load(folder / "optimizer.pt", weights_only=True),
        scheduler_state=torch.load(folder / "scheduler.pt", weights_only=True),
        rng_tensors=load_file(str(folder / "random_states.safetensors")),
        rng_meta=json.loads((folder / "random_states.json").read_text()),
    )


def check_writable(folder: Path, bytes_needed: int) -> None:
    """Fail before training when the output folder cannot be written or has too little free space."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
    except OSError as error:
        raise ResumeError(f"output folder {folder} cannot be written: {error.strerror or error}") from error
    free = shutil.disk_usage(folder).free
    if free < bytes_needed:
        raise ResumeError(f"output folder {folder} has {free / 2**20:.0f} MiB free; this run needs about "
                          f"{bytes_needed / 2**20:.0f} MiB for its checkpoint and training states")
