"""Every benchmark script runs end to end at its smallest size, so that a rename cannot silently break one.

Results go to a temporary folder ($BENCH_OUTPUT_DIR), never into docs/.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench.fairness import unexpected
from bench.inference import VARIANTS
from utils.checkpoint.contract import CheckpointFolder
from utils.inference.backends import backend_for

ROOT = Path(__file__).resolve().parent.parent


def run_bench(script: str, args: list[str], output_dir: Path, timeout: int = 600,
              **environ: str) -> subprocess.CompletedProcess:
    env = os.environ | {"BENCH_OUTPUT_DIR": str(output_dir), "TOKENIZERS_PARALLELISM": "false", **environ}
    done = subprocess.run([sys.executable, f"bench/{script}", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def records(path: Path) -> list[dict]:
    history = json.loads(path.read_text())
    assert isinstance(history, list) and len(history) == 1
    return history


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def checkpoint_copy(multilabel_checkpoint, tmp_path) -> Path:
    """The tiny checkpoint in a folder of its own (benchmarks export ONNX graphs into it)."""
    return Path(shutil.copytree(multilabel_checkpoint, tmp_path / "checkpoint"))


def test_inference_benchmark(checkpoint_copy, tmp_path):
    out = tmp_path / "out"
    done = run_bench("inference.py", ["--checkpoint", str(checkpoint_copy), "--texts", "16", "--latency-texts", "2",
                                      "--batch-size", "8", "--threads", "1", "--matmul-size", "128", "--rounds", "1"],
                     out)
    (record,) = records(out / "bench_inference.json")
    variants = [row["variant"] for row in record["rows"]]
    assert variants == [*VARIANTS, "transformers pipeline"] and record["texts"] == 16
    assert all(row["texts_per_s"] > 0 and 0 <= row["mean_roc_auc"] <= 1 for row in record["rows"])
    assert all(row["latency_p50_ms"] <= row["latency_p99_ms"] and row["size_mb"] > 0 for row in record["rows"])
    assert (out / "bench_inference.png").stat().st_size > 0 and "| torch fp32" in done.stdout
    # the graphs were missing, so the benchmark exported and measured them (static int8 too)
    assert (checkpoint_copy / "variants.json").is_file()
    peaks = record["matmul_gflops"]
    assert peaks["fp32"] == max(peaks["torch fp32"], peaks["onnxruntime fp32"]) > 0
    served = [row["variant"] for row in record["rows"] if row["served_by_auto"]]
    assert len(served) == 1 and VARIANTS[served[0]].get("backend", "torch") == record["auto"]["backend"]
    assert [goal["goal"].split()[0] for goal in record["goals"]] == ["best", "int8", "single-text"]
    assert all(isinstance(goal["met"], bool) for goal in record["goals"]) and "| goal |" in done.stdout


def test_api_benchmark(exported_checkpoint, tmp_path):
    out = tmp_path / "out"
    done = run_bench("api.py", ["--checkpoint", str(exported_checkpoint), "--clients", "1", "2", "--seconds", "1",
                                "--max-requests", "10", "--modes", "torch", "auto", "--port", str(free_port())], out,
                     WORKERS="1")
    (record,) = records(out / "bench_api.json")
    assert [(row["mode"], row["clients"]) for row in record["rows"]] == [("torch", 1), ("torch", 2), ("auto", 1),
                                                                       ("auto", 2)]
    auto = backend_for(CheckpointFolder(exported_checkpoint)).backend  # on the tiny model, torch may be fastest
    for row in record["rows"]:
        assert 0 < row["requests"] <= 10 and set(row["statuses"]) == {"200"}
        assert row["backend"] == {"torch": "torch", "auto": auto}[row["mode"]]
    assert record["goal"]["clients"] == 2 and isinstance(record["goal"]["met"], bool) and "goal" in done.stdout
    assert (out / "bench_api.png").stat().st_size > 0


def test_training_benchmark(tmp_path):
    out = tmp_path / "out"
    run_bench("training.py", ["--steps", "3", "--batch-size", "2", "--max-length", "16", "--val-split", "0.005",
                              "--precisions", "fp32", "--threads", "1"], out)  # one thread: the worker's share
    (record,) = records(out / "bench_training.json")
    assert [(row["side"], row["precision"]) for row in record["rows"]] == [("train.py", "fp32"), ("hf Trainer", "fp32")]
    assert all(row["samples_per_s"] > 0 for row in record["rows"])


def test_baseline_benchmark(tmp_path):
    out = tmp_path / "out"
    done = run_bench("baseline.py", ["--data", "conference"], out)
    result = json.loads((out / "baseline_conference.json").read_text())
    assert result["test"]["accuracy"] > 0.6  # TF-IDF on paper titles: 0.77 when measured
    assert "accuracy" in done.stdout


def test_lexical_blend_benchmark(multiclass_checkpoint, tmp_path):
    out, scores = tmp_path / "out", tmp_path / "scores"
    run_bench("lexical_blend.py", ["lexical", "--data", "conference", "--variants", "base",
                                   "--scores-dir", str(scores)], out)
    run_bench("lexical_blend.py", ["blend", "--data", "conference", "--checkpoint", str(multiclass_checkpoint),
                                   "--scores-dir", str(scores), "--halves", "1"], out)
    result = json.loads((out / "lexical_conference.json").read_text())
    assert [v["variant"] for v in result["lexical"]["variants"]][0] == "base"
    assert 0.5 < result["lexical"]["variants"][0]["validation_accuracy"] <= 1  # 0.83 when measured
    assert result["blend"]["chosen_strategy"] and result["blend"]["blends"]


def test_lexical_rare_benchmark(tmp_path):
    out, documents = tmp_path / "out", tmp_path / "documents"
    run_bench("long_documents.py", ["--output-dir", str(documents), "--buried-documents", "2",
                                    "--train-documents", "150", "--test-documents", "60"], out)
    done = run_bench("lexical_rare.py", ["--data", str(documents / "topics" / "train.csv"), "--label-column",
                                         "labels", "--label-delimiter", ",", "--test-data",
                                         str(documents / "topics" / "test.csv"), "--variants", "member", "no NB, C=4"],
                     out)
    (record,) = records(out / "lexical_rare.json")
    assert [row["variant"] for row in record["variants"]] == ["member", "no NB, C=4"]
    assert all(0.5 < row["test_mean_roc_auc"] <= 1 for row in record["variants"])
    assert record["variants"][0]["fit"]["fits"] > 0 and "rare" in done.stdout


def test_explain_benchmark(checkpoint_copy, tmp_path):
    out = tmp_path / "out"
    done = run_bench("explain.py", ["--checkpoint", str(checkpoint_copy), "--texts", "2", "--max-k", "2",
                                    "--min-words", "3", "--random-orders", "1", "--threads", "1"], out)
    (record,) = records(out / "explain_faithfulness.json")
    assert record["texts"] == 2 and set(record["delete"]) == {"random", "occlusion", "gradient_x_input",
                                                              "integrated_gradients"}
    assert all(len(entry["mean_drop"]) == 2 for entry in record["mask"].values())
    assert 0 < record["mean_base_score"] <= 1  # each drop is also given as a share of the score before removal
    assert all("relative_aopc" in entry for entry in record["delete"].values())
    assert (out / "explain_deletion.png").stat().st_size > 0 and "AOPC" in done.stdout
    run_bench("explain.py", ["--checkpoint", str(checkpoint_copy), "--texts", "2", "--min-words", "3",
                             "--cost-only", "--threads", "1"], out)
    cost = json.loads((out / "explain_faithfulness.json").read_text())[-1]["cost"]
    assert all(figures["wall_seconds_per_text"] > 0 for figures in cost.values())


def test_fairness_benchmark(multilabel_checkpoint, tmp_path):
    """The mixed load at its smallest: the worst-case requests built from the server's limits, each alone, then
    /predict without and with an /explain client, every answer counted."""
    out = tmp_path / "out"
    done = run_bench("fairness.py", ["--checkpoint", str(multilabel_checkpoint), "--seconds", "2",
                                     "--predict-clients", "2", "--explain-clients", "1", "--max-requests", "40",
                                     "--solo-repeats", "1", "--port", str(free_port())], out, WORKERS="1")
    (record,) = records(out / "bench_fairness.json")
    limits = record["limits"]
    assert (record["predict_clients"], record["explain_clients"]) == (2, 1)
    assert record["deadline_s"] == limits["request_timeout"] + 1
    explain, predict = record["worst_case"]["/explain"], record["worst_case"]["/predict"]
    assert explain["labels"] == 6 and 0 < explain["cost"] <= limits["max_request_cost"]
    # as costly as the limits allow: every text it may hold, or the budget all but spent
    assert explain["texts"] == limits["max_explain_texts"] or explain["cost"] > 0.9 * limits["max_request_cost"]
    assert explain["longest_text_chars"] <= limits["max_chars"] and 0 < predict["texts"] <= limits["max_texts"]
    assert [(row["route"], row["status"]) for row in record["solo"]] == [("/explain", "200"), ("/predict", "200")]
    assert [(name, set(phase)) for name, phase in record["phases"].items()] == [
        ("predict only", {"/predict"}), ("mixed", {"/predict", "/explain"})]
    for phase in record["phases"].values():
        assert 0 < sum(route["requests"] for route in phase.values()) <= 40
        for route in phase.values():
            assert unexpected(route["statuses"]) == {} and route["max_ms"] / 1000 <= record["deadline_s"]
        assert phase["/predict"]["statuses"]["200"] > 0 and phase["/predict"]["p50_ms"] <= phase["/predict"]["p99_ms"]
    goals = record["goals"]
    assert len(goals) == 4 and all(isinstance(goal["met"], bool) for goal in goals)
    assert goals[1]["met"] and goals[3]["met"]  # no answer past its deadline, none but 200 and deliberate refusals
    assert "| goal |" in done.stdout and "| mixed | /explain |" in done.stdout


def test_int8_batch_effect_benchmark(exported_checkpoint, tmp_path):
    """A served score's move with its batch neighbours, at its smallest: float32 and static int8 keep a text's
    scores whatever shares its forward pass (under 1e-5; 2e-9 measured); dynamic int8, whose activation scales
    would be the batch's, scores each text alone, so its scores do not move at all (docs/SERVING.md)."""
    out = tmp_path / "out"
    done = run_bench("int8_batch_effect.py", ["--checkpoint", str(exported_checkpoint), "--texts", "8",
                                              "--batch-sizes", "2", "4", "--shuffles", "1"], out)
    (record,) = records(out / "int8_batch_effect.json")
    rows = {row["backend"]: row for row in record["rows"]}
    assert list(rows) == ["torch fp32", "onnx fp32", "torch int8 (dynamic)", "onnx int8", "onnx fused int8",
                          "onnx fused int8 static"]
    assert isinstance(record["machine"]["avx512_vnni"], bool) and record["texts"] == 8
    for name, row in rows.items():
        assert [batch["batch_size"] for batch in row["batches"]] == [2, 4] and row["alone_texts_per_s"] > 0
        assert row["against_torch_fp32"]["max"] < 1e-2  # int8 near float32 on the tiny model (2e-4 measured)
        for batch in row["batches"]:
            assert 0 <= batch["mean"] <= batch["p99"] <= batch["max"] and batch["texts_per_s"] > 0
            assert 0 <= batch["between_batches_max"] <= 2 * batch["max"]
            assert [way["neighbours"] for way in batch["by_neighbours"]] == ["shuffle 1", "long neighbours",
                                                                            "short neighbours"]
            assert batch["labels"] == 3 * 8 * 6 and 0 <= batch["label_flips"] <= batch["labels"]
            if "int8" in name and "static" not in name:
                assert batch["max"] == 0.0 and batch["between_batches_max"] == 0.0
            assert batch["max"] < 1e-5 and batch["label_flips"] == 0
    assert "| onnx fused int8 | 4 |" in done.stdout


