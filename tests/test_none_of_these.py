""""None of these": the rule's arithmetic, its threshold tuned on validation, the figures eval reports, and the
same answers from the inferer, the API, predict files and the ONNX graphs of a small trained checkpoint."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import CONFERENCES
from sklearn.metrics import roc_auc_score
from test_app import check_schema

import eval as evaluation
import export
import predict
from app import create_app
from inferer import ModelInferer
from models.none_of_these import NoneRule, conventional_none_label
from serving.settings import ServingSettings
from utils.checkpoint.contract import read_info
from utils.config import SettingsError, make_config
from utils.data.prepare import none_label_of, read_test_set
from utils.evaluation.none_metrics import none_metrics
from utils.inference.answers import LabelRules
from utils.training.none_threshold import NO_REJECTION, accuracy_threshold, fit_none_rule

NONE_VENUE = "WWW"  # the conference whose titles stand for requests of no class


# --- the arithmetic ------------------------------------------------------------------------------------------


def test_the_none_score_is_one_minus_the_best_probability_or_the_none_class_share():
    scores = np.array([[0.7, 0.2, 0.1], [0.2, 0.3, 0.5], [0.4, 0.45, 0.15]])
    without = NoneRule(0.5, None)
    assert without.scores(scores) == pytest.approx([0.3, 0.5, 0.55])
    assert without.answers(scores)[0].tolist() == [0, -1, -1]
    with_class = NoneRule(0.5, 2, "none_share")  # class 2 is the data's "none": its share against the best other class
    assert with_class.scores(scores) == pytest.approx([0.1 / 0.8, 0.5 / 0.8, 0.15 / 0.6])
    answered, rejected, _ = with_class.answers(scores)
    assert answered.tolist() == [0, 2, 1] and rejected.tolist() == [False, True, False]


def test_a_label_named_none_by_convention_is_found_once():
    assert conventional_none_label(["book_flight", "oos", "weather"]) == "oos"
    assert conventional_none_label(["a", "Out Of Scope"]) == "Out Of Scope"
    assert conventional_none_label(["a", "b"]) is None
    assert conventional_none_label(["oos", "none"]) is None  # two: ambiguous, name it with --none-label
    assert none_label_of("auto", "multiclass", ["a", "oos"]) == "oos"
    assert none_label_of("off", "multiclass", ["a", "oos"]) is None
    assert none_label_of("auto", "multilabel", ["a", "oos"]) is None
    with pytest.raises(SettingsError, match="'other' is not a label of the training data"):
        none_label_of("other", "multiclass", ["a", "oos"])
    with pytest.raises(SettingsError, match="only multi-class"):
        none_label_of("oos", "multilabel", ["a", "oos"])


def test_the_accuracy_threshold_is_the_best_of_every_cut():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(5, 60))
        scores = np.round(rng.random(n), 1)  # ties: a cut only between distinct scores
        is_none = rng.random(n) < 0.3
        right = ~is_none & (rng.random(n) < 0.8)
        threshold = accuracy_threshold(scores, right, is_none)
        accuracy = {t: float(np.where(scores >= t, is_none, right).mean())
                    for t in [threshold, *np.unique(scores), NO_REJECTION]}
        assert accuracy[threshold] == pytest.approx(max(accuracy.values()))


def test_without_none_rows_the_threshold_rejects_the_asked_share_of_validation():
    rng = np.random.default_rng(1)
    scores = rng.dirichlet(np.ones(5) * 0.3, size=1000)
    labels = scores.argmax(axis=1)
    evidence = rng.normal(3, 1, size=1000)
    rule, summary = fit_none_rule(labels, scores, evidence, None, 0.05)
    assert rule is not None and rule.score == "energy"
    assert summary["validation_in_scope_rejected"] == pytest.approx(0.05, abs=0.002)
    assert summary["validation_none_recall"] is None and summary["chosen_by"] == "0.05 of the validation rows"
    assert (1 / (1 + np.exp(evidence)) >= rule.threshold).mean() == pytest.approx(0.05, abs=0.002)
    assert fit_none_rule(labels, scores, evidence, None, 0.0) == (None, {})
    # 40 validation rows cannot place a cut at 2% (the top score alone would reject 1 in 41 of new texts): off
    rule, summary = fit_none_rule(labels[:40], scores[:40], evidence[:40], None, 0.02)
    assert rule is None and "40 validation rows are too few" in summary["note"] and "it takes 50" in summary["note"]
    assert fit_none_rule(labels[:50], scores[:50], evidence[:50], None, 0.02)[0] is not None


def test_with_none_rows_the_paper_rule_maximises_accuracy_with_none_as_a_class():
    scores = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.45, 0.1, 0.45], [0.3, 0.1, 0.6], [0.6, 0.1, 0.3]])
    labels = np.array([0, 1, 2, 2, 1])  # class 2 is "none"; the last row is an in-scope row answered wrongly
    rule, summary = fit_none_rule(labels, scores, np.zeros(5), 2, 0.05)
    assert rule is not None
    # none scores 1/19, 1/8, 1/2, 2/3, 1/3: rejecting from the middle of 1/8 and 1/3, or of 1/3 and 1/2, is right
    # on 4 of 5 rows; the first
    assert rule.threshold == pytest.approx((1 / 8 + 1 / 3) / 2, abs=1e-6)
    assert summary["validation_none_recall"] == 1.0 and summary["validation_in_scope_accuracy"] == pytest.approx(2 / 3)
    # with the last row right, the middle of 1/3 and 1/2 is the best cut
    rule, _ = fit_none_rule(np.array([0, 1, 2, 2, 0]), scores, np.zeros(5), 2, 0.05)
    assert rule is not None and rule.threshold == pytest.approx((1 / 3 + 1 / 2) / 2, abs=1e-6)


def test_eval_figures_of_a_hand_made_case():
    rule = NoneRule(0.5, None)
    scores = np.array([[0.9, 0.1], [0.3, 0.7], [0.55, 0.45], [0.8, 0.2]])
    labels = np.array([0, 1, 1, 0])
    extra = np.array([0.6, 0.25, 0.5])  # none scores of rows of no class the checkpoint never learnt
    figures = none_metrics(rule, labels, scores, None, extra)
    # in-scope none scores 0.1, 0.3, 0.45, 0.2: none rejected; the third is answered class 0, wrongly
    assert figures["in_scope_accuracy"] == pytest.approx(0.75) and figures["in_scope_rejected"] == 0.0
    assert figures["none_recall"] == pytest.approx(2 / 3) and figures["none_precision"] == 1.0
    assert figures["auroc"] == pytest.approx(10 / 12)  # of the 12 (none, in-scope) pairs, 10 ordered right
    assert figures["auroc"] == pytest.approx(roc_auc_score([0, 0, 0, 0, 1, 1, 1], [0.1, 0.3, 0.45, 0.2, *extra]))
    assert figures["fpr_at_95_tpr"] == pytest.approx(0.5)  # rejecting every none row (>= 0.25): 0.3 and 0.45
    assert figures["accuracy_none_as_class"] == pytest.approx(5 / 7)
    assert sum(figures["histogram"]["none"]) == 3 and sum(figures["histogram"]["in_scope"]) == 4


def test_an_answer_says_none_of_these_with_its_score(multiclass_checkpoint):
    info = read_info(multiclass_checkpoint)
    assert info.none_threshold is None  # trained with --reject-rate 0: the top class, as before
    assert set(LabelRules.of(info).answer(np.full(5, 0.2), False)) == {"labels", "scores", "truncated"}
    rules = LabelRules.of(info.model_copy(update={"none_threshold": 0.6}))
    answer = rules.answer(np.array([0.35, 0.3, 0.15, 0.1, 0.1]), False)
    assert answer["labels"] == [] and answer["none_of_these"] is True and answer["none_score"] == pytest.approx(0.65)
    answer = rules.answer(np.array([0.45, 0.3, 0.15, 0.05, 0.05]), False)
    assert answer["labels"] == [CONFERENCES[0]] and answer["none_of_these"] is False


# --- a small trained checkpoint, every path ------------------------------------------------------------------


@pytest.fixture(scope="module")
def none_data(conference_csv, tmp_path_factory):
    """Conference titles where one venue's titles are named `oos`: the data's own "none of these" class."""
    folder = tmp_path_factory.mktemp("none_data")
    frame = pd.read_csv(conference_csv)
    frame["Conference"] = frame["Conference"].replace(NONE_VENUE, "oos")
    path = folder / "titles_with_oos.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def none_checkpoint(tmp_path_factory, tiny_bert, tiny_trainer, none_data):
    result = tiny_trainer(tmp_path_factory.mktemp("none_run"), tiny_bert, "bert", "multiclass", none_data,
                          reject_rate=0.05, epochs=3.0)
    return result.checkpoint


def test_training_names_the_none_class_and_tunes_its_threshold(none_checkpoint):
    info = read_info(none_checkpoint)
    assert info.none_label == "oos" and "oos" in info.labels and info.none_threshold is not None
    assert 0 < info.none_threshold <= NO_REJECTION
    summary = json.loads((none_checkpoint / "metrics.json").read_text())["none_of_these"]
    assert summary["chosen_by"] == "validation accuracy" and summary["validation_none_rows"] in (9, 10)


def test_eval_reports_what_predict_answers(none_checkpoint, none_data, tmp_path):
    config = make_config(mode="eval", task="auto", data=str(none_data), text_column="Title",
                         label_column="Conference", test_split=0.2, val_split=0.2, output_dir=str(tmp_path))
    report = evaluation.run(config, none_checkpoint)
    figures = report["metrics"]["none_of_these"]
    test = read_test_set(config, read_info(none_checkpoint).labels, "multiclass")
    answers = ModelInferer(none_checkpoint).predict_batch(test.texts)
    names = read_info(none_checkpoint).labels
    truth = [names[i] for i in test.labels]
    is_none = np.array([t == "oos" for t in truth])
    said_none = np.array([a["none_of_these"] for a in answers])
    right = np.array([a["labels"] == [t] for a, t in zip(answers, truth, strict=True)])
    assert figures["none_rows"] == is_none.sum() == 12 and figures["in_scope_rows"] == 48  # of 60 test rows
    assert figures["none_recall"] == pytest.approx(said_none[is_none].mean())
    assert figures["in_scope_accuracy"] == pytest.approx(right[~is_none].mean())
    assert figures["in_scope_rejected"] == pytest.approx(said_none[~is_none].mean())
    assert (tmp_path / "none_scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "eval_report.html").read_text()
    assert "<h2>None of these</h2>" in page and "recall of &#x27;none&#x27;" in page


@pytest.fixture(scope="module")
def in_scope_run(tiny_bert, tiny_trainer, none_data, tmp_path_factory):
    """Trained without the `oos` rows (--reject-rate 0.2, no none class), exported; its files."""
    tmp_path = tmp_path_factory.mktemp("in_scope")
    frame = pd.read_csv(none_data)
    train_file, test_file = tmp_path / "in_scope.csv", tmp_path / "test.csv"
    frame[frame.Conference != "oos"].to_csv(train_file, index=False)
    frame.groupby("Conference").tail(10).to_csv(test_file, index=False)
    checkpoint = tiny_trainer(tmp_path / "run", tiny_bert, "bert", "multiclass", train_file, reject_rate=0.2,
                              test_split=0.0, epochs=3.0).checkpoint
    export.run(checkpoint)
    return checkpoint, train_file, test_file


def test_an_in_scope_checkpoint_is_measured_on_rows_of_a_label_it_never_learnt(in_scope_run, none_data, tmp_path):
    """Eval counts the test file's `oos` rows, set aside from the class metrics, as the rows that should be
    answered "none of these"."""
    checkpoint, train_file, test_file = in_scope_run
    frame = pd.read_csv(none_data)
    info = read_info(checkpoint)
    assert info.none_label is None and "oos" not in info.labels and info.none_threshold is not None
    config = make_config(mode="eval", task="auto", data=str(train_file), test_data=str(test_file),
                         text_column="Title", label_column="Conference", output_dir=str(tmp_path / "eval"))
    figures = evaluation.run(config, checkpoint)["metrics"]["none_of_these"]
    oos = frame[frame.Conference == "oos"].tail(10).Title.tolist()
    assert info.none_score == "energy"
    rule = LabelRules.of(info).none_rule
    scored = ModelInferer(checkpoint).score_texts(oos)
    assert rule is not None and rule.score == "energy"
    expected = rule.scores(scored.served, scored.evidence) >= info.none_threshold
    assert figures["none_rows"] == 10 and figures["in_scope_rows"] == 40
    assert figures["none_recall"] == pytest.approx(expected.mean())


def test_the_api_predict_files_and_onnx_answer_alike(none_checkpoint, none_data, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(none_checkpoint, checkpoint)
    export.run(checkpoint)
    texts = pd.read_csv(none_data).Title.tolist()[:40]
    torch_answers = ModelInferer(checkpoint, backend="torch").predict_batch(texts)
    onnx_answers = ModelInferer(checkpoint, backend="onnx").predict_batch(texts)
    assert [a["labels"] for a in onnx_answers] == [a["labels"] for a in torch_answers]
    assert [a["none_score"] for a in onnx_answers] == pytest.approx([a["none_score"] for a in torch_answers],
                                                                     abs=1e-5)
    inferer = ModelInferer(checkpoint, backend="torch")
    client = create_app(inferer, ServingSettings()).test_client()
    body = client.post("/predict", json={"texts": texts}).get_json()
    assert body["predictions"] == torch_answers
    document = client.get("/openapi.json").get_json()
    check_schema(body, document["paths"]["/predict"]["post"]["responses"]["200"]["content"]["application/json"]
                 ["schema"], document)
    metadata = client.get("/metadata").get_json()
    assert (metadata["none_label"], metadata["none_threshold"]) == ("oos", read_info(checkpoint).none_threshold)
    explained = client.post("/explain", json={"text": texts[0]}).get_json()["explanations"][0]
    assert explained["none_score"] == pytest.approx(torch_answers[0]["none_score"])
    source = tmp_path / "in.csv"
    pd.DataFrame({"Title": texts}).to_csv(source, index=False)
    predict.predict_file(inferer, source, tmp_path / "out.csv", "Title")
    scored = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    assert scored.none_of_these.tolist() == [a["none_of_these"] for a in torch_answers]
    assert scored.none_score.to_numpy() == pytest.approx([a["none_score"] for a in torch_answers])
    assert scored["labels"].tolist() == ["|".join(a["labels"]) for a in torch_answers]


def test_ray_shards_carry_the_none_columns_typed(none_checkpoint, none_data):
    from predict_ray import arrow_table

    inferer = ModelInferer(none_checkpoint)
    texts = pd.read_csv(none_data).Title.tolist()[:20]
    answers = inferer.predict_batch(texts)
    table = arrow_table(predict.scored_frame(pd.DataFrame({"Title": texts}), answers, inferer), inferer.label_names,
                        labels_as_text=True)
    assert str(table.schema.field("none_of_these").type) == "bool"
    assert str(table.schema.field("none_score").type) == "double"
    assert table.column("none_score").to_pylist() == [a["none_score"] for a in answers]


def test_the_energy_score_is_the_same_on_every_path(in_scope_run, none_data):
    """The energy none score, 1 / (1 + sum(exp(logits))) of the transformer's logits: from the torch model itself,
    ONNX, the API with concurrent requests sharing a forward pass, and predict files alike."""
    import torch

    checkpoint, _, _ = in_scope_run
    texts = pd.read_csv(none_data).Title.tolist()[:30]
    torch_inferer = ModelInferer(checkpoint, backend="torch")
    answers = torch_inferer.predict_batch(texts)
    encoded = torch_inferer.tokenizer(texts, truncation=True, max_length=64, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = torch_inferer.model(**encoded).logits.double()
    expected = (1 / (1 + logits.exp().sum(dim=1))).numpy()
    assert [a["none_score"] for a in answers] == pytest.approx(expected, rel=1e-4)
    threshold = read_info(checkpoint).none_threshold
    assert [a["none_of_these"] for a in answers] == [bool(v >= threshold) for v in expected]
    onnx = ModelInferer(checkpoint, backend="onnx").predict_batch(texts)
    assert [a["labels"] for a in onnx] == [a["labels"] for a in answers]
    assert [a["none_score"] for a in onnx] == pytest.approx([a["none_score"] for a in answers], rel=1e-4)
    client = create_app(torch_inferer, ServingSettings(microbatch=True)).test_client()
    assert client.post("/predict", json={"texts": texts}).get_json()["predictions"] == answers
