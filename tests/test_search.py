"""--mode search: real trainings in an Optuna study on disk; the best written as a config file that trains; a study
killed mid-trial resumes without repeating finished trials; two processes share one study."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

import main
from utils.config import parse_config

ROOT = Path(__file__).resolve().parent.parent


def search_args(data: Path, backbone: Path, output: Path, trials: int, *extra: str, epochs: int = 3) -> list[str]:
    """A search of tiny trainings: --epochs given (the recipe's 30 for these titles take ten times longer), the
    trials' epochs drawn around it."""
    return ["--mode", "search", "--data", str(data), "--text-column", "Title", "--label-column", "Conference",
            "--model-name-or-path", str(backbone), "--max-length", "32", "--batch-size", "16", "--epochs", str(epochs),
            "--trials", str(trials), "--output-dir", str(output), *extra]


def load(output: Path, name: str = "search-conference_small") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{output / 'study.db'}")


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))


def test_search_starts_from_the_recipe_and_writes_a_config_that_trains_the_best_trial(
        tmp_path, tiny_bert, conference_csv):
    output = tmp_path / "search"
    assert main.main(search_args(conference_csv, tiny_bert, output, 3)) == 0
    study = load(output)
    trials = finished(study)
    assert len(trials) == 3
    baseline = trials[0]
    recipe = json.loads((output / "recipe.json").read_text())["values"]
    assert baseline.user_attrs["baseline"] and baseline.user_attrs["settings"]["epochs"] == recipe["epochs"]
    assert baseline.user_attrs["settings"]["max_length"] == 32  # given, so the recipe's choice is the flag's
    assert all(1.5 <= t.user_attrs["settings"]["epochs"] <= 4.5 for t in trials)  # half to 1.5 times the given 3
    best = max((t for t in trials if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: t.value or 0)
    assert best.value is not None and baseline.value is not None and best.value >= baseline.value
    report = json.loads((output / "search_report.json").read_text())
    assert report["best"]["number"] == best.number and len(report["trials"]) == 3
    assert report["plots"]["search_history.png"] == "written" and (output / "search_history.png").stat().st_size
    # no trial keeps a checkpoint (the best is trained again), and none reads the test rows
    assert not list((output / "trials").glob("*/checkpoint"))
    assert all("accuracy" in t.user_attrs["validation"] for t in trials if t.state.name == "COMPLETE")

    best_config = output / "best.yaml"
    settings = yaml.safe_load(best_config.read_text())
    config = parse_config(["--config", str(best_config), "--no-export-onnx"])
    assert config.mode == "train" and config.data == str(conference_csv)
    for name, value in best.user_attrs["settings"].items():
        assert getattr(config, name) == value == settings[name]
    assert main.main(["--config", str(best_config), "--no-export-onnx"]) == 0
    # the same settings and seed train the same model: what the search measured is what best.yaml gives
    metrics = json.loads((Path(config.output_dir) / "checkpoint" / "metrics.json").read_text())["validation"]
    assert metrics["macro_f1"] == pytest.approx(best.value, abs=1e-6)


def run_search(args: list[str], log: Path, heartbeat: float | None = None) -> subprocess.Popen:
    """main.py in its own process, its output in `log` (a pipe left unread would fill and stop it); `heartbeat`:
    seconds between its trials' heartbeats instead of search.HEARTBEAT_SECONDS."""
    command = ["main.py", *args] if heartbeat is None else [
        "-c", f"import sys, main, search; search.HEARTBEAT_SECONDS = {heartbeat}; sys.exit(main.main(sys.argv[1:]))",
        *args]
    with log.open("w") as handle:
        return subprocess.Popen([sys.executable, *command], cwd=ROOT, stdout=handle,
                                stderr=subprocess.STDOUT, env=os.environ | {"TQDM_DISABLE": "1"})


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.5)


