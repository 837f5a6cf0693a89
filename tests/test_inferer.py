"""ModelInferer on the tiny checkpoints trained by conftest: label order, thresholds, batching, truncation,
int8 quantization, bad inputs and the checkpoint's own input settings."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TOXIC_LABELS
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
from transformers import AutoTokenizer

import main
from eval import evaluate
from inferer import ModelInferer
from models import load_classifier
from utils.config import Config, config_from_saved, make_config, parse_config
from utils.data.prepare import read_test_set

# int8 dynamic quantization of the tiny model moved scores by at most 2.1e-4 (multi-label) and 8.5e-5
# (multi-class) over the test rows when measured (AMD EPYC, AVX2); 1e-3 allows other CPUs' int8 kernels.
INT8_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def multilabel(multilabel_checkpoint) -> ModelInferer:
    return ModelInferer(multilabel_checkpoint, precision="fp32")  # compared with float32 references


@pytest.fixture(scope="module")
def multiclass(multiclass_checkpoint) -> ModelInferer:
    return ModelInferer(multiclass_checkpoint, precision="fp32")


@pytest.fixture(scope="module")
def toxic_texts(toxic_csv) -> list[str]:
    return pd.read_csv(toxic_csv).comment_text.tolist()[:48]


@pytest.fixture(scope="module")
def titles(conference_csv) -> list[str]:
    return pd.read_csv(conference_csv).Title.tolist()[:48]


def classifier_json(checkpoint) -> dict:
    return json.loads((checkpoint / "classifier.json").read_text())


def reference_logits(checkpoint, text: str) -> np.ndarray:
    """Logits computed without the inferer: the checkpoint's model and tokenizer, used directly."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = load_classifier(checkpoint).eval()
    encoded = tokenizer(text, return_tensors="pt", truncation=True, max_length=64)
    with torch.no_grad():
        return model(**encoded).logits[0].numpy().astype(np.float64)


def test_multilabel_scores_are_sigmoids_in_checkpoint_label_order(multilabel, multilabel_checkpoint):
    text = "You are a complete idiot and I will find you."
    result = multilabel.predict(text)
    assert list(result["scores"]) == classifier_json(multilabel_checkpoint)["labels"] == TOXIC_LABELS
    expected = 1 / (1 + np.exp(-reference_logits(multilabel_checkpoint, text)))
    np.testing.assert_allclose(list(result["scores"].values()), expected, atol=1e-5)
    assert result["truncated"] is False


def test_multilabel_labels_are_those_at_or_over_the_saved_thresholds(multilabel, multilabel_checkpoint, toxic_texts):
    thresholds = classifier_json(multilabel_checkpoint)["thresholds"]
    assert multilabel.thresholds.tolist() == thresholds
    for result in multilabel.predict_batch(toxic_texts):
        expected = [name for name, t in zip(TOXIC_LABELS, thresholds, strict=True) if result["scores"][name] >= t]
        assert result["labels"] == expected


def test_threshold_override_changes_the_labels(multilabel, multilabel_checkpoint):
    text = "thanks for the helpful edit"
    assert multilabel.predict(text, threshold=0.0)["labels"] == TOXIC_LABELS
    assert multilabel.predict(text, threshold=1.0)["labels"] == []
    every_other = [0.0, 1.0] * 3
    assert multilabel.predict(text, threshold=every_other)["labels"] == TOXIC_LABELS[::2]
    # Just under / just over one label's own score flips that label alone.
    score = multilabel.predict(text)["scores"]["obscene"]
    per_label = [1.0, 1.0, score - 1e-6, 1.0, 1.0, 1.0]
    assert multilabel.predict(text, threshold=per_label)["labels"] == ["obscene"]
    per_label[2] = score + 1e-6
    assert multilabel.predict(text, threshold=per_label)["labels"] == []
    # Set once for the inferer, the override applies to every call.
    assert ModelInferer(multilabel_checkpoint, threshold=0.0).predict(text)["labels"] == TOXIC_LABELS


