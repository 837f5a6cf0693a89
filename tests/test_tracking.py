"""--report-to: a tiny training through main.py's real flow (train, then evaluate) recorded by a real MLflow server and
by TensorBoard, and read back with their own readers; nothing tracked by default; the SQLite default without a
server; a search's pruned trial marked as ended, the next trial a run of its own; a tracking URI where MLflow cannot
record refused in a line before training."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
from accelerate import Accelerator
from conftest import TOXIC_LABELS
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import main
import train
from utils.config import Config, make_config
from utils.training.tracking import CURVE_POINTS, TRACKING_FILE, Curves

ROOT = Path(__file__).resolve().parent.parent
MLFLOW = Path(sys.executable).parent / "mlflow"
SERVER_START_SECONDS = 120  # it answers after 20 to 40 s on a quiet 2-core machine
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
pytestmark = pytest.mark.xdist_group("tracking")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tiny_args(data: Path, backbone: Path, output_dir: Path, *extra: str) -> list[str]:
    """A training of a few seconds on the toxic rows, then evaluation on its test split (no ONNX export)."""
    return ["--task", "multilabel", "--data", str(data), "--text-column", "comment_text", "--label-columns",
            ",".join(TOXIC_LABELS), "--model-name-or-path", str(backbone), "--output-dir", str(output_dir),
            "--epochs", "1", "--batch-size", "16", "--max-length", "32", "--learning-rate", "1e-3",
            "--test-split", "0.2", "--val-split", "0.2", "--pooling", "cls", "--freeze-layers", "0", "--blend", "none",
            "--long-texts", "truncate", "--eval-every", "4", "--export-onnx", "false", *extra]


@pytest.fixture(scope="module", autouse=True)
def mlflow_server_process(tmp_path_factory) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    """`mlflow server` on a SQLite database, started first so that it boots while the tests without it run."""
    folder = tmp_path_factory.mktemp("mlflow_server")
    uri, log = f"http://127.0.0.1:{free_port()}", folder / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen([str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{folder / 'm.db'}",
                                    "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1",
                                    "--port", uri.rsplit(":", 1)[1], "--workers", "1"],
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process, uri, log
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # its group: uvicorn and its job runner; it keeps nothing to save
        process.wait()


@pytest.fixture(scope="module")
def mlflow_server(mlflow_server_process) -> str:
    """The server's URL once /health answers."""
    process, uri, log = mlflow_server_process
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, f"mlflow server exited with {process.returncode}:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=5) as answer:
                if answer.status == 200:
                    return uri
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"mlflow server: no answer on /health after {SERVER_START_SECONDS} s:\n"
                         f"{log.read_text()[-3000:]}")


def test_by_default_nothing_is_tracked_imported_or_written(tmp_path, tiny_bert, toxic_csv):
    script = ("import json, sys; import main; code = main.main(sys.argv[1:]); "
              "print(json.dumps({'code': code, 'imported': sorted(m for m in sys.modules "
              "if m.split('.')[0] in ('mlflow', 'tensorboard') or m == 'torch.utils.tensorboard')}))")
    output_dir = tmp_path / "run"
    args = tiny_args(toxic_csv, tiny_bert, output_dir, "--max-train-samples", "64")
    result = subprocess.run([sys.executable, "-c", script, *args],
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"code": 0, "imported": []}
    assert (output_dir / "eval_report.json").is_file()  # it trained and evaluated
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no mlflow.db in the working folder
    assert not (output_dir / TRACKING_FILE).exists() and not (output_dir / "bert-classifier").exists()


@pytest.mark.parametrize("where", ["a closed port", "a folder"])
def test_a_tracking_uri_where_mlflow_cannot_record_is_refused_in_a_line_before_training(
        where, tmp_path, tiny_bert, toxic_csv, capsys):
    uri = f"http://127.0.0.1:{free_port()}" if where == "a closed port" else f"sqlite:///{tmp_path}"
    started = time.monotonic()
    code = main.main(tiny_args(toxic_csv, tiny_bert, tmp_path / "run", "--report-to", "mlflow", "--tracking-uri", uri))
    errors = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert errors[-1].startswith(f"error: --tracking-uri {uri}: MLflow cannot record there (")
    assert "Traceback" not in "\n".join(errors)
    assert not (tmp_path / "run" / "checkpoint").exists() and not (tmp_path / "run" / "recipe.json").exists()
    assert time.monotonic() - started < 60  # no minutes of MLflow's retries


