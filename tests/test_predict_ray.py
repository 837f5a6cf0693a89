"""`--mode predict --engine ray`: real toxic files scored on a real Ray cluster, started here on 127.0.0.1 and
shared by the module's tests, equal ModelInferer.predict_batch with every row once: through a killed actor, and
with a bad row stopping the job by name and leaving no output folder."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from conftest import TOXIC_LABELS, api_client
from test_packaging import read_pins

import main
import predict_ray
from bench import ray_predict
from inferer import ModelInferer
from utils.data.datasets import SHARED_DATA_DIR
from utils.data.readers import DataError

ROOT = Path(__file__).resolve().parent.parent
SCORE_COLUMNS = [f"score_{name}" for name in TOXIC_LABELS]
# Measured here: at most 5.6e-9 between an actor (1 torch thread, its own batches) and predict_batch (2 threads, one
# batch per file) on the tiny test model; MiniLM in bench/ray_predict.py differed by up to 4.3e-8.
SCORE_TOLERANCE = 5e-8
FILE_ROWS = {"a.csv": 300, "b.jsonl": 250, "nested/c.parquet": 200}
# One test process runs them all (`make test`'s --dist loadgroup): one Ray cluster at a time on this machine.
pytestmark = pytest.mark.xdist_group("ray")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def loopback():
    """Ray's single-machine mode (its default on macOS and Windows) for this process: every cluster it starts or
    joins stays on 127.0.0.1, where Ray would otherwise swap 127.0.0.1 for the machine's network address."""
    with pytest.MonkeyPatch.context() as patch:
        constants = ray._private.ray_constants  # pyright: ignore  # (Ray's own switch, not a public name)
        patch.setattr(constants, "ENABLE_RAY_CLUSTER", False)  # what the variable sets at import
        yield