@pytest.mark.parametrize("threshold", [[0.5] * 5, 1.5, -0.1, [0.5] * 5 + [float("nan")], "high"])
def test_bad_threshold_is_refused(multilabel, threshold):
    with pytest.raises(ValueError, match="threshold must be one number or 6 numbers"):
        multilabel.predict("text", threshold=threshold)


def test_multiclass_softmax_top_class_and_top_k(multiclass, multiclass_checkpoint):
    text = "Efficient query processing for large relational databases"
    result = multiclass.predict(text, top_k=3)
    labels = classifier_json(multiclass_checkpoint)["labels"]
    assert list(result["scores"]) == labels
    logits = reference_logits(multiclass_checkpoint, text)
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(list(result["scores"].values()), expected, atol=1e-5)
    assert sum(result["scores"].values()) == pytest.approx(1.0)
    assert result["labels"] == [labels[int(np.argmax(expected))]]
    assert [entry["label"] for entry in result["top_k"]] == [labels[i] for i in np.argsort(-expected)[:3]]
    assert result["top_k"][0]["label"] == result["labels"][0]
    assert "top_k" not in multiclass.predict(text)


def test_a_multiclass_threshold_is_the_none_of_these_threshold(multiclass, multiclass_checkpoint, titles):
    """A checkpoint trained without a rule answers its top class; a threshold given to it, per call or at loading,
    answers "none of these" at a none score (1 - the top class's score) at or over it, and refuses anything but
    one number in [0, 1]."""
    plain = multiclass.predict_batch(titles)
    assert all("none_of_these" not in answer for answer in plain)
    scores = np.array([[a["scores"][name] for name in multiclass.label_names] for a in plain])
    cut = float(np.median(1 - scores.max(axis=1)))
    for answers in (multiclass.predict_batch(titles, threshold=cut),
                    ModelInferer(multiclass_checkpoint, threshold=cut).predict_batch(titles)):
        rejected = [a["none_of_these"] for a in answers]
        assert rejected == [1 - s.max() >= cut for s in scores] and 0 < sum(rejected) < len(titles)
        assert [a["labels"] for a in answers] == [[] if r else p["labels"] for r, p in zip(rejected, plain,
                                                                                           strict=True)]
    for wrong in ([0.5, 0.5], 1.5, "0.5", True):
        with pytest.raises(ValueError, match="'none of these' threshold: one number in"):
            multiclass.predict("text", threshold=wrong)


def test_predict_batch_equals_predict_on_each_text_in_input_order(multilabel, multiclass, toxic_texts, titles):
    for inferer, texts in ((multilabel, toxic_texts), (multiclass, titles)):
        texts = [*texts[:20], ""]  # lengths in no order, and the empty text
        batch = inferer.predict_batch(texts, batch_size=4)
        assert len(batch) == len(texts)
        for text, from_batch in zip(texts, batch, strict=True):
            single = inferer.predict(text)
            np.testing.assert_allclose(list(from_batch["scores"].values()), list(single["scores"].values()),
                                       atol=1e-6)
            assert from_batch["truncated"] == single["truncated"]
        reversed_batch = inferer.predict_batch(texts[::-1], batch_size=7)
        for a, b in zip(batch, reversed_batch[::-1], strict=True):
            np.testing.assert_allclose(list(a["scores"].values()), list(b["scores"].values()), atol=1e-6)