def test_curves_are_running_means_with_a_bounded_count_of_points(tmp_path):
    """1,000 optimizer steps of two batches each: at most CURVE_POINTS points, each the mean of the losses and grad
    norms since the one before, the learning rate as given."""
    accelerator = Accelerator(cpu=True, log_with="tensorboard", project_dir=str(tmp_path))
    accelerator.init_trackers("curves")
    curves = Curves(accelerator, total_steps=1000, steps_per_epoch=100)
    for step in range(1, 1001):
        curves.add(float(2 * step), None)  # accumulating: no optimizer step, no norm
        curves.add(float(2 * step + 1), torch.tensor(float(step)))
        curves.step(step, learning_rate=1.0 / step)
    accelerator.end_training()
    scalars = EventAccumulator(str(tmp_path / "curves")).Reload()
    loss = [(event.step, event.value) for event in scalars.Scalars("train/loss")]
    assert len(loss) == CURVE_POINTS and curves.every == 5
    assert loss[0] == (5, pytest.approx(sum(range(2, 12)) / 10))  # batches 2..11 of steps 1..5
    assert loss[-1] == (1000, pytest.approx(sum(range(1992, 2002)) / 10))
    norms = [event.value for event in scalars.Scalars("train/grad_norm")]
    assert norms[0] == pytest.approx(3.0) and norms[-1] == pytest.approx(998.0)  # mean of the steps' norms
    assert [event.value for event in scalars.Scalars("train/learning_rate")][-1] == pytest.approx(1e-3)
    assert [event.value for event in scalars.Scalars("train/epoch")][-1] == pytest.approx(10.0)


def trial_config(output_dir: Path, backbone: Path, data: Path) -> Config:
    """A search trial's settings: a tiny training on conference titles, recorded in MLflow at the default URI."""
    return make_config(task="multiclass", data=str(data), text_column="Title", label_column="Conference",
                       model_name_or_path=str(backbone), output_dir=str(output_dir), epochs=1.0, batch_size=16,
                       max_length=32, max_train_samples=96, learning_rate=1e-3, test_split=0.2, val_split=0.2,
                       pooling="cls", freeze_layers=0, blend="none", long_texts="truncate", eval_every=4,
                       report_to=["mlflow"])


def test_sqlite_default_a_pruned_trial_is_marked_and_each_trial_is_a_run_of_its_own(
        tmp_path, tiny_bert, conference_csv, monkeypatch):
    """train.run as a search calls it, once a trial in a folder of its own; the hook prunes the first trial."""
    monkeypatch.chdir(tmp_path)  # the default database, sqlite:///mlflow.db, lies in the working folder

    def prune(step: int, value: float) -> None:
        raise optuna.TrialPruned(f"pruned at step {step}")

    with pytest.raises(optuna.TrialPruned):
        train.run(trial_config(tmp_path / "trial-0", tiny_bert, conference_csv), on_evaluation=prune)
    assert mlflow.active_run() is None  # not left running: the next trial can start its own
    result = train.run(trial_config(tmp_path / "trial-1", tiny_bert, conference_csv))

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bert-classifier")
    assert experiment is not None
    runs = {Path(run.data.tags["output_dir"]).name: run for run in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["trial-0", "trial-1"]
    pruned, finished = runs["trial-0"], runs["trial-1"]
    assert pruned.info.status == "FAILED" and pruned.data.tags["ended_by"] == "TrialPruned: pruned at step 4"
    assert [point.step for point in client.get_metric_history(pruned.info.run_id, "val/macro_f1")] == [4]
    assert "served_val/macro_f1" not in pruned.data.metrics
    assert finished.info.status == "FINISHED"
    assert finished.data.params["output_dir"] == str(tmp_path / "trial-1")
    assert finished.data.metrics["served_val/macro_f1"] == pytest.approx(result.best_metrics["macro_f1"])
    assert {artifact.path for artifact in client.list_artifacts(finished.info.run_id)} == {
        "recipe.json", "data_report.json", "metrics.jsonl"}  # training's files (no evaluation here)
    recorded = json.loads((tmp_path / "trial-1" / TRACKING_FILE).read_text())
    assert recorded["mlflow"] == {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                                  "run_id": finished.info.run_id}


# --- one training and its evaluation, recorded by the server and by TensorBoard ---------------------------


@pytest.fixture(scope="module")
def tracked_run(mlflow_server, tmp_path_factory, tiny_bert, toxic_csv) -> tuple[str, Path]:
    """`python main.py ... --report-to mlflow,tensorboard --tracking-uri SERVER`, in this process; the run folder."""
    output_dir = tmp_path_factory.mktemp("tracked") / "run"
    code = main.main(tiny_args(toxic_csv, tiny_bert, output_dir, "--report-to", "mlflow,tensorboard",
                               "--tracking-uri", mlflow_server))
    assert code == 0
    return mlflow_server, output_dir


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_the_server_holds_the_settings_the_recipe_and_every_curve(tracked_run):
    uri, output_dir = tracked_run
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("bert-classifier")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id], f"tags.output_dir = '{output_dir}'")
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert read_json(output_dir / TRACKING_FILE)["mlflow"] == {"tracking_uri": uri, "run_id": run.info.run_id}
    params, recipe = run.data.params, read_json(output_dir / "recipe.json")
    assert (params["task"], params["batch_size"], params["learning_rate"]) == ("multilabel", "16", "0.001")
    assert params["label_columns"] == ",".join(TOXIC_LABELS) and params["report_to"] == "mlflow,tensorboard"
    assert {name: params[f"recipe.{name}"] for name in recipe["values"]} == {
        name: str(value) for name, value in recipe["values"].items()}
    summary = read_json(output_dir / "checkpoint" / "metrics.json")
    steps = summary["steps"]  # 256 training rows in batches of 16
    assert steps == 16 and params["run.total_steps"] == "16" and params["run.train_rows"] == "256"

    history = {name: [(point.step, point.value) for point in client.get_metric_history(run.info.run_id, name)]
               for name in ("train/loss", "train/learning_rate", "train/grad_norm", "val/mean_roc_auc")}
    assert [step for step, _ in history["train/loss"]] == list(range(1, steps + 1))  # fewer than 200: every step
    assert all(math.isfinite(loss) and loss > 0 for _, loss in history["train/loss"])
    evaluations = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    for record in evaluations:  # one batch a step: each point is that step's batch, the loss metrics.jsonl keeps
        assert dict(history["train/loss"])[record["step"]] == pytest.approx(record["loss"], rel=1e-6)
    rates = [rate for _, rate in history["train/learning_rate"]]
    assert len(rates) == steps and max(rates) <= 1e-3 and rates[-1] == 0.0  # linear decay to zero
    assert len(history["train/grad_norm"]) == steps and all(norm > 0 for _, norm in history["train/grad_norm"])
    assert history["val/mean_roc_auc"] == [(r["step"], pytest.approx(r["val_mean_roc_auc"])) for r in evaluations]
    assert [r["step"] for r in evaluations] == [4, 8, 12, 16]
    metrics = run.data.metrics
    assert {"val/mean_pr_auc", "val/at_0.5/macro_f1", "val/per_label/threat/roc_auc"} <= set(metrics)
    assert metrics["served_val/mean_roc_auc"] == pytest.approx(summary["validation"]["mean_roc_auc"])
    assert metrics["served_val/at_tuned/macro_f1"] == pytest.approx(summary["validation"]["at_tuned"]["macro_f1"])


