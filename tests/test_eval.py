"""Evaluation of a checkpoint: the report's metrics (per label, at 0.5 and at the tuned thresholds), real PNG plots
and the self-contained HTML page (its images open in a browser in tests/test_page.py)."""

import base64
import dataclasses
import json
import re
import shutil

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from conftest import CONFERENCES, TOXIC_LABELS, api_client, set_environment
from sklearn.metrics import f1_score, roc_auc_score

import eval as evaluation
from app import create_app
from inferer import ModelInferer
from utils.checkpoint.contract import read_info
from utils.config import make_config
from utils.data.prepare import read_test_set
from utils.data.readers import DataError
from utils.evaluation.metrics import compute_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def toxic_config(toxic_csv, output_dir, **extra):
    """The data settings conftest trained with, so the test split is the one training held out."""
    return make_config(task="multilabel", data=str(toxic_csv), text_column="comment_text",
                       label_columns=TOXIC_LABELS, test_split=0.2, val_split=0.2, output_dir=str(output_dir),
                       **extra)


def conference_config(conference_csv, output_dir):
    return make_config(task="multiclass", data=str(conference_csv), text_column="Title", label_column="Conference",
                       test_split=0.2, val_split=0.2, output_dir=str(output_dir))


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    height, width = matplotlib.image.imread(path).shape[:2]
    assert height > 100 and width > 100


@pytest.fixture(scope="module")
def multilabel_report(tmp_path_factory, multilabel_checkpoint, toxic_csv):
    output_dir = tmp_path_factory.mktemp("eval_ml")
    return evaluation.run(toxic_config(toxic_csv, output_dir), multilabel_checkpoint), output_dir


def test_evaluate_matches_scores_computed_apart(multilabel_checkpoint, toxic_csv, tmp_path):
    inferer = ModelInferer(multilabel_checkpoint)
    data = read_test_set(toxic_config(toxic_csv, tmp_path), inferer.label_names)
    result = evaluation.evaluate(inferer, data, batch_size=16)
    metrics, scores = result["metrics"], result["scores"]
    assert scores.shape == (80, 6)
    thresholds = np.array(read_info(multilabel_checkpoint).thresholds)
    assert metrics["examples"] == 80
    assert metrics["at_tuned"]["micro_f1"] == pytest.approx(f1_score(data.labels.ravel(),
                                                                     (scores >= thresholds).ravel()))
    assert metrics["at_0.5"]["micro_f1"] == pytest.approx(f1_score(data.labels.ravel(), (scores >= 0.5).ravel()))
    for j, name in enumerate(TOXIC_LABELS):
        row = metrics["per_label"][name]
        assert row["threshold"] == pytest.approx(thresholds[j])
        assert row["positives"] == int(data.labels[:, j].sum())
        if row["positives"]:
            assert row["roc_auc"] == pytest.approx(roc_auc_score(data.labels[:, j], scores[:, j]))
    lengths = [len(ids) for ids in inferer.tokenizer(data.texts)["input_ids"]]
    assert metrics["truncated_texts"] == sum(n > 64 for n in lengths) > 0