def test_long_texts_benchmark(checkpoint_copy, tmp_path):
    """Cut, a text's cost stays flat with its length; in windows it grows with it (about linearly)."""
    out = tmp_path / "out"
    run_bench("long_texts.py", ["--checkpoint", str(checkpoint_copy), "--lengths", "20", "400", "--texts", "4",
                                "--batch-size", "4", "--backends", "torch"], out)
    (record,) = records(out / "bench_long_texts.json")
    rows = {(row["long_texts"], row["words"]): row for row in record["rows"]}
    assert set(rows) == {("truncate", 20), ("windows", 20), ("truncate", 400), ("windows", 400)}
    assert rows["truncate", 400]["windows_per_text"] == 1.0 and rows["windows", 400]["windows_per_text"] > 5
    assert rows["windows", 400]["tokens_per_text"] > 5 * rows["truncate", 400]["tokens_per_text"]
    assert rows["windows", 20]["windows_per_text"] == rows["truncate", 20]["windows_per_text"]
    assert (out / "bench_long_texts.png").stat().st_size > 10_000


def test_long_documents_are_built_from_disjoint_rows(tmp_path):
    out = tmp_path / "docs"
    run_bench("long_documents.py", ["--output-dir", str(out), "--buried-documents", "20", "--train-documents", "50",
                                    "--test-documents", "20"], tmp_path / "records")
    import pandas as pd

    train, short, long = (pd.read_csv(out / "buried" / name) for name in ("train.csv", "test_short.csv",
                                                                            "test_long.csv"))
    assert not set(train.id) & set(short.id) and len(long) == 20
    assert long.comment_text.str.split().str.len().min() >= 400
    assert long.iloc[1::2, 2:].to_numpy().sum(axis=1).min() >= 1 and long.iloc[::2, 2:].to_numpy().sum() == 0
    topics = pd.read_csv(out / "topics" / "train.csv")
    assert len(topics) == 50 and topics.text.str.split().str.len().min() > 100
    assert topics["labels"].str.split(",").str.len().between(1, 3).all()