def test_long_texts_are_cut_and_reported(multilabel_checkpoint, multilabel):
    short = "a short comment"
    head = "this opening part stays the same in both texts " * 10
    tails = [head + "and it ends kindly with thanks " * 10, head + "but it ends with a threat to hurt you " * 10]
    results = multilabel.predict_batch([short, *tails])
    assert [r["truncated"] for r in results] == [False, True, True]
    assert multilabel.truncation == "head_tail"  # the checkpoint's setting
    assert results[1]["scores"] != results[2]["scores"]  # the tails count
    head_only = ModelInferer(multilabel_checkpoint, truncation="head").predict_batch(tails)
    assert head_only[0]["scores"] == pytest.approx(head_only[1]["scores"], abs=1e-7)  # only the head is read
    with pytest.raises(ValueError, match="truncation"):
        ModelInferer(multilabel_checkpoint, truncation="middle")


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda m: m.predict(None), ValueError, "None"),
    (lambda m: m.predict(42), TypeError, "must be a string, got int"),
    (lambda m: m.predict(b"bytes"), TypeError, "got bytes"),
    (lambda m: m.predict_batch("one string"), TypeError, "list of strings"),
    (lambda m: m.predict_batch(["ok", None]), ValueError, "text 1 is None"),
    (lambda m: m.predict_batch(["ok", 3.5]), TypeError, "text 1 must be a string"),
    (lambda m: m.predict_batch({"a": 1}), TypeError, "list of strings"),
    (lambda m: m.predict("lone \ud800 surrogate"), ValueError, "not valid Unicode"),
    (lambda m: m.predict("text", top_k=0), ValueError, "top_k"),
    (lambda m: m.predict_batch(["text"], batch_size=0), ValueError, "batch_size"),
])
def test_bad_inputs_are_refused_clearly(multilabel, call, error, message):
    with pytest.raises(error, match=message):
        call(multilabel)


def test_empty_text_and_empty_list_are_valid(multilabel):
    assert set(multilabel.predict("")["scores"]) == set(TOXIC_LABELS)
    assert multilabel.predict_batch([]) == []


def test_int8_quantization_stays_close_to_float(multilabel_checkpoint, multiclass_checkpoint, multilabel,
                                                multiclass, toxic_texts, titles):
    for checkpoint, reference, texts in ((multilabel_checkpoint, multilabel, toxic_texts),
                                         (multiclass_checkpoint, multiclass, titles)):
        quantized = ModelInferer(checkpoint, quantize=True)
        layers = [type(m) for m in quantized.model.modules()]
        assert DynamicLinear in layers and torch.nn.Linear not in layers
        assert quantized.metadata()["quantized"] is True and quantized.device == "cpu"
        float_scores, _ = reference.score_batch(texts)
        int8_scores, _ = quantized.score_batch(texts)
        assert np.abs(float_scores - int8_scores).max() < INT8_TOLERANCE
        assert quantized.checkpoint_id == reference.checkpoint_id  # the same float checkpoint underneath


def test_metadata_describes_the_checkpoint(multilabel, multilabel_checkpoint):
    meta = multilabel.metadata()
    info = classifier_json(multilabel_checkpoint)
    assert meta["task"] == "multilabel" and meta["labels"] == info["labels"]
    assert meta["thresholds"] == info["thresholds"]
    assert meta["backbone"] == info["backbone"] and meta["max_length"] == 64 and meta["quantized"] is False
    assert meta["training_metrics"] == json.loads((multilabel_checkpoint / "metrics.json").read_text())
    digest = hashlib.sha256((multilabel_checkpoint / "model.safetensors").read_bytes()).hexdigest()
    assert meta["checkpoint_id"] == digest[:16]
    json.dumps(meta)  # plain JSON, as /metadata serves it


def test_keyword_construction_with_the_checkpoints_own_settings(multilabel_checkpoint):
    """What the original project's `config=` call gave, with the supported arguments: the checkpoint's labels,
    thresholds, max length and truncation, quantized; `max_length` replaces the checkpoint's when given."""
    inferer = ModelInferer(checkpoint_path=multilabel_checkpoint, quantize=True)
    assert inferer.quantized and inferer.label_names == TOXIC_LABELS
    assert inferer.thresholds is not None
    assert inferer.thresholds.tolist() == classifier_json(multilabel_checkpoint)["thresholds"]
    assert inferer.max_length == 64 and inferer.truncation == "head_tail"
    assert set(inferer.predict("you idiot")["scores"]) == set(TOXIC_LABELS)
    shorter = ModelInferer(multilabel_checkpoint, max_length=16)
    assert shorter.max_length == 16 and shorter.predict("word " * 40)["truncated"]