@pytest.fixture(scope="module")
def ray_address(loopback, tmp_path_factory):
    """`ray start --head` on 127.0.0.1 with 2 CPUs, joined by the tests; stopped with the process that started it.

    No draining at SIGTERM, so its processes stop at once; no token authentication, as nothing but this machine
    can reach a loopback cluster (a driver would need RAY_AUTH_MODE=token before importing ray)."""
    env = os.environ | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
                        "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    port = free_port()
    log = tmp_path_factory.mktemp("ray_head") / "head.log"
    command = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={port}",
               f"--dashboard-agent-listen-port={free_port()}", "--num-cpus=2", "--include-dashboard=false",
               "--disable-usage-stats", "--object-store-memory=300000000"]
    with log.open("w") as out:
        head = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        assert "Local node IP: 127.0.0.1" in log.read_text()
        yield f"127.0.0.1:{port}"
    finally:
        head.send_signal(signal.SIGTERM)  # --block: the head stops every process it started
        head.wait(60)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Three real files of the toxic data, one per format, one in a subfolder; text in comment_text."""
    folder = tmp_path_factory.mktemp("ray_inputs")
    frame = pd.read_csv(SHARED_DATA_DIR / "toxic" / "train.csv", dtype=str, keep_default_na=False).iloc[1000:]
    start = 0
    for name, count in FILE_ROWS.items():
        rows, start = frame.iloc[start:start + count].reset_index(drop=True), start + count
        path = folder / name
        path.parent.mkdir(exist_ok=True)
        if path.suffix == ".csv":
            rows.to_csv(path, index=False)
        elif path.suffix == ".jsonl":  # JSONL and Parquet keep the labels as numbers
            rows.astype({label: int for label in TOXIC_LABELS}).to_json(path, orient="records", lines=True)
        else:
            rows.astype({label: int for label in TOXIC_LABELS}).to_parquet(path, index=False)
    (folder / "README.md").write_text("not data")
    return folder


@pytest.fixture(scope="module")
def inferer(multilabel_checkpoint) -> ModelInferer:
    return ModelInferer(multilabel_checkpoint)


def read_input(path: Path) -> pd.DataFrame:
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    return pd.read_json(path, lines=True, dtype=False) if path.suffix == ".jsonl" else pd.read_parquet(path)


def read_output(folder: Path) -> pd.DataFrame:
    shards = sorted(folder.iterdir())
    assert shards and all(not p.name.startswith(".") for p in shards)
    if folder.suffix == ".csv":  # as text, as the input columns were, then the numbers
        scored = pd.concat([pd.read_csv(p, dtype=str, keep_default_na=False) for p in shards], ignore_index=True)
        return scored.astype({predict_ray.ROW_NUMBER: np.int64} | {c: np.float64 for c in SCORE_COLUMNS})
    return pd.concat([pd.read_parquet(p) for p in shards], ignore_index=True)


def assert_equals_predict_batch(scored: pd.DataFrame, inputs: Path, inferer: ModelInferer) -> float:
    """Every input row exactly once, its input columns kept and its predictions those of predict_batch."""
    assert not scored.duplicated([predict_ray.ROW_FILE, predict_ray.ROW_NUMBER]).any()
    assert len(scored) == sum(FILE_ROWS.values())
    worst = 0.0
    for name, count in FILE_ROWS.items():
        source = read_input(inputs / name)
        rows = scored[scored[predict_ray.ROW_FILE] == str(inputs / name)].sort_values(predict_ray.ROW_NUMBER)
        assert rows[predict_ray.ROW_NUMBER].tolist() == list(range(1, count + 1))
        pd.testing.assert_frame_equal(rows[source.columns].astype(str).reset_index(drop=True), source.astype(str))
        expected = inferer.predict_batch(source.comment_text.tolist())
        want = np.array([[p["scores"][label] for label in TOXIC_LABELS] for p in expected])
        got = rows[SCORE_COLUMNS].to_numpy(dtype=np.float64)
        worst = max(worst, float(np.abs(got - want).max()))
        np.testing.assert_allclose(got, want, rtol=0, atol=SCORE_TOLERANCE)
        labels = [set(p["labels"]) for p in expected]
        found = [set(v.split("|")) - {""} if isinstance(v, str) else set(v) for v in rows["labels"]]
        clear = (np.abs(want - inferer.thresholds) > SCORE_TOLERANCE).all(axis=1)  # none on its threshold
        assert [f for f, c in zip(found, clear, strict=True) if c] == \
            [w for w, c in zip(labels, clear, strict=True) if c]
        assert rows["truncated"].astype(str).str.lower().tolist() == [str(p["truncated"]).lower() for p in expected]
    return worst


def run_main(*args: str) -> int:
    return main.main(["--mode", "predict", "--engine", "ray", *args])


def test_a_folder_of_csv_jsonl_and_parquet_is_scored_once_per_row(ray_address, inputs, multilabel_checkpoint,
                                                                  inferer, tmp_path, capsys):
    output = tmp_path / "scored"
    assert run_main("--ray-address", ray_address, "--checkpoint", str(multilabel_checkpoint), "--input", str(inputs),
                    "--output", str(output), "--num-actors", "2", "--batch-size", "64") == 0
    assert "scored 750 rows of 3 file(s) (text column 'comment_text')" in capsys.readouterr().err
    scored = read_output(output)
    columns = list(scored.columns)
    assert columns[:2] == [predict_ray.ROW_FILE, predict_ray.ROW_NUMBER] and columns[-8:] == [
        *SCORE_COLUMNS, "labels", "truncated"]
    worst = assert_equals_predict_batch(scored, inputs, inferer)
    print(f"largest score difference from predict_batch: {worst:.2e}")
    assert os.listdir(tmp_path) == ["scored"]  # no temporary folder left beside it
    schema = pq.read_schema(next(output.iterdir()))
    assert schema.field("labels").type == pa.list_(pa.string()) and schema.field("truncated").type == pa.bool_()


def test_ray_scores_with_the_servers_backend_and_scores(ray_address, inputs, exported_checkpoint, tmp_path, capsys,
                                                       monkeypatch):
    """--backend auto, chosen once on the driver as the server chooses; one Ray batch of the 50 rows, scored in
    the API's forward batches of 32, gives the API's scores (a dynamic int8 graph's move with the batch)."""
    client = api_client(monkeypatch, exported_checkpoint)
    served = client.get("/metadata").get_json()
    source = tmp_path / "rows.csv"
    read_input(inputs / "a.csv").head(50).to_csv(source, index=False)
    output = tmp_path / "scored"
    assert run_main("--ray-address", ray_address, "--checkpoint", str(exported_checkpoint), "--input", str(source),
                    "--output", str(output), "--num-actors", "1", "--batch-size", "50", "--eval-batch-size", "32") == 0
    assert f"backend {served['backend']} (auto: {served['backend_choice']['reason']})" in capsys.readouterr().err
    scored = read_output(output).sort_values(predict_ray.ROW_NUMBER)
    texts = read_input(source).comment_text.tolist()
    answers = client.post("/predict", json={"texts": texts}).get_json()["predictions"]
    np.testing.assert_allclose(scored[SCORE_COLUMNS].to_numpy(dtype=np.float64),
                               [[a["scores"][n] for n in TOXIC_LABELS] for a in answers], rtol=0, atol=1e-6)


def test_ray_reads_long_texts_in_the_windows_asked_for(ray_address, inputs, multilabel_checkpoint, tmp_path, capsys):
    """--long-texts windows reaches every actor: long rows scored as ModelInferer scores them in windows, their
    answers not truncated (the checkpoint itself cuts them)."""
    texts = [" ".join(read_input(inputs / "a.csv").comment_text.head(12).tolist()) * 2, "thanks for the fix"]
    source = tmp_path / "long.csv"
    pd.DataFrame({"comment_text": texts}).to_csv(source, index=False)
    output = tmp_path / "scored"
    assert run_main("--ray-address", ray_address, "--checkpoint", str(multilabel_checkpoint), "--input", str(source),
                    "--output", str(output), "--num-actors", "1", "--long-texts", "windows", "--max-windows",
                    "200") == 0
    capsys.readouterr()
    scored = read_output(output).sort_values(predict_ray.ROW_NUMBER)
    windows = ModelInferer(multilabel_checkpoint, long_texts="windows", max_windows=200)
    expected = windows.predict_batch(texts)
    np.testing.assert_allclose(scored[SCORE_COLUMNS].to_numpy(dtype=np.float64),
                               [[p["scores"][n] for n in TOXIC_LABELS] for p in expected], rtol=0, atol=1e-6)
    assert scored["truncated"].astype(str).str.lower().tolist() == ["false", "false"]
    assert ModelInferer(multilabel_checkpoint).predict_batch(texts)[0]["truncated"] is True


class KillingScorer(predict_ray.Scorer):
    """The Scorer, except that the first actor kills its own process on its third batch (once per marker)."""

    marker = ""

    def __init__(self, settings: predict_ray.ScorerSettings) -> None:
        super().__init__(settings)
        self.calls = 0
        if os.path.exists(self.marker):  # the actor came back after the kill
            Path(self.marker + ".restarted").write_text(str(os.getpid()))

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        self.calls += 1
        if self.calls == 3 and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(batch)


def test_an_actor_killed_mid_job_is_restarted_and_every_row_written_once(ray_address, inputs, multilabel_checkpoint,
                                                                        inferer, tmp_path):
    KillingScorer.marker = str(tmp_path / "killed")
    output = tmp_path / "scored.csv"  # CSV shards this time
    settings = predict_ray.ScorerSettings(checkpoint=str(multilabel_checkpoint), text_column="comment_text",
                                          labels_as_text=True)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # pyright: ignore  # actors lack this module
    try:
        with predict_ray.ray_cluster(ray_address):
            rows = predict_ray.score_files(predict_ray.input_files(str(inputs)), output, settings, num_actors=1,
                                           batch_size=32, scorer=KillingScorer)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])  # pyright: ignore
    killed = int(Path(KillingScorer.marker).read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(killed, 0)  # that process is gone for good
    assert int(Path(KillingScorer.marker + ".restarted").read_text()) != killed
    assert rows == 750
    assert_equals_predict_batch(read_output(output), inputs, inferer)


def test_the_benchmark_runs_at_its_smallest_size(ray_address, multilabel_checkpoint, tmp_path, capsys):
    results = tmp_path / "bench.json"
    record = ray_predict.main(["--checkpoint", str(multilabel_checkpoint), "--rows", "24", "--actors", "1",
                               "--batch-size", "8", "--ray-address", ray_address, "--results", str(results)])
    assert json.loads(results.read_text()) == [record]
    assert [(run["engine"], run["actors"]) for run in record["runs"]] == [("single", None), ("ray", 1)]
    assert record["rows"] == 24 and all(run["texts_per_s"] > 0 for run in record["runs"])
    assert record["runs"][1]["max_abs_diff"] < ray_predict.SCORE_TOLERANCE
    assert "| ray " in capsys.readouterr().out


def test_a_bad_row_stops_the_job_by_file_row_and_column_and_leaves_no_output(loopback, inputs,
                                                                              multilabel_checkpoint, tmp_path, capsys):
    """On a local cluster of its own this time (no --ray-address), stopped at the end, error or not. It runs after
    the tests that join the module's cluster: a process that has started and stopped a local cluster could not
    score on another one afterwards (its first actor was cancelled before it ran; seen with Ray 2.60)."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.csv").write_bytes((inputs / "a.csv").read_bytes())
    rows = read_input(inputs / "b.jsonl").to_dict(orient="records")
    rows[56]["comment_text"] = 5
    (folder / "bad.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = tmp_path / "out" / "scored"
    assert run_main("--checkpoint", str(multilabel_checkpoint), "--input", str(folder / "*"),
                    "--output", str(output)) == 2
    assert f"error: {folder / 'bad.jsonl'}: row 57, column 'comment_text': expected text, got 5" in \
        capsys.readouterr().err
    assert not output.exists() and not list(output.parent.glob(".*"))
    assert not ray.is_initialized()


# What needs no cluster: reading, the row id, the shards and their check, the command line's refusals.

@pytest.mark.parametrize(("lines", "message"), [
    (['{"text": "fine"}', '{"text": 5}'], "row 2, column 'text': expected text, got 5"),
    (['{"text": "fine"}', '{"other": "x"}'], "row 2, column 'text': expected text, got nan"),
    (['{"text": "a"}', '{"text": "b"}', '{"text": "c"}', '{"other": "x"}'],  # row 4: a chunk without the key
     "row 4, column 'text': expected text, got no value"),
    (['{"body": "fine"}'], "missing column(s) 'text'; the file has 'body'"),
    (['{"text": "fine"}', "not json"], "cannot be parsed as JSONL"),
])
def test_bad_rows_are_named_by_file_row_and_column(tmp_path, lines, message):
    source = tmp_path / "bad.jsonl"
    source.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=re.escape(message)) as caught:
        list(predict_ray.read_file({"path": np.array([str(source)])}, "text", chunk_rows=3))
    assert str(source) in str(caught.value)


def test_unreadable_and_empty_files_are_named(tmp_path):
    broken, empty = tmp_path / "broken.parquet", tmp_path / "empty.csv"
    broken.write_bytes(b"PAR1 not really")
    empty.write_text("text\n")
    with pytest.raises(DataError, match=f"{re.escape(str(broken))}: cannot be read as Parquet"):
        list(predict_ray.read_file({"path": np.array([str(broken)])}, "text", chunk_rows=3))
    with pytest.raises(DataError, match=f"{re.escape(str(empty))}: no rows"):
        list(predict_ray.read_file({"path": np.array([str(empty)])}, "text", chunk_rows=3))


def test_rows_carry_their_file_and_row_number_across_chunks(tmp_path):
    source = tmp_path / "rows.csv"
    pd.DataFrame({"text": list("abcde"), "source_row": ["x"] * 5}).to_csv(source, index=False)
    frames = list(predict_ray.read_file({"path": np.array([str(source)])}, "text", chunk_rows=2))
    assert [len(f) for f in frames] == [2, 2, 1]
    rows = pd.concat(frames, ignore_index=True)
    assert rows["source_row"].tolist() == [1, 2, 3, 4, 5] and set(rows["source_file"]) == {str(source)}
    assert rows["source_row_input"].tolist() == ["x"] * 5 and rows["text"].tolist() == list("abcde")


def test_input_files_from_a_file_a_folder_or_a_glob(inputs, tmp_path):
    (tmp_path / ".scored.partial-1").mkdir()
    (tmp_path / ".scored.partial-1" / "part.parquet").write_text("")
    (tmp_path / "_SUCCESS.csv").write_text("")
    (tmp_path / "x.csv").write_text("")
    wanted = [inputs / name for name in sorted(FILE_ROWS)]
    assert predict_ray.input_files(str(inputs)) == wanted  # README.md left out
    assert predict_ray.input_files(str(inputs / "**" / "*.parquet")) == [inputs / "nested" / "c.parquet"]
    assert predict_ray.input_files(str(tmp_path)) == [tmp_path / "x.csv"]  # hidden folders and _ names skipped
    for pattern, message in ((inputs / "README.md", "unknown file type '.md'"), (tmp_path / "none", "no such file"),
                             (tmp_path / "*.tsv", "no .csv, .tsv, .txt, .jsonl, .ndjson, .parquet, .xlsx files there")):
        with pytest.raises(DataError, match=re.escape(message)):
            predict_ray.input_files(str(pattern))


def write_ids(path: Path, source: str, rows: list[int]) -> None:
    pq.write_table(pa.table({predict_ray.ROW_FILE: [source] * len(rows), predict_ray.ROW_NUMBER: rows}), path)


def test_the_row_check_finds_a_repeated_or_a_missing_row(tmp_path):
    source = tmp_path / "in.csv"
    write_ids(tmp_path / "part-0.parquet", str(source), [1, 2])
    write_ids(tmp_path / "part-1.parquet", str(source), [3])
    assert predict_ray.count_rows_once(tmp_path, [source], "parquet") == 3
    with pytest.raises(RuntimeError, match="other.csv: none of its rows is in the output"):
        predict_ray.count_rows_once(tmp_path, [source, tmp_path / "other.csv"], "parquet")
    write_ids(tmp_path / "part-2.parquet", str(source), [2, 5])  # row 2 twice, row 4 lost
    with pytest.raises(RuntimeError, match=re.escape("rows [4] missing and [2] repeated")):
        predict_ray.count_rows_once(tmp_path, [source], "parquet")


def test_shards_are_one_per_schema_and_a_retried_write_replaces_them(tmp_path):
    as_text = pa.table({"id": ["1", "2"], "score_toxic": [0.1, 0.2]})
    as_numbers = pa.table({"id": [3], "score_toxic": [0.3]})
    for _ in range(2):  # the same write task twice (a retry): the same files, not more
        assert predict_ray.write_shards([as_text, as_numbers, as_text], tmp_path, "parquet", "part-000007") == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-000007-000.parquet", "part-000007-001.parquet"]
    assert pq.read_table(tmp_path / "part-000007-000.parquet")["id"].to_pylist() == ["1", "2", "1", "2"]


def test_label_columns_keep_their_types_when_no_row_has_a_label():
    scored = pd.DataFrame({"text": ["a", "b"], "score_x": [0.1, 0.2], "labels": [[], []], "truncated": [False, True]})
    table = predict_ray.arrow_table(scored, ["x"], labels_as_text=False)
    assert table.schema.field("labels").type == pa.list_(pa.string())
    assert predict_ray.arrow_table(scored, ["x"], labels_as_text=True)["labels"].to_pylist() == ["", ""]


@pytest.mark.parametrize(("extra", "message"), [
    (["--text", "hello"], "--engine ray scores files"),
    (["--input", "x.csv"], "--engine ray scores files"),
    (["--input", "missing", "--output", "out"], "missing: no such file or folder"),
    (["--input", "{inputs}", "--output", "{inputs}"], "already exists"),
    (["--input", "{inputs}", "--output", "out", "--num-actors", "0"], "--num-actors and --cpus-per-actor must be >= 1"),
])
def test_command_line_mistakes_exit_2_before_any_cluster_starts(multilabel_checkpoint, inputs, extra, message, capsys,
                                                               tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    extra = [arg.format(inputs=inputs) for arg in extra]
    assert run_main("--checkpoint", str(multilabel_checkpoint), *extra) == 2
    assert message in capsys.readouterr().err
    assert not ray.is_initialized()


def test_the_ray_extra_is_pinned_like_requirements_txt_and_installed():
    extra, full = read_pins(ROOT / "requirements_ray.txt"), read_pins(ROOT / "requirements.txt")
    assert extra["ray"] == ray.__version__ and extra["pyarrow"] == pa.__version__
    assert {name: full.get(name) for name in extra} == extra
