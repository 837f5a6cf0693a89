"""Evaluation of a checkpoint: the report's metrics (per label, at 0.5 and at the tuned thresholds), real PNG plots
and the self-contained HTML page (its images open in a browser in tests/test_page.py)."""

import base64
import dataclasses
import json
import re
import shutil
import time
from html import escape as html_escape

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from conftest import CLINC_LAYOUT, CONFERENCES, TOXIC_LABELS, api_client, set_environment
from sklearn.metrics import f1_score, roc_auc_score

import eval as evaluation
from app import create_app
from inferer import ModelInferer
from utils.checkpoint.contract import read_info
from utils.config import make_config
from utils.data.prepare import read_test_set
from utils.data.readers import DataError
from utils.evaluation.metrics import compute_metrics
from utils.evaluation.plots import confusion_figure, curves_figure, pooled_reliability_figure

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


def headings(html: str) -> list[str]:
    return re.findall(r"<h2>(.*?)</h2>", html)


def test_the_report_of_six_labels_lists_them_whole_in_their_order(multilabel_report, toxic_csv):
    """At 6 labels nothing is folded: every label in its table, in label order, a reliability diagram each."""
    report, output_dir = multilabel_report
    html = (output_dir / "eval_report.html").read_text()
    assert headings(html) == ["Summary", "Members alone and the blend", "Per label",
                              "Labels most often missed or wrongly given", "Backend",
                              "ROC and precision-recall curves", "Calibration", "Training", "Recipe",
                              "Cost of int8 and bf16"]
    assert "<details>" not in html
    per_label = html.split("<h2>Per label</h2>")[1].split("<h2>")[0]
    assert re.findall(r"<tr><td>([a-z_]+)</td>", per_label) == TOXIC_LABELS
    mistakes = report["errors"]["label_errors"]
    assert sorted(row["label"] for row in mistakes) == sorted(TOXIC_LABELS)
    data = read_test_set(toxic_config(toxic_csv, output_dir), TOXIC_LABELS)
    totals = [row["missed"] + row["wrongly_given"] for row in mistakes]
    assert totals == sorted(totals, reverse=True)
    for row in mistakes:
        j = TOXIC_LABELS.index(row["label"])
        assert row["positives"] == int(data.labels[:, j].sum()) and row["missed"] <= row["positives"]
        assert len(row["missed_examples"]) == min(row["missed"], 2)


def clinc_config(clinc_csv, output_dir):
    return make_config(task="multiclass", data=str(clinc_csv), test_split=0.2, val_split=0.2,
                       output_dir=str(output_dir), **CLINC_LAYOUT)


def test_the_report_of_150_intents_puts_first_what_a_person_needs(clinc_checkpoint, clinc_csv, tmp_path):
    """The summary, the members, the 10 worst classes (all 150 folded), the confused pairs with their test texts;
    a confusion matrix of the most confused classes and one pooled calibration diagram."""
    shutil.copy(clinc_checkpoint.parent / "data_report.json", tmp_path)  # as when eval writes beside training
    started = time.monotonic()
    report = evaluation.run(clinc_config(clinc_csv, tmp_path), clinc_checkpoint)
    assert time.monotonic() - started < 60  # 150 x 150 cells and 150 diagrams took minutes
    html = (tmp_path / "eval_report.html").read_text()
    assert headings(html) == ["Summary", "Members alone and the blend", "Worst classes", "Most confused pairs",
                              "Backend", "ROC and precision-recall curves", "Confusion matrix", "Calibration",
                              "Training", "Recipe", "Cost of int8 and bf16", "Data"]
    assert "<th>F1 transformer alone</th><th>F1 tfidf alone</th>" in html  # each member beside the blend
    worst = html.split("<h2>Worst classes</h2>")[1].split("<h2>")[0]
    shown, folded = worst.split("<details>")
    assert shown.count("<tr>") == 1 + 10 and folded.count("<tr>") == 1 + 150
    per_class = report["metrics"]["per_class"]
    ranks = [(per_class[name]["support"] == 0, per_class[name]["f1-score"])
             for name in re.findall(r"<tr><td>([a-z0-9_]+)</td>", folded)]
    assert ranks == sorted(ranks) and len(ranks) == 150  # worst first, classes without a test row last
    assert re.findall(r'alt="([^"]+)"', html) == [
        "ROC and precision-recall curves per label", "confusion matrix of the most confused classes",
        "reliability diagram, pooled", "validation metric over training steps"]
    assert html.split("<h2>Data</h2>")[1].startswith("<details>")  # a line per intent, folded
    assert len(html) < 1_500_000  # was 12.7 MB

    names = read_info(clinc_checkpoint).labels
    matrix = np.array(report["metrics"]["confusion_matrix"])
    wrong = matrix - np.diag(np.diag(matrix))
    errors = report["errors"]
    assert errors["wrong_rows"] == wrong.sum() > 0 and errors["pairs"] == (wrong > 0).sum()
    pairs = errors["confused_pairs"]
    assert 0 < len(pairs) <= 15 and [p["count"] for p in pairs] == sorted(wrong[wrong > 0], reverse=True)[:15]
    test = read_test_set(clinc_config(clinc_csv, tmp_path), names)
    for pair in pairs:
        true, said = names.index(pair["true"]), names.index(pair["predicted"])
        assert wrong[true, said] == pair["count"] and pair["share"] == pytest.approx(pair["count"] / matrix[true].sum())
        texts = {text for text, label in zip(test.texts, test.labels, strict=True) if label == true}
        assert pair["examples"] and set(pair["examples"]) <= texts
        assert f"&ldquo;{html_escape(pair['examples'][0])}&rdquo;" in html


def test_figures_stay_readable_at_150_classes():
    """A legend of the 5 worst and 5 best curves, the rest grey; the matrix of the most confused classes; one
    calibration diagram."""
    rng = np.random.default_rng(0)
    names = [f"intent_{k:03d}" for k in range(150)]
    y_true = np.repeat(np.arange(150), 2)
    scores = rng.dirichlet(np.ones(150), size=300)
    figure = curves_figure(y_true, scores, names)
    legend_box = figure.axes[0].get_legend()
    assert legend_box is not None
    legend = [text.get_text() for text in legend_box.get_texts()]
    assert len(legend) == 11 and legend[-1] == "the other 140 (middle AUCs)"
    matrix = np.diag(np.full(150, 2))
    matrix[7, 7], matrix[7, 90], matrix[3, 3], matrix[3, 90] = 0, 2, 1, 1
    figure = confusion_figure(matrix.tolist(), names)
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["intent_003", "intent_007", "intent_090"]
    assert figure.get_size_inches()[0] <= 9
    assert len(confusion_figure(np.diag(np.full(20, 3)).tolist(), names[:20]).axes[0].get_xticklabels()) == 20
    assert len(pooled_reliability_figure("multiclass", y_true, scores).axes) == 1


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
