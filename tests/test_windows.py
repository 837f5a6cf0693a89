"""Long texts read whole: windows over the text, pooled per label, the same in training's validation, the inferer,
its ONNX graphs, the API, file prediction, explanations, export's measurement and the recipe."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TOXIC_LABELS, api_client, built_once
from transformers import AutoTokenizer

import export
import main
from inferer import ModelInferer
from models import default_backbone_path
from models.scoring import scores_from_logits
from serving.costs import token_counts
from utils.checkpoint.contract import CLASSIFIER_FILE, LEXICAL, TRANSFORMER
from utils.checkpoint.rows import ExportRows
from utils.inference.explain import prepare_text, split_words
from utils.inference.reading import Reading
from utils.inference.tokens import pad_batch
from utils.training.export_rows import measured_rows
from utils.training.recipe import DataShape, StepCost, choose_recipe, default_budget_seconds, forward_seconds

HARMLESS = ("Thanks for the note on the talk page, I will look at the references for the article tomorrow and "
            "fix the dates in the second section. ")
INSULT = "You are a stupid idiot and a pathetic loser. "
# ONNX float32 against PyTorch on the tiny model (tests/test_export.py): pooling windows keeps it
MAX_ONNX_DIFFERENCE = 1e-4


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(default_backbone_path())


# --- reading ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens", [1, 29, 30, 31, 100, 1000])
def test_windows_cover_every_token_in_order_and_end_with_the_text(tokens):
    reading = Reading(32, long_texts="windows", max_windows=1000)
    content = list(range(tokens))
    windows, unread = reading.content_windows(content, 30)
    assert not unread and all(len(w) == min(30, tokens) for w in windows)
    assert sorted({t for w in windows for t in w}) == content and windows[-1][-1] == tokens - 1
    starts = [w[0] for w in windows]
    assert all(0 < b - a <= reading.stride(30) for a, b in zip(starts, starts[1:], strict=False))
    assert reading.stride(30) == 22  # three quarters of a window: a quarter overlaps


def test_past_the_cap_windows_spread_over_the_text_and_only_gaps_count_as_unread():
    content = list(range(1000))
    spread, unread = Reading(32, long_texts="windows", max_windows=40).content_windows(content, 30)
    assert len(spread) == 40 and not unread and spread[0][0] == 0 and spread[-1][-1] == 999
    assert sorted({t for w in spread for t in w}) == content  # less overlap, nothing skipped
    sparse, unread = Reading(32, long_texts="windows", max_windows=4).content_windows(content, 30)
    assert len(sparse) == 4 and unread and sparse[-1][-1] == 999
    cut, unread = Reading(32).content_windows(content, 30)
    assert unread and len(cut) == 1 and len(cut[0]) == 30  # truncate: head and tail, as before


def test_pooling_takes_each_labels_highest_or_mean_window_per_text():
    logits = np.array([[1.0, -2.0], [3.0, -5.0], [0.0, 4.0], [-1.0, 1.0], [2.0, 2.0]])
    owner = np.array([0, 0, 1, 1, 2])
    maxed = Reading(16, long_texts="windows").pool(logits, owner)
    np.testing.assert_array_equal(maxed, [[3.0, -2.0], [0.0, 4.0], [2.0, 2.0]])
    mean = Reading(16, long_texts="windows", window_pooling="mean").pool(logits, owner)
    np.testing.assert_allclose(mean, [[2.0, -3.5], [-0.5, 2.5], [2.0, 2.0]])
    weights = Reading(16, long_texts="windows").pooling_weights(logits[:2])
    np.testing.assert_array_equal(weights, [[0.0, 1.0], [1.0, 0.0]])


def test_encoding_reads_every_token_of_a_real_long_text_with_special_tokens_in_each_window(tokenizer):
    text = HARMLESS * 30
    reading = Reading(64, long_texts="windows")
    sequences = reading.encode(tokenizer, [text, "short one"])
    full = tokenizer(text)["input_ids"]
    windows = [ids for ids, owner in zip(sequences.input_ids, sequences.owner, strict=True) if owner == 0]
    assert len(windows) == sequences.windows_per_text[0] == 1 + -(-(len(full) - 64) // 46)
    assert all(w[0] == tokenizer.cls_token_id and w[-1] == tokenizer.sep_token_id and len(w) == 64 for w in windows)
    assert {t for w in windows for t in w[1:-1]} == set(full[1:-1]) and sequences.truncated == [False, False]
    assert sequences.tokens_per_text.tolist() == [64 * len(windows), len(tokenizer("short one")["input_ids"])]
    assert Reading(64).encode(tokenizer, [text]).truncated == [True]


# --- the recipe ---------------------------------------------------------------------------------------------------


COST = StepCost(32, (16, 64, 128), (0.05, 0.2, 0.5), 0.6, 3)


def shape(lengths: list[int], rows: int) -> DataShape:
    return DataShape("multilabel", rows, rows // 5, 6, tuple(lengths), 512)


def test_the_recipe_reads_long_texts_in_windows_and_plans_their_cost():
    long = choose_recipe(shape([30] * 50 + [600] * 50, 2000), COST, {}, 32, 600.0, 10.0)
    assert long.values["long_texts"] == "windows" and "50% of the training texts" in long.reasons["long_texts"]
    short = choose_recipe(shape([30] * 995 + [600] * 5, 2000), COST, {}, 32, 600.0, 10.0)
    assert short.values["long_texts"] == "truncate" and "at most 1%" in short.reasons["long_texts"]
    lengths = shape([30] * 50 + [600] * 50, 2000)
    assert forward_seconds(lengths, COST, 64, windows=True) > 3 * forward_seconds(lengths, COST, 64)
    given = choose_recipe(shape([30] * 50 + [600] * 50, 2000), COST, {"long_texts": "truncate"}, 32, 600.0, 10.0)
    assert given.values["long_texts"] == "truncate" and given.reasons["long_texts"] == "given"


def test_long_texts_get_a_longer_default_budget_and_export_measures_fewer_of_them():
    assert default_budget_seconds(6000, mean_tokens=90) == default_budget_seconds(6000) == 240.0
    assert default_budget_seconds(6000, mean_tokens=160) == 300.0
    assert default_budget_seconds(6000, mean_tokens=1000) == 360.0  # 1.5 times at most
    assert measured_rows(1.0) == 2000 and measured_rows(8.0) == 250 and measured_rows(100.0) == 100


# --- a checkpoint trained to read windows ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def windows_checkpoint(tmp_path_factory, tiny_trainer, tiny_bert, toxic_csv):
    """The tiny BERT trained with long texts in windows of 32 tokens (most toxic comments are longer), exported."""
    def build(folder: Path) -> Path:
        checkpoint = tiny_trainer(folder, tiny_bert, "bert", "multilabel", toxic_csv, max_length=32,
                                  long_texts="auto", blend="lexical").checkpoint
        export.run(checkpoint)
        return checkpoint

    return built_once(tmp_path_factory, "windows_run", build)  # once for the run, whichever worker asks first


def test_training_chose_windows_and_their_pooling_on_validation(windows_checkpoint):
    info = json.loads((windows_checkpoint / CLASSIFIER_FILE).read_text())
    assert info["long_texts"] == "windows" and info["max_length"] == 32
    metrics = json.loads((windows_checkpoint / "metrics.json").read_text())
    by_pooling = metrics["validation_window_pooling"]
    assert set(by_pooling) == {"max", "mean"} and info["window_pooling"] == max(by_pooling, key=by_pooling.get)
    rows = ExportRows.load(windows_checkpoint)
    assert rows is not None and len(rows.validation_ids) > len(rows) == len(rows.labels)
    assert rows.owner.tolist() == sorted(rows.owner.tolist()) and rows.owner[-1] == len(rows) - 1


def test_torch_and_onnx_read_the_same_windows(windows_checkpoint):
    texts = [HARMLESS * 12 + INSULT + HARMLESS * 12, "hello", INSULT * 20]
    reference = ModelInferer(windows_checkpoint, backend="torch", precision="fp32")
    scores, truncated = reference.score_batch(texts)
    assert truncated == [False, False, False]
    for backend in ("onnx", "onnx-fused"):
        other, _ = ModelInferer(windows_checkpoint, backend=backend).score_batch(texts)
        np.testing.assert_allclose(other, scores, atol=MAX_ONNX_DIFFERENCE)
    sequences = reference.reading.encode(reference.tokenizer, texts)
    assert sequences.windows_per_text[0] > 5 and sequences.windows_per_text[1] == 1
    windows = reference.runner.logits(*pad_batch(sequences.input_ids, reference.pad_id))
    pooled = np.stack([windows[sequences.owner == text].max(axis=0) if reference.reading.window_pooling == "max"
                       else windows[sequences.owner == text].mean(axis=0) for text in range(len(texts))])
    np.testing.assert_allclose(scores, reference.blend.served({
        TRANSFORMER: scores_from_logits("multilabel", pooled),
        LEXICAL: reference.lexical.scores(texts)}), atol=1e-5)  # type: ignore[union-attr]
    cut, cut_flags = ModelInferer(windows_checkpoint, backend="torch", long_texts="truncate").score_batch(texts)
    assert cut_flags == [True, False, True]
    np.testing.assert_allclose(cut[1], scores[1], atol=1e-6)  # a short text is one window either way


def test_the_api_and_file_prediction_serve_the_inferers_windows(windows_checkpoint, monkeypatch, tmp_path, capsys):
    texts = [HARMLESS * 12 + INSULT + HARMLESS * 12, "you are wonderful"]
    inferer = ModelInferer(windows_checkpoint)
    expected = inferer.predict_batch(texts)
    client = api_client(monkeypatch, windows_checkpoint)
    metadata = client.get("/metadata").get_json()
    assert metadata["long_texts"] == "windows" and metadata["backend"] == inferer.backend
    served = client.post("/predict", json={"texts": texts}).get_json()["predictions"]
    for answer, wanted in zip(served, expected, strict=True):
        assert answer["scores"] == pytest.approx(wanted["scores"], abs=1e-6) and answer["truncated"] is False
    source = tmp_path / "long.csv"
    pd.DataFrame({"comment_text": texts}).to_csv(source, index=False)
    output = tmp_path / "scored.csv"
    assert main.main(["--mode", "predict", "--checkpoint", str(windows_checkpoint), "--input", str(source),
                      "--output", str(output)]) == 0
    scored = pd.read_csv(output)
    np.testing.assert_allclose(scored[[f"score_{n}" for n in TOXIC_LABELS]].to_numpy(),
                               [[w["scores"][n] for n in TOXIC_LABELS] for w in expected], atol=1e-6)
    capsys.readouterr()


def test_the_cost_of_a_long_text_counts_every_window(windows_checkpoint):
    inferer = ModelInferer(windows_checkpoint)
    text = HARMLESS * 40
    sequences = inferer.reading.encode(inferer.tokenizer, [text])
    assert token_counts(inferer, [text]) == [sum(len(ids) for ids in sequences.input_ids)]
    assert token_counts(inferer, [text])[0] > 10 * inferer.max_length


def test_explaining_a_2000_word_text_scores_every_word_and_finds_the_insult_past_the_first_window(
        windows_checkpoint):
    inferer = ModelInferer(windows_checkpoint, backend="torch", precision="fp32", max_windows=200)
    words = (HARMLESS * 60).split()[:1000]
    text = " ".join(words) + " " + INSULT + " ".join(words)
    answer = inferer.explain(text, labels=["insult"])
    values = answer["attributions"]["insult"]
    assert len(answer["words"]) == len(split_words(text)) > 2000
    assert all(v is not None for v in values) and answer["truncated"] is False
    item = prepare_text(inferer.tokenizer, text, inferer.reading)
    assert len(item.windows) > 30 and item.seen == list(range(len(item.words)))
    gradients = inferer.explain(text, labels=["insult"], method="gradient_x_input")["attributions"]["insult"]
    assert all(v is not None for v in gradients)


def test_a_checkpoint_written_before_windows_reads_as_it_did(multilabel_checkpoint, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(multilabel_checkpoint, old)
    info = json.loads((old / CLASSIFIER_FILE).read_text())
    for key in ("long_texts", "window_stride", "max_windows", "window_pooling"):
        info.pop(key)
    (old / CLASSIFIER_FILE).write_text(json.dumps(info))
    texts = [HARMLESS * 12 + INSULT, "hello"]
    before = ModelInferer(old, backend="torch")
    assert before.reading.long_texts == "truncate"
    np.testing.assert_allclose(before.score_batch(texts)[0],
                               ModelInferer(multilabel_checkpoint, backend="torch").score_batch(texts)[0])
    assert before.score_batch(texts)[1] == [True, False]


# --- a toxic sentence past the first window ------------------------------------------------------------------


def test_an_insult_buried_mid_text_is_found_in_windows_and_missed_cut(minilm_head):
    """Documents of about 400 words of polite talk-page notes, half with one insult between 30% and 70% of the way
    in: read in windows (max pooling), the insulting documents rank above the clean ones; cut to head and tail,
    the insult is never seen."""
    from sklearn.metrics import roc_auc_score

    notes = [HARMLESS, "I moved the image to the gallery below and added a caption with the source. ",
             "Please see the archive for the earlier discussion of the naming policy on this page. ",
             "The infobox now cites the census figures from the official statistics office. "]
    rng = np.random.default_rng(0)
    documents, insulting = [], []
    for index in range(16):
        words = " ".join(notes[int(i)] for i in rng.integers(len(notes), size=24)).split()[:400]
        if index % 2:
            at = int(rng.integers(120, 280))
            words = words[:at] + INSULT.split() + words[at:]
        documents.append(" ".join(words))
        insulting.append(index % 2)
    label = TOXIC_LABELS.index("insult")
    auc = {reading: roc_auc_score(insulting, ModelInferer(minilm_head, backend="torch", long_texts=reading,
                                                          window_pooling="max").score_batch(documents)[0][:, label])
           for reading in ("truncate", "windows")}
    assert auc["windows"] >= 0.95 and auc["windows"] >= auc["truncate"] + 0.2, auc
