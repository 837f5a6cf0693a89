"""Recording a training with --report-to tensorboard / mlflow, through Accelerate's trackers on the main process:
its settings and the recipe's choices, the loss, learning-rate and grad-norm curves, the validation metrics, and,
after evaluation, the test metrics and the reports, in the same run. Nothing here imports a tracker unless asked."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from utils.checkpoint.errors import UserError
from utils.config import Config, TrackingArguments
from utils.training.recipe import Recipe
from utils.training.signals import TrainingInterrupted

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # in the working folder
TRACKING_FILE = "tracking.json"  # in the run folder: where its run was recorded, for evaluation to add to it
CURVE_POINTS = 200  # each training curve gets at most about this many points, however long the training
# The run folder's files a tracked run keeps (MLflow artifacts): training's, then evaluation's
TRAINING_FILES = ("recipe.json", "data_report.json", "metrics.jsonl")
EVALUATION_FILES = ("eval_report*.json", "eval_report*.html", "*.png", "data_report.json")
COUNTS = {"examples", "positives", "support"}  # numbers of a metrics mapping that are not metrics
NOT_IN_NAMES = re.compile(r"[^\w\-. :]")  # the characters MLflow refuses in a metric's name (a label's)
UNTUNED = {"at_tuned", "f1_at_tuned", "threshold"}  # during training thresholds are 0.5: these repeat "at_0.5"


class TrackingError(UserError):
    """A tracker that cannot record: not installed, or MLflow unreachable or unusable at the tracking URI."""


def trackers(settings: TrackingArguments) -> list[str]:
    """The trackers --report-to asks for ("none" is none), each checked installed; empty: no tracking at all."""
    wanted = [name for name in dict.fromkeys(settings.report_to) if name != "none"]
    for name in wanted:  # each tracker's package has the tracker's name
        if importlib.util.find_spec(name) is None:
            raise TrackingError(f"--report-to {name}: the {name} package is not installed (requirements.txt has it)")
    return wanted


def tracking_uri(settings: TrackingArguments) -> str:
    """--tracking-uri, else sqlite:///mlflow.db in the working folder; a relative SQLite path made absolute, so that
    the run folder's TRACKING_FILE says where the run is from anywhere."""
    uri = settings.tracking_uri or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def check_destination(settings: TrackingArguments) -> None:
    """With --report-to mlflow: a tracking URI where MLflow cannot record fails now, in a line, not after training."""
    if "mlflow" in trackers(settings):
        check_tracking_uri(tracking_uri(settings))