def training_config(checkpoint) -> Config:
    return config_from_saved(json.loads((checkpoint / "training_config.json").read_text()))


def test_the_original_config_call_keeps_working(multilabel_checkpoint):
    config = training_config(multilabel_checkpoint)
    inferer = ModelInferer(config=config, checkpoint_path=multilabel_checkpoint, quantize=True)
    assert inferer.quantized and inferer.label_names == TOXIC_LABELS
    assert inferer.thresholds is not None
    assert inferer.thresholds.tolist() == classifier_json(multilabel_checkpoint)["thresholds"]


def test_a_default_config_warns_about_input_settings_and_goes_on(multilabel_checkpoint):
    """The original call with a Config whose max_length 128 and truncation differ from the checkpoint's 64 and
    head_tail; the checkpoint decides, a warning names both values, and the inferer works (a Config that leaves
    max_length to the recipe, None, says nothing of it)."""
    with pytest.warns(UserWarning) as warned:
        inferer = ModelInferer(config=make_config(max_length=128, truncation="head"),
                               checkpoint_path=multilabel_checkpoint, quantize=True)
    messages = [str(w.message) for w in warned]
    assert any("config.max_length is 128" in m and "trained with 64" in m for m in messages), messages
    assert any("config.truncation is 'head'" in m and "'head_tail'" in m for m in messages), messages
    assert warned[0].filename == __file__  # pointed at the caller's line
    assert inferer.max_length == 64 and inferer.truncation == "head_tail" and inferer.quantized
    assert set(inferer.predict("you idiot")["scores"]) == set(TOXIC_LABELS)


@pytest.mark.parametrize(("change", "message"), [
    ({"task": "multiclass"}, "config.task is 'multiclass'"),
    ({"label_columns": TOXIC_LABELS[::-1]}, "differ from the checkpoint's"),
])
def test_a_config_that_contradicts_the_checkpoint_is_an_error(multilabel_checkpoint, change, message):
    config = dataclasses.replace(training_config(multilabel_checkpoint), **change)
    with pytest.raises(ValueError, match=message):
        ModelInferer(config=config, checkpoint_path=multilabel_checkpoint)


def test_eval_runs_quantized_and_reports_the_accuracy_cost(multilabel_checkpoint, toxic_csv, tmp_path):
    """`python main.py --mode eval --quantize --checkpoint DIR` beside the float evaluation of the same rows."""
    args = ["--mode", "eval", "--task", "multilabel", "--checkpoint", str(multilabel_checkpoint),
            "--data", str(toxic_csv), "--text-column", "comment_text", "--label-columns", ",".join(TOXIC_LABELS),
            "--test-split", "0.2", "--output-dir", str(tmp_path)]
    assert main.main(args) == 0
    assert main.main([*args, "--quantize"]) == 0
    float_report = json.loads((tmp_path / "eval_report.json").read_text())
    int8_report = json.loads((tmp_path / "eval_report_int8.json").read_text())
    assert float_report["quantized"] is False and int8_report["quantized"] is True
    assert int8_report["metrics"]["examples"] == float_report["metrics"]["examples"] == 80
    assert (tmp_path / "curves_int8.png").is_file()
    # The int8 report is the quantized model's own: the same figures as evaluating it directly. (The tiny
    # model's scores lie within 0.03 of each other, so int8 noise reorders them: its AUC moves, a real model's
    # barely does; that difference is what the two reports are for.)
    test_set = read_test_set(parse_config(args), TOXIC_LABELS)
    for report, quantize in ((float_report, False), (int8_report, True)):
        direct = evaluate(ModelInferer(multilabel_checkpoint, quantize=quantize), test_set)["metrics"]
        assert report["metrics"]["mean_roc_auc"] == pytest.approx(direct["mean_roc_auc"], abs=1e-9)
