"""ONNX export (`main.py --mode export`): the plain, int8, fused and static int8 graphs checked against PyTorch on
the tiny checkpoints trained by conftest and real texts, every model family's fusion, the calibration data, and
the measurement on validation rows (variants.json) that BACKEND=auto reads."""

from __future__ import annotations

import collections
import json
import shutil

import numpy as np
import onnx
import pandas as pd
import pytest
from conftest import TOXIC_LABELS

import export
import main
from inferer import ModelInferer
from utils.checkpoint import LEXICAL, ONNX_FILES, TRANSFORMER, VARIANTS_FILE, CheckpointFolder

# Largest |score - PyTorch float32 score| on the real texts below (82 toxic comments, 80 paper titles), measured in
# two runs with the tiny checkpoints (multi-label / multi-class) on an AMD EPYC Zen 5 (AVX-512 with VNNI):
# float32 graphs up to 1.1e-8 / 3.5e-9 (plain and fused alike), so 1e-6 leaves room for other CPUs' float kernels
# (AVX2 sums in another order); dynamic int8 up to 1.5e-4 / 7.8e-5 (plain and fused alike) and static int8
# 1.1e-4 / 6e-5, so 1e-3 allows other CPUs' int8 kernels (AVX2 without VNNI saturates u8 x s8 sums).
TOLERANCES = {"onnx": 1e-6, "onnx-fused": 1e-6, "onnx-int8": 1e-3, "onnx-fused-int8": 1e-3,
              "onnx-fused-int8-static": 1e-3}
GRAPHS = list(TOLERANCES)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, exported_checkpoint, multiclass_checkpoint):
    """Both tasks' checkpoints with every graph: the multi-class one written here by the command line."""
    folder = tmp_path_factory.mktemp("export_multiclass") / "checkpoint"
    shutil.copytree(multiclass_checkpoint, folder)
    assert main.main(["--task", "multiclass", "--mode", "export", "--checkpoint", str(folder),
                      "--onnx-static-int8"]) == 0
    return {"multilabel": exported_checkpoint, "multiclass": folder}


@pytest.fixture(scope="module")
def real_texts(toxic_csv, conference_csv) -> dict[str, list[str]]:
    return {"multilabel": pd.read_csv(toxic_csv).comment_text.head(80).tolist() + ["", "ok"],
            "multiclass": pd.read_csv(conference_csv).Title.head(80).tolist()}


def operators(path) -> collections.Counter:
    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("task", ["multilabel", "multiclass"])
@pytest.mark.parametrize("backend", GRAPHS)
def test_every_graph_scores_like_pytorch(exported, real_texts, task, backend):
    texts, tolerance = real_texts[task], TOLERANCES[backend]
    torch_inferer = ModelInferer(exported[task], precision="fp32")
    reference, ref_truncated = torch_inferer.score_batch(texts, batch_size=16)
    graph = ModelInferer(exported[task], backend=backend)
    scores, truncated = graph.score_batch(texts, batch_size=16)
    assert truncated == ref_truncated
    assert np.abs(scores - reference).max() <= tolerance
    # same thresholds and label order: the same labels, except for a score within the tolerance of its
    # threshold, which rounding may put on either side
    labels = [set(p["labels"]) for p in graph.predict_batch(texts)]
    expected = [set(p["labels"]) for p in torch_inferer.predict_batch(texts)]
    names = torch_inferer.label_names
    cut = torch_inferer.thresholds if torch_inferer.thresholds is not None else reference.max(axis=1, keepdims=True)
    clear = np.abs(reference - cut) > tolerance
    for row, (got, want) in enumerate(zip(labels, expected, strict=True)):
        decided = {names[j] for j in range(len(names)) if clear[row, j]}
        assert got & decided == want & decided


@pytest.mark.parametrize("backend", ["onnx", "onnx-fused"])
def test_batch_size_and_padding_do_not_change_float32_scores(exported, real_texts, backend):
    texts = real_texts["multilabel"]
    graph = ModelInferer(exported["multilabel"], backend=backend)
    one_by_one = np.vstack([graph.score_batch([t])[0] for t in texts[:12]])
    np.testing.assert_allclose(graph.score_batch(texts[:12], batch_size=5)[0], one_by_one, atol=1e-5)