def check_tracking_uri(uri: str) -> None:
    """Ask MLflow at `uri` once, without its retries (minutes against a server that is down); a TrackingError that
    says why when it cannot answer."""
    from mlflow.tracking import MlflowClient

    try:
        if uri.startswith("sqlite:///"):  # MLflow would retry an unopenable file for 100 s
            check_sqlite_file(sqlite_path(uri))
        with environment(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10"):
            MlflowClient(uri).search_experiments(max_results=1)
    except Exception as error:  # whatever the store raises (MLflow, SQLAlchemy, the OS), the URI is the user's
        raise TrackingError(f"--tracking-uri {uri}: MLflow cannot record there ({reason(error)}); give a server "
                            "URL (http://host:5000) or a database (sqlite:///mlflow.db)") from None


def sqlite_path(uri: str) -> Path:
    """The database file of a sqlite:/// URI."""
    return Path(uri.removeprefix("sqlite:///").split("?")[0])


def check_sqlite_file(path: Path) -> None:
    """The SQLite file MLflow would write opens (its folder made as MLflow makes it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sqlite3.connect(f"file:{path}?mode=rwc", uri=True).close()


def reason(error: Exception) -> str:
    """An error's cause in a few words: the OS's ("[Errno 111] Connection refused"), else its first sentence, cut."""
    text = str(error).strip()
    found = re.search(r"\[Errno -?\d+\] [^\"')(]+", text)
    line = found.group(0).strip() if found else (text.splitlines() or [type(error).__name__])[0].split(". ")[0]
    return line if len(line) <= 200 else line[:197] + "..."


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """These environment variables set for the block, and restored after it."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# --- one training's run ----------------------------------------------------------------------------------


def start(accelerator: Accelerator, config: Config, recipe: Recipe, facts: dict[str, Any]) -> None:
    """Open the run of each tracker (a new run every call), recording the settings, the recipe's values and
    `facts` of the run (backbone, rows, ...) as parameters."""
    if not accelerator.log_with:
        return
    init_kwargs: dict[str, Any] = {}
    if "mlflow" in trackers(config) and accelerator.is_main_process:
        import mlflow

        uri = tracking_uri(config)
        mlflow.set_tracking_uri(uri)
        output_dir = Path(config.output_dir).resolve()
        init_kwargs["mlflow"] = {"run_name": output_dir.name, "tags": {"output_dir": str(output_dir)},
                                 "nested_run": mlflow.active_run() is not None}  # inside a caller's run: nested
        if uri.startswith("sqlite:///"):  # a new experiment's files beside the database, not in the working folder
            init_kwargs["mlflow"]["logging_dir"] = str(sqlite_path(uri).parent / "mlruns")
    accelerator.init_trackers(config.experiment_name, config=parameters(config, recipe, facts),
                              init_kwargs=init_kwargs)


def parameters(config: Config, recipe: Recipe, facts: dict[str, Any]) -> dict[str, Any]:
    """Every setting as given, the recipe's choices (`recipe.`) and facts of the run (`run.`), as values both
    trackers take: a list as its command-line form (a,b,c), None kept."""
    values = config.to_dict() | {f"recipe.{name}": value for name, value in recipe.values.items()}
    values |= {"recipe.budget_seconds": round(recipe.budget_seconds, 1)} | {f"run.{k}": v for k, v in facts.items()}
    return {name: ",".join(map(str, value)) if isinstance(value, list | tuple)
            else json.dumps(value) if isinstance(value, dict) else value for name, value in values.items()}


def log_metrics(accelerator: Accelerator, prefix: str, metrics: dict[str, Any], step: int,
                leave_out: set[str] | frozenset[str] = frozenset()) -> None:
    """Every number of a metrics mapping (per label too) as `prefix/name/...`, at `step`."""
    if accelerator.trackers:
        accelerator.log(flat_metrics(metrics, prefix, leave_out), step=step)


def flat_metrics(metrics: dict[str, Any], prefix: str, leave_out: set[str] | frozenset[str] = frozenset()
                 ) -> dict[str, float]:
    """The numbers of a nested mapping under slash-joined names; lists, text, None, counts and `leave_out` left out."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if key in COUNTS or key in leave_out:
            continue
        name = f"{prefix}/{NOT_IN_NAMES.sub('_', str(key))}"
        if isinstance(value, dict):
            flat |= flat_metrics(value, name, leave_out)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def finish(accelerator: Accelerator, output_dir: Path, step: int) -> None:
    """End the trackers of a training that finished: training's files kept with the MLflow run, and where the run
    is written to TRACKING_FILE, for evaluation's results to join it."""
    if not accelerator.trackers:
        return
    if accelerator.is_main_process:
        where: dict[str, Any] = {"step": step}
        for tracker in accelerator.trackers:
            if tracker.name == "mlflow":
                import mlflow

                for path in (output_dir / name for name in TRAINING_FILES):
                    if path.is_file():
                        tracker.log_artifact(str(path))
                where["mlflow"] = {"tracking_uri": mlflow.get_tracking_uri(),
                                   "run_id": tracker.tracker.info.run_id}
            elif tracker.name == "tensorboard":
                where["tensorboard"] = {"logdir": str(Path(tracker.logging_dir).resolve())}
        (output_dir / TRACKING_FILE).write_text(json.dumps(where, indent=2) + "\n")
    end(accelerator)


def end(accelerator: Accelerator, error: BaseException | None = None) -> None:
    """Close every tracker's run; after an `error`, the MLflow run is marked KILLED (a signal, Ctrl-C) or FAILED
    (anything else, a search's pruning included) with the error's name as a tag, rather than left running."""
    if accelerator.is_main_process:
        for tracker in accelerator.trackers:
            if tracker.name == "mlflow" and error is not None:
                import mlflow

                mlflow.set_tag("ended_by", f"{type(error).__name__}: {error}"[:500])
                stopped = isinstance(error, TrainingInterrupted | KeyboardInterrupt)
                mlflow.end_run(status="KILLED" if stopped else "FAILED")
            else:
                tracker.finish()
    accelerator.trackers = []  # ended: accelerator.end_training() has none left to finish


@contextmanager
def ended_on_error(accelerator: Accelerator) -> Iterator[None]:
    """The trackers ended, the MLflow run marked failed or killed, when the block raises; the error goes on."""
    try:
        yield
    except BaseException as error:
        end(accelerator, error)
        raise


class Curves:
    """The training curves, a point every few optimizer steps (at most about CURVE_POINTS): the mean loss of the
    batches since the last point over every process, the learning rate, and the mean grad norm (before clipping)."""

    def __init__(self, accelerator: Accelerator, total_steps: int, steps_per_epoch: int) -> None:
        self.accelerator, self.total_steps, self.steps_per_epoch = accelerator, total_steps, steps_per_epoch
        self.every = max(1, math.ceil(total_steps / CURVE_POINTS))
        self.loss_sum, self.batches = 0.0, 0
        self.norm_sum: torch.Tensor | float = 0.0
        self.norms = 0

    def add(self, loss: float, grad_norm: torch.Tensor | None) -> None:
        """One batch's loss, and the grad norm of the optimizer step it ended (None while accumulating)."""
        self.loss_sum, self.batches = self.loss_sum + loss, self.batches + 1
        if grad_norm is not None:  # summed as a tensor: no wait for the device at every step
            self.norm_sum, self.norms = self.norm_sum + grad_norm.detach().float(), self.norms + 1

    def step(self, step: int, learning_rate: float) -> None:
        """After optimizer step `step`: a point when one is due (every process takes part: the loss is averaged)."""
        if step % self.every and step != self.total_steps:
            return
        sums = torch.tensor([self.loss_sum, self.batches], dtype=torch.float64, device=self.accelerator.device)
        loss_sum, batches = torch.as_tensor(self.accelerator.reduce(sums, reduction="sum")).tolist()
        point = {"train/loss": loss_sum / max(batches, 1), "train/learning_rate": learning_rate,
                 "train/epoch": step / self.steps_per_epoch}
        if self.norms:
            point["train/grad_norm"] = float(self.norm_sum) / self.norms
        self.accelerator.log(point, step=step)
        self.loss_sum, self.batches, self.norm_sum, self.norms = 0.0, 0, 0.0, 0


# --- evaluation after training ---------------------------------------------------------------------------


def record_evaluation(settings: TrackingArguments, output_dir: Path, report: dict[str, Any]) -> None:
    """The test metrics of evaluation after training (per label too), and with MLflow the reports and plots of
    the run folder, added to the run that training recorded there (TRACKING_FILE); nothing without --report-to."""
    path = output_dir / TRACKING_FILE
    if not trackers(settings) or not path.is_file():
        return
    where = json.loads(path.read_text())
    metrics = flat_metrics(report["metrics"], "test")
    if "mlflow" in where:
        record_in_mlflow(where["mlflow"], metrics, where["step"], output_dir)
    if "tensorboard" in where:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(where["tensorboard"]["logdir"]) as writer:
            for name, value in metrics.items():
                writer.add_scalar(name, value, global_step=where["step"])


def record_in_mlflow(run: dict[str, str], metrics: dict[str, float], step: int, output_dir: Path) -> None:
    """Metrics and the run folder's reports into the finished MLflow run `run` (its URI and id)."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(run["tracking_uri"])
    now = int(1000 * time.time())
    batch = [Metric(name, value, now, step) for name, value in metrics.items()]
    for start_at in range(0, len(batch), 1000):  # MLflow takes at most 1,000 metrics a request
        client.log_batch(run["run_id"], metrics=batch[start_at:start_at + 1000])
    files = sorted({p for pattern in EVALUATION_FILES for p in output_dir.glob(pattern) if p.is_file()})
    for file in files:
        client.log_artifact(run["run_id"], str(file))
    client.set_terminated(run["run_id"])  # its end time now that evaluation has finished