def read_only(database: Path, query: str) -> list[tuple]:
    """Rows of a study's SQLite file while a search writes it, read without Optuna: its storage would create the
    tables the search may be creating at that moment, and one of the two would fail."""
    if not database.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
            return connection.execute(query).fetchall()
    except sqlite3.OperationalError:  # no tables yet, or locked by the writer
        return []


def states(output: Path) -> list[str]:
    return [state for (state,) in read_only(output / "study.db", "SELECT state FROM trials ORDER BY number")]


@pytest.mark.slow
def test_a_search_killed_mid_trial_resumes_without_repeating_finished_trials(tmp_path, tiny_bert, conference_csv):
    output = tmp_path / "search"
    # --freeze-layers given too (the recipe's 0): no speed to measure before the first trial; trials long enough to
    # be seen running
    args = search_args(conference_csv, tiny_bert, output, 2, "--freeze-layers", "0", epochs=5)
    first = run_search(args, tmp_path / "first.log", heartbeat=1)  # a grace of 2 s, not 10, to wait out below
    # running, and past drawing its settings (it records its pid after them): killed with every parameter drawn
    drawn = ("SELECT 1 FROM trials JOIN trial_user_attributes USING (trial_id) WHERE state = 'RUNNING' "
             "AND key = 'pid'")
    wait_for(lambda: states(output)[:1] == ["COMPLETE"] and read_only(output / "study.db", drawn), 120,
             "the first trial to finish and the second to start")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    before = {t.number: t for t in load(output).get_trials()}
    killed = [n for n, t in before.items() if t.state.name == "RUNNING"]
    assert len(killed) == 1
    time.sleep(2.5)  # past the heartbeat's grace: the killed trial is failed and enqueued again on resume
    second = run_search(args, tmp_path / "second.log", heartbeat=1)
    assert second.wait(timeout=180) == 0, (tmp_path / "second.log").read_text()[-3000:]
    after = load(output).get_trials()
    assert len(finished(load(output))) == 2
    for number, trial in before.items():  # the finished trials are kept as they were, not run again
        if trial.state.name == "COMPLETE":
            assert after[number].state.name == "COMPLETE" and after[number].value == trial.value
    assert after[killed[0]].state.name == "FAIL"
    retried = [t for t in after if t.system_attrs.get("failed_trial") == killed[0]]
    assert len(retried) == 1 and retried[0].params == before[killed[0]].params
    assert sum(1 for t in after if t.user_attrs.get("baseline")) == 1


@pytest.mark.slow
def test_two_processes_on_one_study_run_disjoint_trials(tmp_path, tiny_bert, conference_csv):
    output = tmp_path / "search"
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    shared = ["--storage", storage, "--study-name", "shared"]
    # no speed measured (as above); trials of 10 epochs: the first process is still at its first ones when the
    # second has imported torch
    first = run_search([*search_args(conference_csv, tiny_bert, output, 4, "--freeze-layers", "0", epochs=10),
                        *shared], tmp_path / "first.log")
    plan = ("SELECT 1 FROM studies JOIN study_user_attributes USING (study_id) WHERE study_name = 'shared' "
            "AND key = 'centre'")
    wait_for(lambda: read_only(tmp_path / "shared.db", plan), 120, "the first process's plan")
    second = run_search([*search_args(conference_csv, tiny_bert, tmp_path / "other", 4, "--freeze-layers", "0",
                                      epochs=10), *shared], tmp_path / "second.log")
    for process, log in ((first, "first.log"), (second, "second.log")):
        assert process.wait(timeout=240) == 0, (tmp_path / log).read_text()[-3000:]
    trials = optuna.load_study(study_name="shared", storage=storage).get_trials()
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert 4 <= len(done) <= 5  # each process stops once the study holds 4; the other may be finishing one
    assert len({t.number for t in trials}) == len(trials)
    assert {t.user_attrs["pid"] for t in done} == {first.pid, second.pid}  # both worked, each on its own trials