def test_the_fused_graph_runs_one_operator_per_attention_and_layer_norm(exported):
    layers = 2  # conftest's tiny BERT
    fused = operators(exported["multilabel"] / ONNX_FILES["onnx-fused"])
    assert fused["Attention"] == layers and fused["EmbedLayerNormalization"] == 1
    assert fused["SkipLayerNormalization"] == 2 * layers and fused["BiasGelu"] == layers
    plain = operators(exported["multilabel"] / ONNX_FILES["onnx"])
    assert fused["Softmax"] == 0 and plain["Softmax"] == layers and sum(fused.values()) < sum(plain.values())
    int8 = operators(exported["multilabel"] / ONNX_FILES["onnx-fused-int8"])
    assert int8["QAttention"] == layers and int8["MatMulInteger"] > 0  # weights int8, activations per batch
    static = operators(exported["multilabel"] / ONNX_FILES["onnx-fused-int8-static"])
    # the activations quantized with their calibrated ranges (QuantizeLinear), the weights stored int8
    assert static["QuantizeLinear"] >= static["MatMul"] == 3 * layers and static["DynamicQuantizeLinear"] == 0
    assert static["DequantizeLinear"] == static["QuantizeLinear"] + static["MatMul"]


@pytest.mark.parametrize("model_type", ["roberta", "distilbert"])
def test_roberta_and_distilbert_graphs_fuse_too(model_type, request, tiny_trainer, toxic_csv, real_texts, tmp_path):
    backbone = request.getfixturevalue(f"tiny_{model_type}")
    checkpoint = tiny_trainer(tmp_path / "run", backbone, model_type, "multilabel", toxic_csv,
                              max_train_samples=64).checkpoint
    written = export.export_graphs(checkpoint)
    assert set(written) == {"onnx", "onnx-int8", "onnx-fused", "onnx-fused-int8"}
    assert operators(written["onnx-fused"])["Attention"] == 2  # RoBERTa's embeddings stay unfused
    texts = real_texts["multilabel"]
    reference = ModelInferer(checkpoint, precision="fp32").score_batch(texts)[0]
    for backend in written:
        scores = ModelInferer(checkpoint, backend=backend).score_batch(texts)[0]
        assert np.abs(scores - reference).max() <= TOLERANCES[backend], backend


def test_static_int8_calibrates_on_real_texts_as_serving_feeds_them(multilabel_checkpoint, toxic_csv):
    texts = pd.read_csv(toxic_csv).comment_text.head(70).tolist()
    calibration = export.CalibrationBatches(multilabel_checkpoint, texts, batch_size=32)
    batches = list(iter(calibration.get_next, None))
    assert [len(b["input_ids"]) for b in batches] == [32, 32, 6]
    inferer = ModelInferer(multilabel_checkpoint)
    for batch in batches:
        assert set(batch) == {"input_ids", "attention_mask"} and batch["input_ids"].dtype == np.int64
        assert batch["input_ids"].shape[1] <= inferer.max_length
        assert (batch["input_ids"][batch["attention_mask"] == 0] == inferer.pad_id).all()


def test_export_measures_every_graph_on_the_validation_rows(exported):
    for task, metric in (("multilabel", "mean_roc_auc"), ("multiclass", "accuracy")):
        folder = CheckpointFolder(exported[task])
        report = folder.variants()
        assert report is not None and report.metric == metric and report.reference == "torch"
        assert report.checkpoint_id == folder.checkpoint_id()
        assert report.rows == folder.metrics()["validation_rows"] and report.threads == export.MEASURE_THREADS
        assert [v.backend for v in report.variants] == ["torch", *export.DEFAULT_VARIANTS, export.STATIC_VARIANT]
        for variant in report.variants:
            assert variant.texts_per_s > 0 and variant.value is not None
            assert variant.max_score_difference <= TOLERANCES.get(variant.backend, 0.0)
        costs = {v.backend: v.cost for v in report.variants}
        assert costs["torch"] == 0.0
        for fp32 in ("onnx", "onnx-fused"):  # the float32 graphs compute the same scores, so the same metric
            cost = costs[fp32]
            assert cost is not None and abs(cost) <= 1e-9


