"""Two training processes on this CPU (gloo) through torchrun: one checkpoint, every example counted once, one
tracked run (only the main process reports)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]


def test_two_process_run_writes_one_checkpoint_and_counts_each_example_once(tiny_bert, toxic_csv, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "task": "multilabel", "data": str(toxic_csv), "text_column": "comment_text",
        "label_columns": ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"],
        "model_name_or_path": str(tiny_bert), "epochs": 1, "batch_size": 16, "max_length": 48,
        "test_split": 0.2, "val_split": 0.2, "pooling": "mean", "eval_every": 4}))
    output_dir = tmp_path / "run"
    torchrun = Path(sys.executable).parent / "torchrun"
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = subprocess.run([str(torchrun), "--nproc_per_node", "2", "main.py", "--config", str(config),
                             "--output-dir", str(output_dir), "--report-to", "tensorboard,mlflow",
                             "--tracking-uri", tracking_uri], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "processes: 2" in result.stdout
    assert sorted(p.name for p in output_dir.iterdir() if not p.name.startswith(".")) == [
        "bert-classifier", "checkpoint", "curves.png", "data_report.json", "eval_report.html", "eval_report.json",
        "metrics.jsonl", "recipe.json", "states", "tracking.json"]
    # only the main process reports: one MLflow run, and TensorBoard's writers of training and of evaluation
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("bert-classifier")
    assert experiment is not None and experiment.artifact_location == str(tmp_path / "mlruns")  # beside the database
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["run.processes"] == "2"
    assert len([p for p in (output_dir / "bert-classifier").iterdir() if p.name.startswith("events.")]) == 2
    metrics = json.loads((output_dir / "checkpoint" / "metrics.json").read_text())
    # 256 training rows in batches of 16 shared by 2 processes: 8 optimizer steps, not 16
    assert metrics["steps"] == 8
    assert metrics["validation"]["examples"] == metrics["validation_rows"] == 64
    log = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log] == [4, 8]  # written once, by the main process
    report = json.loads((output_dir / "eval_report.json").read_text())
    assert report["metrics"]["examples"] == 80
    assert run.data.metrics["test/mean_roc_auc"] == pytest.approx(report["metrics"]["mean_roc_auc"])
    # one point per optimizer step, the loss averaged over both processes
    assert [p.step for p in client.get_metric_history(run.info.run_id, "train/loss")] == list(range(1, 9))
