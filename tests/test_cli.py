"""The command line, run as a user runs it: `python main.py ...` in a subprocess (or main.main in this process):
its help, its spellings, and what it makes of errors."""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TOXIC_LABELS, built_once

import eval as evaluation
import main
from utils.checkpoint.contract import CheckpointError
from utils.checkpoint.errors import UserError
from utils.config import Config, SettingsError, build_parser, parse_config
from utils.data.files import DataError
from utils.training.resume import ResumeError

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "main.py", *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run_config(tmp_path_factory, tiny_bert, toxic_csv) -> Path:
    path = tmp_path_factory.mktemp("cli") / "run.yaml"
    path.write_text(yaml.safe_dump({
        "task": "multilabel", "data": str(toxic_csv), "text-column": "comment_text", "label_columns": TOXIC_LABELS,
        "model_name_or_path": str(tiny_bert), "epochs": 3, "batch_size": 16, "max_length": 32,
        "max_train_samples": 64, "test_split": 0.2, "val_split": 0.2, "learning_rate": 1e-3}))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, run_config) -> tuple[Path, str]:
    """`main.py --config run.yaml --epochs 1` (train, export, evaluate), once for the test run: its folder and its
    output."""
    def build(folder: Path) -> Path:
        result = cli("--config", run_config, "--epochs", "1", "--output-dir", folder / "run")
        assert result.returncode == 0, result.stderr[-3000:]
        (folder / "stdout.txt").write_text(result.stdout)
        return folder

    folder = built_once(tmp_path_factory, "cli_run", build)
    return folder / "run", (folder / "stdout.txt").read_text()


def test_help_documents_every_setting():
    result = cli("--help", timeout=120)
    assert result.returncode == 0
    for f in dataclasses.fields(Config):
        assert "--" + f.name.replace("_", "-") in result.stdout, f.name
    assert "--no-freeze-encoder" in result.stdout
    assert "Layer-wise learning-rate decay" in result.stdout  # the help text, not only the flag


def test_help_says_each_default_once_and_spells_every_flag_with_hyphens():
    text = " ".join(build_parser().format_help().split())  # argparse wraps lines; words stay in order
    assert "(default: None)" not in text and ") (default:" not in text
    assert "(default: 42)" in text and "(default: 0.15)" in text  # a default said once, after its help
    assert re.findall(r"--\w*_[\w-]*", text) == []  # usage and options alike: --max-length, never --max_length
    assert "--max-length" in text and "--blend {auto,lexical,none}" in text and "--ensemble" not in text


def test_underscore_spellings_and_earlier_names_still_run_as_before():
    hyphens = parse_config(["--max-length", "64", "--no-freeze-embeddings", "--text-column", "body",
                            "--label-columns", "a,b", "--blend", "lexical", "--freeze-encoder", "false"])
    underscores = parse_config(["--max_length", "64", "--no_freeze_embeddings", "--text_column", "body",
                                "--label_columns", "a,b", "--ensemble", "tfidf", "--freeze_encoder", "false"])
    assert underscores == hyphens
    assert (hyphens.max_length, hyphens.freeze_embeddings, hyphens.blend) == (64, False, "lexical")


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(Config) if f.type in (bool, "bool")])
def test_every_boolean_turns_on_and_off_with_one_form(name):
    flag = name.replace("_", "-")
    options = {option for action in build_parser()._actions for option in action.option_strings}
    assert {f"--{flag}", f"--no-{flag}"} <= options
    assert getattr(parse_config([f"--{flag}"]), name) is True
    assert getattr(parse_config([f"--no-{flag}"]), name) is False
    assert getattr(parse_config([f"--no_{name}"]), name) is False  # the underscore spelling, kept


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert all(issubclass(kind, UserError) for kind in (SettingsError, DataError, CheckpointError, ResumeError))
    assert main.main(["--config", str(tmp_path / "absent.yaml")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'absent.yaml'}: no such config file (--config)\n"
    assert main.main(["--mode", "eval", "--checkpoint", str(tmp_path)]) == 2
    assert "not a checkpoint folder of this toolkit" in capsys.readouterr().err
    assert main.main(["--mode", "predict"]) == 2
    assert capsys.readouterr().err == "error: --mode predict needs --checkpoint DIR (a folder written by training)\n"


def test_a_missing_file_named_by_a_flag_is_a_message_not_a_traceback(tmp_path, tiny_bert, capsys):
    code = main.main(["--data", str(tmp_path / "absent.csv"), "--model-name-or-path", str(tiny_bert),
                      "--output-dir", str(tmp_path)])  # an exception would reach the test: no traceback to look for
    assert code == 2
    assert f"error: {tmp_path / 'absent.csv'}: not a built-in dataset" in capsys.readouterr().err


def test_an_output_folder_that_cannot_be_made_is_a_message(trained, run_config, tmp_path, capsys):
    """An output folder the user named that cannot be created (a file in its way) is said in one line."""
    output_dir, _ = trained
    (blocked := tmp_path / "a_file").write_text("")
    code = main.main(["--config", str(run_config), "--mode", "eval", "--checkpoint", str(output_dir / "checkpoint"),
                      "--output-dir", str(blocked / "reports")])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"error: cannot create the output folder {blocked / 'reports'}: ")