def test_explain_benchmark_over_long_texts(checkpoint_copy, tmp_path):
    """The deletion curves over every word of held-out texts buried in 300 words, read in windows."""
    out = tmp_path / "out"
    done = run_bench("explain.py", ["--checkpoint", str(checkpoint_copy), "--texts", "2", "--max-k", "2",
                                    "--min-words", "3", "--random-orders", "1", "--bury-in", "300",
                                    "--long-texts", "windows", "--threads", "1"], out)
    (record,) = records(out / "explain_faithfulness.json")
    assert record["settings"]["bury_in"] == 300 and record["mean_words"] > 300
    assert record["texts"] == 2 and record["pairs"] >= 2  # the labels predicted on each text alone, once buried
    assert (out / "explain_deletion_long.png").stat().st_size > 0 and "AOPC" in done.stdout


def test_unknown_intents_are_held_out_of_training_and_labelled_oos_in_test(tmp_path):
    out = tmp_path / "unknown"
    run_bench("unknown_intents.py", ["--output-dir", str(out), "--held-out", "0.2", "--seed", "3"], tmp_path / "r")
    import pandas as pd

    train, val, test = (pd.read_csv(out / name) for name in ("train.csv", "val.csv", "test.csv"))
    unknown = set(json.loads((out / "unknown_intents.json").read_text())["unknown_intents"])
    assert len(unknown) == 30 and not unknown & set(train.intent) and not unknown & set(val.intent)
    source = pd.read_csv(ROOT.parent / "shared" / "data" / "clinc150" / "test.csv")
    assert len(test) == len(source) and (test.intent == "oos").sum() == source.intent.isin(unknown).sum() == 900
    assert set(train.intent) == set(test.intent) - {"oos"} and len(train) == 120 * 100