def test_multilabel_report_and_plot(multilabel_report, multilabel_checkpoint, toxic_csv):
    report, output_dir = multilabel_report
    saved = json.loads((output_dir / "eval_report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["checkpoint"] == str(multilabel_checkpoint)
    assert saved["data"] == str(toxic_csv) and saved["quantized"] is False
    metrics = saved["metrics"]
    assert set(metrics["per_label"]) == set(TOXIC_LABELS)
    for block in ("at_0.5", "at_tuned"):
        assert {"micro_f1", "macro_f1", "micro_precision", "micro_recall", "hamming_loss"} <= metrics[block].keys()
    assert 0 <= metrics["mean_roc_auc"] <= 1 and 0 <= metrics["mean_pr_auc"] <= 1
    assert metrics["examples"] == 80
    assert saved["plots"] == [str(output_dir / "curves.png")]
    assert_png(output_dir / "curves.png")


def test_multiclass_report_and_confusion_matrix(multiclass_checkpoint, conference_csv, tmp_path):
    report = evaluation.run(conference_config(conference_csv, tmp_path), multiclass_checkpoint)
    metrics = json.loads((tmp_path / "eval_report.json").read_text())["metrics"]
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (5, 5) and matrix.sum() == metrics["examples"] == 60
    assert metrics["accuracy"] == pytest.approx(np.trace(matrix) / 60)
    assert set(CONFERENCES) <= set(metrics["per_class"])
    assert report["plots"] == [str(tmp_path / "confusion_matrix.png")]
    assert_png(tmp_path / "confusion_matrix.png")


def test_quantized_evaluation_writes_its_own_report(multilabel_checkpoint, toxic_csv, tmp_path):
    # the tiny model's scores differ by ~1e-5 between texts, so int8 noise says nothing of accuracy here
    report = evaluation.run(toxic_config(toxic_csv, tmp_path, quantize=True), multilabel_checkpoint)
    assert report["quantized"] is True and report["metrics"]["examples"] == 80
    assert json.loads((tmp_path / "eval_report_int8.json").read_text())["quantized"] is True
    assert not (tmp_path / "eval_report.json").exists()
    assert_png(tmp_path / "curves_int8.png")


def test_evaluation_on_a_given_test_file(multilabel_checkpoint, toxic_csv, tmp_path):
    test = tmp_path / "test.csv"
    pd.read_csv(toxic_csv).head(25).to_csv(test, index=False)
    report = evaluation.run(toxic_config(toxic_csv, tmp_path, test_data=str(test)), multilabel_checkpoint)
    assert report["data"] == str(test) and report["metrics"]["examples"] == 25


def test_a_test_file_is_read_with_the_columns_training_read(multiclass_checkpoint, conference_csv, tmp_path):
    """`--mode eval --test-data FILE` with no column flag: the text and label columns the checkpoint was trained
    from (a file of its own layout), not the default dataset's."""
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(multiclass_checkpoint, checkpoint)
    saved = json.loads((checkpoint / "training_config.json").read_text())
    (checkpoint / "training_config.json").write_text(json.dumps(saved | {"text_column": "body",
                                                                          "label_column": "venue"}))
    test = tmp_path / "titles.csv"
    pd.read_csv(conference_csv).head(30).rename(columns={"Title": "body", "Conference": "venue"}).to_csv(test,
                                                                                                       index=False)
    config = make_config(mode="eval", task="auto", test_data=str(test), output_dir=str(tmp_path / "out"))
    report = evaluation.run(config, checkpoint)
    assert report["data"] == str(test) and report["metrics"]["examples"] == 30


def test_summary_table_lists_every_label(multilabel_report):
    table = evaluation.summary_table("multilabel", multilabel_report[0]["metrics"])
    assert "mean ROC AUC" in table
    assert all(name in table for name in TOXIC_LABELS)


def test_test_data_with_other_labels_than_the_checkpoint(conference_csv, tmp_path):
    with pytest.raises(DataError, match="differ"):
        read_test_set(conference_config(conference_csv, tmp_path), ["INFOCOM", "ISCAS"])


def embedded_images(html: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_html_report_beside_the_json_holds_every_part(multilabel_report, multilabel_checkpoint):
    report, output_dir = multilabel_report
    html = (output_dir / "eval_report.html").read_text()
    images = embedded_images(html)
    assert len(images) == 3 and all(image[:8] == PNG_MAGIC and len(image) > 5000 for image in images)
    for alt in ("ROC and precision-recall curves per label", "reliability diagrams per label",
                "validation metric over training steps"):  # metrics.jsonl found beside the checkpoint
        assert f'alt="{alt}"' in html
    assert "src=\"http" not in html and "<script" not in html  # self-contained and inert
    for heading in ("Summary", "Per label", "Calibration", "Training", "Cost of int8 and bf16"):
        assert f"<h2>{heading}" in html
    assert "Jaccard index (samples-averaged)" in html and "subset accuracy" in html
    calibration = report["metrics"]["calibration"]["per_label"]
    for name in TOXIC_LABELS:
        assert f"<td>{name}</td>" in html and f"{calibration[name]:.4f}" in html
    assert "No int8 or bf16 evaluation beside this report yet" in html


def test_html_report_escapes_strings_and_compares_int8_when_measured(multilabel_checkpoint, toxic_csv, tmp_path):
    hostile = tmp_path / "<script>alert(1)<!--.csv"
    hostile.write_bytes(toxic_csv.read_bytes())
    evaluation.run(toxic_config(hostile, tmp_path), multilabel_checkpoint)
    evaluation.run(toxic_config(hostile, tmp_path, quantize=True), multilabel_checkpoint)
    html = (tmp_path / "eval_report_int8.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;!--.csv" in html
    assert "<td>fp32</td>" in html and "<td>int8</td>" in html and "mean ROC AUC vs fp32" in html
    fp32 = json.loads((tmp_path / "eval_report.json").read_text())["metrics"]["mean_roc_auc"]
    int8 = json.loads((tmp_path / "eval_report_int8.json").read_text())["metrics"]["mean_roc_auc"]
    assert f"{int8 - fp32:.4f}" in html


def test_multiclass_html_report_has_the_confusion_matrix(multiclass_checkpoint, conference_csv, tmp_path):
    evaluation.run(conference_config(conference_csv, tmp_path), multiclass_checkpoint)
    html = (tmp_path / "eval_report.html").read_text()
    assert 'alt="confusion matrix"' in html and len(embedded_images(html)) == 4
    assert "expected calibration error of the top class" in html and "ECE (one vs rest)" in html


def test_a_checkpoint_without_graphs_is_measured_with_torch_and_says_why(multilabel_report, multilabel_checkpoint,
                                                                        monkeypatch):
    report, output_dir = multilabel_report
    served = api_client(monkeypatch, multilabel_checkpoint).get("/metadata").get_json()
    assert report["backend"] == served["backend"] == "torch"
    assert report["backend_choice"] == served["backend_choice"]
    assert "no variant measured by export" in report["backend_choice"]["reason"]
    assert "torch" not in report  # torch itself was measured: nothing to put beside it
    assert "no variant measured by export" in (output_dir / "eval_report.html").read_text()


@pytest.mark.parametrize("backend", ["auto", "onnx-fused-int8"])
def test_eval_measures_the_backend_the_server_serves(exported_checkpoint, toxic_csv, tmp_path, monkeypatch, backend):
    """Eval's --backend (auto by default) evaluates what the server's BACKEND serves: the same choice, the same
    scores. Both sides score each text alone: under dynamic int8 the activation scales are a batch's, so a score
    moves with its neighbours (1.1e-4 here, docs/SERVING.md), and the tiny model's scores all lie within 1.4e-4
    of each other, so batches of 128 against 40 reorder them and ROC AUC moved by 0.04 (issue 34). Alone, the
    inputs are the same and the scores equal to the bit; the dynamic int8 graph is asked for by name too, since
    auto picks it only where export timed it fastest."""
    report = evaluation.run(toxic_config(toxic_csv, tmp_path, backend=backend, eval_batch_size=1),
                            exported_checkpoint)
    set_environment(monkeypatch, {"CHECKPOINT_PATH": str(exported_checkpoint), "BACKEND": backend})
    client = create_app().test_client()
    served = client.get("/metadata").get_json()
    assert (report["backend"], report["backend_choice"]) == (served["backend"], served["backend_choice"])
    data = read_test_set(toxic_config(toxic_csv, tmp_path), TOXIC_LABELS)
    predictions = [client.post("/predict", json={"texts": [text]}).get_json()["predictions"][0]
                   for text in data.texts]
    scores = np.array([[p["scores"][name] for name in TOXIC_LABELS] for p in predictions])
    expected = compute_metrics("multilabel", data.labels, scores, TOXIC_LABELS, np.array(served["thresholds"]))
    for name in TOXIC_LABELS:
        assert report["metrics"]["per_label"][name]["roc_auc"] == pytest.approx(
            expected["per_label"][name]["roc_auc"], abs=1e-6)
        assert report["metrics"]["per_label"][name]["f1_at_tuned"] == expected["per_label"][name]["f1_at_tuned"]


def test_the_report_puts_torch_and_the_cost_per_label_beside_another_backend(exported_checkpoint, toxic_csv,
                                                                           tmp_path, capsys):
    report = evaluation.run(toxic_config(toxic_csv, tmp_path, backend="onnx-int8"), exported_checkpoint)
    assert report["backend"] == "onnx-int8" and report["backend_choice"]["reason"] == "asked for"
    saved = json.loads((tmp_path / "eval_report_onnx-int8.json").read_text())  # apart from what auto measures
    torch_inferer = ModelInferer(exported_checkpoint, backend="torch", precision="fp32")
    reference = evaluation.evaluate(torch_inferer, read_test_set(toxic_config(toxic_csv, tmp_path), TOXIC_LABELS))
    torch_block = saved["torch"]
    assert torch_block["metrics"]["mean_roc_auc"] == pytest.approx(reference["metrics"]["mean_roc_auc"], abs=1e-9)
    for name in TOXIC_LABELS:
        mine, theirs = saved["metrics"]["per_label"][name], torch_block["metrics"]["per_label"][name]
        assert torch_block["cost"]["per_label"][name] == pytest.approx(
            {"roc_auc": mine["roc_auc"] - theirs["roc_auc"], "f1": mine["f1_at_tuned"] - theirs["f1_at_tuned"]})
    assert 0 < torch_block["max_score_difference"] < 1e-2  # int8: near, not equal
    printed = capsys.readouterr().out
    assert "backend onnx-int8 (onnx-int8: asked for)" in printed and "float32 PyTorch on the same rows" in printed
    assert "cost of onnx-int8 (minus torch)" in printed and all(name in printed for name in TOXIC_LABELS)
    html = (tmp_path / "eval_report_onnx-int8.html").read_text()
    assert "<h2>Backend" in html and "<th>ROC AUC torch</th>" in html and "<th>F1 cost</th>" in html
    toxic = torch_block["cost"]["per_label"]["toxic"]["roc_auc"]
    assert f"{toxic:.4f}" in html


def test_multiclass_cost_is_accuracy_macro_f1_and_f1_per_class(multiclass_checkpoint, conference_csv, tmp_path):
    import export

    folder = tmp_path / "checkpoint"
    shutil.copytree(multiclass_checkpoint, folder)
    export.export_graphs(folder)  # the graphs alone: nothing measured, so auto would stay on torch
    config = dataclasses.replace(conference_config(conference_csv, tmp_path), backend="onnx-int8")
    report = evaluation.run(config, folder)
    cost, reference = report["torch"]["cost"], report["torch"]["metrics"]
    assert cost["accuracy"] == pytest.approx(report["metrics"]["accuracy"] - reference["accuracy"])
    assert cost["macro_f1"] == pytest.approx(report["metrics"]["macro_f1"] - reference["macro_f1"])
    assert set(cost["per_label"]) == set(CONFERENCES)
    for name in CONFERENCES:
        assert cost["per_label"][name]["f1"] == pytest.approx(
            report["metrics"]["per_class"][name]["f1-score"] - reference["per_class"][name]["f1-score"])
    assert "<th>F1 torch</th>" in (tmp_path / "eval_report_onnx-int8.html").read_text()