def test_an_error_that_is_not_the_users_keeps_its_traceback(trained, run_config, monkeypatch):
    """Only the user-error type becomes a message: any other exception (here an OSError inside eval, as a bug's
    would be) surfaces as it is, traceback and all."""
    output_dir, _ = trained

    def broken(*args, **kwargs):
        raise OSError("a bug, not the user's")

    monkeypatch.setattr(evaluation, "run", broken)
    with pytest.raises(OSError, match="a bug"):
        main.main(["--config", str(run_config), "--mode", "eval", "--checkpoint", str(output_dir / "checkpoint")])


def test_train_writes_checkpoint_report_and_plot(trained):
    output_dir, stdout = trained
    checkpoint = output_dir / "checkpoint"
    assert {"model.safetensors", "config.json", "tokenizer.json", "classifier.json", "training_config.json",
            "metrics.json"} <= {p.name for p in checkpoint.iterdir()}
    assert json.loads((checkpoint / "training_config.json").read_text())["epochs"] == 1.0  # the flag beat the file
    assert (output_dir / "metrics.jsonl").read_text().strip()
    report = json.loads((output_dir / "eval_report.json").read_text())
    assert report["checkpoint"] == str(checkpoint)
    assert report["metrics"]["examples"] == 80 and set(report["metrics"]["per_label"]) == set(TOXIC_LABELS)
    plot = output_dir / "curves.png"
    assert plot.read_bytes()[:8] == PNG_MAGIC and plot.stat().st_size > 1000
    assert "mean ROC AUC" in stdout


def test_eval_mode_re_evaluates_a_checkpoint(trained, run_config, tmp_path):
    output_dir, _ = trained
    assert main.main(["--config", str(run_config), "--mode", "eval", "--checkpoint", str(output_dir / "checkpoint"),
                      "--output-dir", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "eval_report.json").read_text())["metrics"]
    first = json.loads((output_dir / "eval_report.json").read_text())["metrics"]
    for metrics in (again, first):
        metrics.pop("seconds")
    assert again == first  # same checkpoint, same held-out rows, same numbers
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG_MAGIC
    assert not (tmp_path / "checkpoint").exists()  # evaluation trains nothing


def test_bad_data_exits_2_naming_file_row_and_column(tmp_path, tiny_bert, capsys):
    data = tmp_path / "bad.csv"
    data.write_text("comment_text,toxic,insult\nfine words,0,0\nrude words,1,1\nodd words,0,maybe\n")
    code = main.main(["--data", str(data), "--text-column", "comment_text", "--label-columns", "toxic,insult",
                      "--model-name-or-path", str(tiny_bert), "--output-dir", str(tmp_path / "out")])
    assert code == 2
    stderr = capsys.readouterr().err
    assert f"{data}: row 3, column 'insult'" in stderr
    assert "'maybe'" in stderr


def test_unknown_setting_in_the_config_file_exits_2(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 1\nlearnig_rate: 0.1\n")
    result = cli("--config", path, timeout=120)
    assert result.returncode == 2
    assert "learnig_rate" in result.stderr and "Traceback" not in result.stderr
