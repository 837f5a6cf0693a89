"""ONNX export (`main.py --mode export`) and the ONNX Runtime backends of ModelInferer, checked against PyTorch
on the tiny checkpoints trained by conftest and real texts."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

import main
from inferer import ModelInferer

# fp32: the same graph in another runtime; scores differed by at most 5.6e-9 when measured (82 toxic texts, AMD
# EPYC, AVX2); the bound allows other CPUs' float kernels (AVX-512 sums in another order).
ONNX_FP32_TOLERANCE = 1e-6
# int8 (MatMul weights per channel, activations per batch): at most 1.3e-4 measured; 1e-3 allows other CPUs'
# int8 kernels (VNNI rounds differently).
ONNX_INT8_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def exported(tmp_path_factory, multilabel_checkpoint, multiclass_checkpoint):
    """Copies of both checkpoints with model.onnx and model.int8.onnx written by the command line."""
    folders = {}
    for task, checkpoint in (("multilabel", multilabel_checkpoint), ("multiclass", multiclass_checkpoint)):
        folder = tmp_path_factory.mktemp(f"export_{task}") / "checkpoint"
        shutil.copytree(checkpoint, folder)
        assert main.main(["--task", task, "--mode", "export", "--checkpoint", str(folder)]) == 0
        folders[task] = folder
    return folders


@pytest.fixture(scope="module")
def real_texts(toxic_csv, conference_csv) -> dict[str, list[str]]:
    return {"multilabel": pd.read_csv(toxic_csv).comment_text.head(80).tolist() + ["", "ok"],
            "multiclass": pd.read_csv(conference_csv).Title.head(80).tolist()}


@pytest.mark.parametrize("task", ["multilabel", "multiclass"])
@pytest.mark.parametrize("backend, tolerance", [("onnx", ONNX_FP32_TOLERANCE), ("onnx-int8", ONNX_INT8_TOLERANCE)])
def test_onnx_scores_match_pytorch(exported, real_texts, task, backend, tolerance):
    texts = real_texts[task]
    reference, ref_truncated = ModelInferer(exported[task], precision="fp32").score_batch(texts, batch_size=16)
    onnx = ModelInferer(exported[task], backend=backend)
    scores, truncated = onnx.score_batch(texts, batch_size=16)
    assert truncated == ref_truncated
    assert np.abs(scores - reference).max() <= tolerance
    if backend == "onnx":  # same thresholds and label order: the same labels, except for a score within
        # the tolerance of its threshold, which rounding may put on either side
        labels = [set(p["labels"]) for p in onnx.predict_batch(texts)]
        reference_inferer = ModelInferer(exported[task], precision="fp32")
        expected = [set(p["labels"]) for p in reference_inferer.predict_batch(texts)]
        names = reference_inferer.label_names
        cut = (reference_inferer.thresholds if reference_inferer.thresholds is not None
               else reference.max(axis=1, keepdims=True))
        clear = np.abs(reference - cut) > tolerance
        for row, (got, want) in enumerate(zip(labels, expected, strict=True)):
            decided = {names[j] for j in range(len(names)) if clear[row, j]}
            assert got & decided == want & decided


def test_onnx_batch_size_and_order_do_not_change_scores(exported, real_texts):
    texts = real_texts["multilabel"]
    onnx = ModelInferer(exported["multilabel"], backend="onnx")
    one_by_one = np.vstack([onnx.score_batch([t])[0] for t in texts[:12]])
    np.testing.assert_allclose(onnx.score_batch(texts[:12], batch_size=5)[0], one_by_one, atol=1e-5)


def test_onnx_metadata_names_the_backend(exported):
    int8 = ModelInferer(exported["multilabel"], backend="onnx-int8").metadata()
    assert (int8["backend"], int8["quantized"], int8["precision"]) == ("onnx-int8", True, "fp32")
    assert ModelInferer(exported["multilabel"]).metadata()["backend"] == "torch"


def test_export_to_a_chosen_file(tmp_path, multiclass_checkpoint):
    target = tmp_path / "out" / "classifier.onnx"
    assert main.main(["--task", "multiclass", "--mode", "export", "--checkpoint", str(multiclass_checkpoint),
                      "--output", str(target)]) == 0
    assert target.is_file() and (tmp_path / "out" / "classifier.int8.onnx").is_file()
    assert not (multiclass_checkpoint / "model.onnx").exists()


def test_onnx_backend_without_an_export_says_how_to_make_one(multilabel_checkpoint):
    with pytest.raises(FileNotFoundError, match="--mode export"):
        ModelInferer(multilabel_checkpoint, backend="onnx")


def test_onnx_backend_refuses_torch_only_options(exported):
    with pytest.raises(ValueError, match="backend"):
        ModelInferer(exported["multilabel"], backend="onnx", quantize=True)
    with pytest.raises(ValueError, match="backend"):
        ModelInferer(exported["multilabel"], backend="tensorrt")


def test_export_needs_a_checkpoint(capsys):
    assert main.main(["--mode", "export"]) == 2
    assert "--checkpoint" in capsys.readouterr().err
