"""BACKEND=auto: which backend `backend_for` picks from what export measured (variants.json), and how
ModelInferer, the server's settings and /metadata show the choice."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import set_environment

import export
from app import create_app
from inferer import ModelInferer
from serving.settings import ServingSettings
from utils.checkpoint.contract import ONNX_FILES, VARIANTS_FILE, CheckpointFolder, VariantRecord, VariantsReport
from utils.inference.backends import MAX_COST, backend_for
from utils.inference.runners import TextByText, build_runner
from utils.inference.tokens import pad_batch
from utils.machine import available_cores


def write_report(folder: Path, figures: dict[str, tuple[float, float | None]], metric: str = "mean_roc_auc",
                 checkpoint_id: str | None = None) -> None:
    """A variants.json giving each backend (texts/s, cost), as export writes it."""
    checkpoint = CheckpointFolder(folder)
    records = [VariantRecord(backend=name, texts_per_s=speed, value=None if cost is None else 0.9 - cost, cost=cost,
                             max_score_difference=0.0) for name, (speed, cost) in figures.items()]
    checkpoint.write_variants(VariantsReport(checkpoint_id=checkpoint_id or checkpoint.checkpoint_id(), metric=metric,
                                             rows=100, batch_size=32, threads=1, machine="test",
                                             measured_at="2026-01-01T00:00:00Z", variants=records))


@pytest.fixture
def graphs(tmp_path, exported_checkpoint) -> Path:
    """A copy of the exported multi-label checkpoint whose variants.json a test may rewrite."""
    return shutil.copytree(exported_checkpoint, tmp_path / "checkpoint")


def test_auto_picks_the_fastest_variant_within_the_cost_bound(graphs):
    write_report(graphs, {"torch": (100, 0.0), "onnx": (200, 0.0), "onnx-int8": (500, 0.004),
                          "onnx-fused": (210, 0.0), "onnx-fused-int8": (400, 0.002)})
    choice = backend_for(CheckpointFolder(graphs))
    assert (choice.requested, choice.backend) == ("auto", "onnx-fused-int8")
    assert choice.measured is not None and choice.measured.cost == 0.002
    assert choice.metric == "mean_roc_auc" and choice.max_cost == 0.003
    assert "fastest" in choice.reason


def test_a_cost_at_the_bound_is_allowed_and_a_gain_is_no_cost(graphs):
    write_report(graphs, {"torch": (100, 0.0), "onnx-int8": (300, MAX_COST["multilabel"]),
                          "onnx-fused-int8-static": (200, -0.001)})
    assert backend_for(CheckpointFolder(graphs)).backend == "onnx-int8"


def test_torch_stays_when_it_is_the_fastest_or_nothing_else_holds_quality(graphs):
    write_report(graphs, {"torch": (900, 0.0), "onnx": (200, 0.0)})
    assert backend_for(CheckpointFolder(graphs)).backend == "torch"
    write_report(graphs, {"torch": (100, 0.0), "onnx-int8": (300, 0.01), "onnx-fused-int8": (300, None)})
    assert backend_for(CheckpointFolder(graphs)).backend == "torch"


def test_missing_graphs_and_reports_of_other_weights_are_not_chosen(graphs):
    write_report(graphs, {"torch": (100, 0.0), "onnx-fused-int8": (400, 0.0), "onnx-int8": (300, 0.0)})
    (graphs / ONNX_FILES["onnx-fused-int8"]).unlink()
    assert backend_for(CheckpointFolder(graphs)).backend == "onnx-int8"
    write_report(graphs, {"torch": (100, 0.0), "onnx-int8": (300, 0.0)}, checkpoint_id="0123456789abcdef")
    choice = backend_for(CheckpointFolder(graphs))
    assert choice.backend == "torch" and "no variant measured" in choice.reason and choice.measured is None


def test_without_a_measurement_auto_is_torch(multilabel_checkpoint, graphs):
    assert backend_for(CheckpointFolder(multilabel_checkpoint)).backend == "torch"
    (graphs / VARIANTS_FILE).unlink()  # graphs but no measurement: torch is here, so torch
    assert backend_for(CheckpointFolder(graphs)).backend == "torch"


def test_multiclass_is_bounded_in_accuracy(multiclass_checkpoint, tmp_path):
    folder = shutil.copytree(multiclass_checkpoint, tmp_path / "checkpoint")
    export.export_graphs(folder)
    write_report(folder, {"torch": (100, 0.0), "onnx-int8": (400, 0.006), "onnx-fused-int8": (300, 0.004)},
                 metric="accuracy")
    choice = backend_for(CheckpointFolder(folder))
    assert (choice.backend, choice.metric, choice.max_cost) == ("onnx-fused-int8", "accuracy", 0.005)


def test_options_only_torch_runs_keep_auto_on_torch(graphs):
    write_report(graphs, {"torch": (100, 0.0), "onnx-int8": (300, 0.0)})
    assert ModelInferer(graphs, backend="auto").backend == "onnx-int8"
    quantized = ModelInferer(graphs, backend="auto", quantize=True)
    assert quantized.backend == "torch" and quantized.quantized and "quantize" in quantized.backend_choice.reason
    assert ModelInferer(graphs, backend="auto", precision="bf16").backend == "torch"


def test_an_explicit_backend_is_kept_and_shows_its_measurement(graphs):
    write_report(graphs, {"torch": (100, 0.0), "onnx-int8": (300, 0.0), "onnx-fused": (150, 0.0)})
    choice = ModelInferer(graphs, backend="onnx-fused").backend_choice
    assert (choice.requested, choice.backend, choice.reason) == ("onnx-fused", "onnx-fused", "asked for")
    assert choice.measured is not None and choice.measured.texts_per_s == 150


def test_the_measurement_export_made_drives_the_choice(exported_checkpoint):
    folder = CheckpointFolder(exported_checkpoint)
    report, choice = folder.variants(), backend_for(folder)
    assert report is not None
    within = [v for v in report.variants if v.cost is not None and v.cost <= MAX_COST["multilabel"]]
    assert choice.measured == max(within, key=lambda v: v.texts_per_s)
    assert ModelInferer(exported_checkpoint, backend="auto").backend == choice.backend


def test_the_server_runs_auto_by_default_and_shows_the_choice(graphs, monkeypatch):
    write_report(graphs, {"torch": (100, 0.0), "onnx-fused-int8": (400, 0.0012), "onnx-int8": (500, 0.0042)})
    set_environment(monkeypatch, {"CHECKPOINT_PATH": str(graphs)})
    assert ServingSettings.from_env().backend == "auto"
    client = create_app().test_client()
    meta = client.get("/metadata").get_json()
    assert meta["backend"] == "onnx-fused-int8" and meta["quantized"] is True
    choice = meta["backend_choice"]
    assert (choice["requested"], choice["metric"], choice["max_cost"]) == ("auto", "mean_roc_auc", 0.003)
    assert choice["measured"]["cost"] == 0.0012 and choice["measured"]["texts_per_s"] == 400
    answer = client.post("/predict", json={"text": "you are kind"}).get_json()
    assert answer["model"]["backend"] == "onnx-fused-int8"
    set_environment(monkeypatch, {"CHECKPOINT_PATH": str(graphs), "BACKEND": "torch"})
    assert create_app().test_client().get("/metadata").get_json()["backend"] == "torch"


@pytest.mark.parametrize(("backend", "quantize"), [("onnx-int8", False), ("onnx-fused-int8", False),
                                                   ("torch", True)])
def test_dynamic_int8_scores_each_text_alone_whatever_its_batch(exported_checkpoint, backend, quantize):
    """Dynamic int8 quantizes a call's activations with one scale per tensor: scored with other texts, padded, a
    text's scores moved by up to 0.25 on a trained model (docs/SERVING.md). Its runner scores each text alone,
    unpadded, so a text's scores are the same to the bit in any batch, and the same as scored by itself."""
    folder = CheckpointFolder(exported_checkpoint)
    runner = build_runner(folder, backend, quantize=quantize, num_threads=1)
    tokenizer = ModelInferer(exported_checkpoint, backend="torch").tokenizer
    texts = ["you are a wonderful person", "shut up, idiot", "thanks for the edit, it reads much better now and "
             "the sources are cited properly", "what"]
    ids = [tokenizer(text)["input_ids"] for text in texts]
    batch = pad_batch(ids, tokenizer.pad_token_id)
    together = runner.logits(*batch)
    for row, single in enumerate(ids):
        alone = runner.logits(*pad_batch([single], tokenizer.pad_token_id))
        assert np.array_equal(together[row], alone[0])
    reversed_batch = runner.logits(*pad_batch(ids[::-1], tokenizer.pad_token_id))
    assert np.array_equal(reversed_batch[::-1], together)


def test_dynamic_int8_texts_side_by_side_score_as_one_after_another(exported_checkpoint):
    """Without a thread count the int8 graphs score texts on every core at once, one text a core: the same
    scores to the bit as one after another (measured: 1.7 times the texts a second on two cores)."""
    folder = CheckpointFolder(exported_checkpoint)
    tokenizer = ModelInferer(exported_checkpoint, backend="torch").tokenizer
    ids = [tokenizer(f"comment number {n}: " + "you are kind " * n)["input_ids"] for n in range(40)]
    batch = pad_batch(ids, tokenizer.pad_token_id)
    one, side_by_side = build_runner(folder, "onnx-int8", num_threads=1), build_runner(folder, "onnx-int8")
    assert isinstance(side_by_side, TextByText) and side_by_side.parallel == available_cores()
    assert isinstance(one, TextByText) and one.parallel == 1
    assert np.array_equal(one.logits(*batch), side_by_side.logits(*batch))
