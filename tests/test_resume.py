"""Crash safety and resuming: real training processes killed and resumed, real checkpoint writers killed."""
# pyright: reportOptionalMemberAccess=false
# (the processes below are started with stdout/stderr=PIPE, so those streams exist)

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import built_once
from safetensors.torch import load_file

import main
from models import load_classifier

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_config(tmp_path_factory, tiny_bert, toxic_csv) -> Path:
    """A YAML config for a tiny model that trains 32 steps, evaluating every 10 and saving every 5."""
    path = tmp_path_factory.mktemp("resume") / "config.yaml"
    path.write_text(yaml.safe_dump({
        "task": "multilabel", "data": str(toxic_csv), "text_column": "comment_text",
        "label_columns": ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"],
        "model_name_or_path": str(tiny_bert), "epochs": 2, "batch_size": 16,
        "max_length": 64, "test_split": 0.2, "val_split": 0.2, "pooling": "cls", "eval_every": 10,
        "save_every": 5, "learning_rate": 1e-3, "freeze_embeddings": False,
        "export_onnx": False}))  # resuming is what is tested here; the export has its own tests
    return path


def start(config: Path, output_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "main.py", "--config", str(config), "--output-dir", str(output_dir),
                             *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_state(output_dir: Path, step: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not (output_dir / "states" / f"step-{step:07d}" / "progress.json").exists():
        assert process.poll() is None, process.stdout.read()
        assert time.time() < deadline, "training never reached the state to interrupt at"
        time.sleep(0.02)


def final_weights(output_dir: Path) -> dict:
    return load_file(str(output_dir / "checkpoint" / "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(run_config, tmp_path_factory) -> Path:
    """The run never stopped, once for the test run (the module's tests may run in either xdist worker)."""
    def build(output_dir: Path) -> Path:
        process = start(run_config, output_dir)
        assert process.wait(timeout=300) == 0, process.stdout.read()
        return output_dir

    return built_once(tmp_path_factory, "uninterrupted", build)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_to_the_same_model(sig, run_config, uninterrupted, tmp_path):
    output_dir = tmp_path / "run"
    process = start(run_config, output_dir)
    wait_for_state(output_dir, 10, process)
    process.send_signal(sig)
    code = process.wait(timeout=60)
    log = process.stdout.read()
    if sig == signal.SIGTERM:
        assert code == 128 + signal.SIGTERM
        assert "--resume-from-checkpoint auto" in log and "Traceback" not in log
    else:
        assert code == -signal.SIGKILL
    assert not (output_dir / "checkpoint").exists()

    resumed = start(run_config, output_dir, "--resume-from-checkpoint", "auto")
    assert resumed.wait(timeout=300) == 0
    assert "resuming from" in resumed.stdout.read()
    expected = json.loads((uninterrupted / "checkpoint" / "metrics.json").read_text())
    actual = json.loads((output_dir / "checkpoint" / "metrics.json").read_text())
    assert actual["steps"] == expected["steps"] == 32
    # CPU kernels are deterministic here, so resuming reproduces the run exactly (tolerance: 1e-6)
    assert actual["validation"]["mean_roc_auc"] == pytest.approx(expected["validation"]["mean_roc_auc"], abs=1e-6)
    reference, weights = final_weights(uninterrupted), final_weights(output_dir)
    assert max((reference[k] - weights[k]).abs().max().item() for k in reference) < 1e-6


def test_training_keeps_only_the_last_states(uninterrupted):
    states = sorted(p.name for p in (uninterrupted / "states").iterdir())
    assert states == ["step-0000025", "step-0000030"]


def test_resume_refuses_a_state_from_another_run(run_config, uninterrupted, tmp_path, capsys):
    state = uninterrupted / "states" / "step-0000030"
    code = main.main(["--config", str(run_config), "--output-dir", str(tmp_path), "--max-length", "32",
                      "--resume-from-checkpoint", str(state)])  # in this process: no training starts to wait for
    stderr = capsys.readouterr().err
    assert code == 2
    assert "incompatible run" in stderr and "max_length: saved 64, now 32" in stderr


def test_unwritable_output_folder_fails_before_training(run_config, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    blocker = locked / "out"
    blocker.write_text("a file where the output folder should be")
    code = main.main(["--config", str(run_config), "--output-dir", str(blocker)])
    stderr = capsys.readouterr().err
    assert code == 2
    assert f"output folder {blocker} cannot be written" in stderr
    assert "train:" not in stderr


WRITER = """
import sys
import main
from models import load_classifier
from transformers import AutoTokenizer
from utils.checkpoint.contract import CheckpointFolder, write_checkpoint
model = load_classifier(sys.argv[1])
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
info = CheckpointFolder(sys.argv[1]).info
print("ready", flush=True)
for i in range(10_000):
    write_checkpoint(sys.argv[2], model, tokenizer, info, {"round": i}, {})
"""


@pytest.mark.parametrize("delay", [0.2, 0.6])
def test_killing_a_checkpoint_writer_leaves_the_previous_checkpoint_whole(delay, multilabel_checkpoint, tmp_path):
    target = tmp_path / "checkpoint"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(multilabel_checkpoint), str(target)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert writer.stdout.readline().strip() == "ready"
    while not target.exists():
        time.sleep(0.01)
    time.sleep(delay)
    writer.kill()
    writer.wait()
    model = load_classifier(target)
    assert model.config.problem_type == "multi_label_classification"
    assert json.loads((target / "classifier.json").read_text())["task"] == "multilabel"
    reference = load_file(str(multilabel_checkpoint / "model.safetensors"))
    saved = load_file(str(target / "model.safetensors"))
    assert saved.keys() == reference.keys()
    assert all((saved[k] == reference[k]).all() for k in reference)