def test_active_learning_benchmark(toxic_csv, tiny_bert, tmp_path):
    """The simulation at its smallest: a shared first round, then one round of suggested and of random rows, each
    trained through main.py with the picks as --extra-data and evaluated on the same test rows."""
    out, work = tmp_path / "out", tmp_path / "work"
    done = run_bench("active_learning.py", ["--data", str(toxic_csv), "--start", "0.3", "--rounds", "1",
                                            "--per-round", "20", "--test-split", "0.3", "--work-dir", str(work),
                                            "--train-args", "--model-name-or-path", str(tiny_bert),
                                            "--freeze-layers", "0", "--batch-size", "16"], out)
    (record,) = records(out / "active_learning.json")
    arms = record["arms"]
    assert list(arms) == ["random", "uncertainty+disagreement+diversity"]
    for rounds in arms.values():
        assert [r["round"] for r in rounds] == [0, 1] and rounds[1]["picked"] == 20
        assert rounds[1]["training_rows"] == rounds[0]["training_rows"] + 20  # each picked text counted once
        assert 0 < rounds[1]["mean_roc_auc"] <= 1
    picks = [set(json.loads((work / name / "picks_1.json").read_text())) for name in ("random",
                                                                                      "uncertainty_disagreement_diversity")]
    assert picks[0] != picks[1] and all(len(p) == 20 for p in picks)
    assert record["labels_saved"]["uncertainty+disagreement+diversity"]["mean_roc_auc"][0]["round"] == 1
    assert (out / "active_learning.png").stat().st_size > 0 and "rows saved against random" in done.stdout


def test_label_audit_benchmark(conference_csv, tiny_bert, tmp_path):
    """Planted flips at the smallest size: one seed on 300 titles (15 flipped), the audit and the tiny transformer
    fine-tuned on each fold through train.run, every ranking's recall and precision at the four cut-offs."""
    out = tmp_path / "out"
    done = run_bench("label_audit.py", ["--data", str(conference_csv), "--model-name-or-path", str(tiny_bert),
                                        "--finetune-epochs", "0.25", "--finetune-max-length", "16",
                                        "--work-dir", str(tmp_path / "work")], out)
    (record,) = records(out / "label_audit.json")
    means, run = record["means"], record["runs"][0]
    names = list(means)
    assert names[0].startswith("audit (cleanlab, TF-IDF member") and names[-1] == "chance"
    assert "transformer fine-tuned per fold: its loss alone" in names and (run["rows"], run["flipped"]) == (300, 15)
    for figures in means.values():
        assert list(figures) == ["1.0%", "2.5%", "5.0%", "10.0%"]
        assert all(0 <= f["recall"] <= 1 and 0 <= f["precision"] <= 1 for f in figures.values())
    assert means[names[0]]["10.0%"]["recall"] > 0.2  # the member carries it past chance (0.1) beside random vectors
    assert run["finetune_seconds"] > 0 and isinstance(record["goal"]["met"], bool)
    assert (out / "label_audit_conference_small.png").stat().st_size > 0 and "| ranking |" in done.stdout