def test_a_blended_checkpoint_exports_its_transformer_and_measures_the_blend(exported_blend_checkpoint, real_texts):
    folder = CheckpointFolder(exported_blend_checkpoint)
    assert set(folder.info.members) == {TRANSFORMER, LEXICAL}
    report = folder.variants()
    assert report is not None and [v.backend for v in report.variants] == ["torch", *export.DEFAULT_VARIANTS]
    texts = real_texts["multilabel"]
    reference = ModelInferer(exported_blend_checkpoint, precision="fp32")
    for backend in export.DEFAULT_VARIANTS:  # the graph replaces the transformer; the TF-IDF member stays
        graph = ModelInferer(exported_blend_checkpoint, backend=backend)
        assert set(graph.member_scores(texts[:4])[0]) == {TRANSFORMER, LEXICAL}
        scores = graph.score_batch(texts)[0]
        assert np.abs(scores - reference.score_batch(texts)[0]).max() <= TOLERANCES[backend], backend


def test_export_without_the_training_data_writes_the_graphs_unmeasured(multiclass_checkpoint, tmp_path, capsys):
    folder = shutil.copytree(multiclass_checkpoint, tmp_path / "checkpoint")
    settings = json.loads((folder / "training_config.json").read_text())
    (folder / "training_config.json").write_text(json.dumps(settings | {"data": str(tmp_path / "gone.csv")}))
    export.run(folder)
    assert all((folder / ONNX_FILES[v]).is_file() for v in export.DEFAULT_VARIANTS)
    assert not (folder / VARIANTS_FILE).exists() and not (folder / ONNX_FILES["onnx-fused-int8-static"]).exists()
    assert "BACKEND=auto will serve torch" in capsys.readouterr().err


def test_training_exports_and_measures_by_default(tiny_bert, toxic_csv, tmp_path):
    args = ["--task", "multilabel", "--data", str(toxic_csv), "--text-column", "comment_text",
            "--label-columns", ",".join(TOXIC_LABELS), "--model-name-or-path", str(tiny_bert), "--epochs", "1",
            "--max-train-samples", "64", "--max-length", "32", "--test-split", "0.2", "--val-split", "0.2",
            "--output-dir", str(tmp_path / "run")]
    assert main.main(args) == 0
    checkpoint = tmp_path / "run" / "checkpoint"
    assert all((checkpoint / ONNX_FILES[v]).is_file() for v in export.DEFAULT_VARIANTS)
    assert CheckpointFolder(checkpoint).variants() is not None
    assert main.main([*args, "--no-export-onnx", "--output-dir", str(tmp_path / "plain")]) == 0
    assert not list((tmp_path / "plain" / "checkpoint").glob("*.onnx"))


def test_export_to_a_chosen_file(tmp_path, multiclass_checkpoint):
    target = tmp_path / "out" / "classifier.onnx"
    assert main.main(["--task", "multiclass", "--mode", "export", "--checkpoint", str(multiclass_checkpoint),
                      "--output", str(target)]) == 0
    names = {"classifier.onnx", "classifier.int8.onnx", "classifier.fused.onnx", "classifier.fused.int8.onnx"}
    assert {p.name for p in (tmp_path / "out").iterdir()} == names
    assert not (multiclass_checkpoint / "model.onnx").exists() and not (multiclass_checkpoint / VARIANTS_FILE).exists()


def test_metadata_names_the_backend(exported):
    int8 = ModelInferer(exported["multilabel"], backend="onnx-fused-int8").metadata()
    assert (int8["backend"], int8["quantized"], int8["precision"]) == ("onnx-fused-int8", True, "fp32")
    assert int8["backend_choice"]["measured"]["backend"] == "onnx-fused-int8"
    assert ModelInferer(exported["multilabel"]).metadata()["backend"] == "torch"


def test_onnx_backend_without_an_export_says_how_to_make_one(multilabel_checkpoint):
    with pytest.raises(FileNotFoundError, match="--mode export"):
        ModelInferer(multilabel_checkpoint, backend="onnx-fused")


def test_onnx_backend_refuses_torch_only_options(exported):
    with pytest.raises(ValueError, match="backend"):
        ModelInferer(exported["multilabel"], backend="onnx", quantize=True)
    with pytest.raises(ValueError, match="backend"):
        ModelInferer(exported["multilabel"], backend="tensorrt")


def test_export_needs_a_checkpoint(capsys):
    assert main.main(["--mode", "export"]) == 2
    assert "--checkpoint" in capsys.readouterr().err