def test_the_server_holds_the_test_metrics_and_the_reports_of_evaluation(tracked_run, tmp_path):
    uri, output_dir = tracked_run
    client = MlflowClient(uri)
    run_id = read_json(output_dir / TRACKING_FILE)["mlflow"]["run_id"]
    run, report = client.get_run(run_id), read_json(output_dir / "eval_report.json")
    tested = report["metrics"]
    assert run.data.metrics["test/mean_roc_auc"] == pytest.approx(tested["mean_roc_auc"])
    assert run.data.metrics["test/at_tuned/macro_f1"] == pytest.approx(tested["at_tuned"]["macro_f1"])
    for label, row in tested["per_label"].items():
        assert run.data.metrics[f"test/per_label/{label}/f1_at_tuned"] == pytest.approx(row["f1_at_tuned"])
        if row["roc_auc"] is not None:
            assert run.data.metrics[f"test/per_label/{label}/roc_auc"] == pytest.approx(row["roc_auc"])
    steps = read_json(output_dir / "checkpoint" / "metrics.json")["steps"]
    assert [p.step for p in client.get_metric_history(run_id, "test/mean_roc_auc")] == [steps]

    artifacts = {artifact.path for artifact in client.list_artifacts(run_id)}
    assert {"eval_report.json", "eval_report.html", "curves.png", "data_report.json", "recipe.json",
            "metrics.jsonl"} <= artifacts
    for name in ("eval_report.json", "eval_report.html", "curves.png"):
        copy = Path(client.download_artifacts(run_id, name, str(tmp_path)))
        assert copy.read_bytes() == (output_dir / name).read_bytes()
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG_MAGIC)


def test_tensorboard_event_files_hold_the_curves_and_the_metrics(tracked_run):
    _, output_dir = tracked_run
    logdir = Path(read_json(output_dir / TRACKING_FILE)["tensorboard"]["logdir"])
    assert logdir == output_dir.resolve() / "bert-classifier"  # --experiment-name: the run folder's subfolder
    scalars = EventAccumulator(str(logdir)).Reload()
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "train/epoch", "val/mean_roc_auc",
            "served_val/mean_roc_auc", "test/mean_roc_auc", "test/per_label/toxic/roc_auc"} <= set(
        scalars.Tags()["scalars"])
    assert len(scalars.Scalars("train/loss")) == 16
    (test_point,) = scalars.Scalars("test/mean_roc_auc")
    tested = read_json(output_dir / "eval_report.json")["metrics"]
    assert (test_point.step, test_point.value) == (16, pytest.approx(tested["mean_roc_auc"], rel=1e-6))
