"""A checkpoint among Hugging Face models: plain transformers gives this toolkit's transformer scores (the stock
classes for `[CLS]` pooling, the shipped models/modeling_pooled.py with trust_remote_code=True for mean pooling),
its model card parses with huggingface_hub and holds the labels and the test metrics, and --push-to-hub says in one
line why an upload cannot happen."""

import contextlib
import io
import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CONFERENCES, TOXIC_LABELS, train_tiny
from huggingface_hub import ModelCard, ModelCardData, constants
from huggingface_hub.repocard import metadata_load
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertForSequenceClassification, pipeline

import main
from inferer import ModelInferer
from models import build_classifier
from models.scoring import with_temperature
from utils.checkpoint.contract import (
    CLASSIFIER_FILE,
    CONFIG_FILE,
    EXPORT_ROWS_FILE,
    METRICS_FILE,
    MODEL_CARD_FILE,
    MODELING_FILE,
    TRANSFORMER,
    ClassifierInfo,
    read_info,
    write_checkpoint,
)
from utils.checkpoint.hub import HubError, push_checkpoint, shared_files
from utils.checkpoint.model_card import pipeline_thresholds, write_model_card

TOLERANCE = 1e-5  # pipeline (float32 sigmoid/softmax, one text a batch) against ModelInferer (float64, padded batches)
REPO = "someone/conference-classifier"


def pipeline_scores(checkpoint: Path, texts: list[str], **options) -> np.ndarray:
    """The pipeline's score of each label, in the checkpoint's label order, cut as the checkpoint cuts texts."""
    info = read_info(checkpoint)
    classify = pipeline("text-classification", model=str(checkpoint), top_k=None, truncation=True,
                        max_length=info.max_length, **options)
    answers = classify(texts, batch_size=32)
    return np.array([[{d["label"]: d["score"] for d in row}[name] for name in info.labels] for row in answers])


def transformer_scores(checkpoint: Path, texts: list[str]) -> np.ndarray:
    """This toolkit's scores of the transformer alone (before any blend and temperature)."""
    return ModelInferer(checkpoint, backend="torch").score_texts(texts).members[TRANSFORMER]


def toxic_texts(path: Path) -> list[str]:
    return pd.read_csv(path).comment_text.tolist()


def titles(path: Path) -> list[str]:
    return pd.read_csv(path).Title.tolist()


@pytest.fixture(scope="module")
def mean_multilabel(tmp_path_factory, tiny_bert, toxic_csv) -> Path:
    """The default head (mean pooling), long texts cut at their head as the pipeline cuts them."""
    return train_tiny(tmp_path_factory.mktemp("mean_ml"), tiny_bert, "bert", "multilabel", toxic_csv,
                      pooling="mean", truncation="head", max_train_samples=96).checkpoint


@pytest.fixture(scope="module")
def command_line_run(tmp_path_factory, tiny_bert, conference_csv) -> tuple[int, str, Path]:
    """`main.py --mode train --push-to-hub REPO` of a mean-pooled multi-class model, with a token and a hub at a
    port of 127.0.0.1 that refuses connections: it trains, evaluates, writes the card, then fails to upload."""
    output = tmp_path_factory.mktemp("pushed")
    argv = ["--task", "multiclass", "--data", str(conference_csv), "--text-column", "Title", "--label-column",
            "Conference", "--model-type", "bert", "--model-name-or-path", str(tiny_bert), "--output-dir", str(output),
            "--epochs", "1", "--batch-size", "16", "--max-length", "64", "--learning-rate", "1e-3",
            "--pooling", "mean", "--blend", "none", "--freeze-layers", "0", "--long-texts", "truncate",
            "--reject-rate", "0", "--max-train-samples", "96", "--no-export-onnx", "--push-to-hub", REPO]
    stderr = io.StringIO()
    with socket.socket() as refusing, pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(stderr):
        refusing.bind(("127.0.0.1", 0))  # bound and never listening: every connection is refused
        patch.setenv("HF_TOKEN", "hf_not_a_real_token")
        patch.setattr(constants, "HF_HUB_OFFLINE", False)
        patch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{refusing.getsockname()[1]}")
        code = main.main(argv)
    return code, stderr.getvalue(), output


def test_mean_pooled_multilabel_pipeline_gives_the_transformer_scores(mean_multilabel, toxic_csv):
    assert (mean_multilabel / MODELING_FILE).is_file()
    assert json.loads((mean_multilabel / CONFIG_FILE).read_text())["auto_map"] == {
        "AutoModelForSequenceClassification": "modeling_pooled.PooledBertForSequenceClassification"}
    texts = toxic_texts(toxic_csv)[:120]  # real comments, many longer than the 64 tokens read
    expected = transformer_scores(mean_multilabel, texts)
    remote = pipeline_scores(mean_multilabel, texts, trust_remote_code=True)
    assert np.abs(remote - expected).max() <= TOLERANCE
    # without trust_remote_code, transformers silently takes its stock class, which reads [CLS]: other scores
    assert np.abs(pipeline_scores(mean_multilabel, texts[:20]) - expected[:20]).max() > 1e-3


def test_mean_pooled_multiclass_pipeline_gives_the_transformer_scores(command_line_run, conference_csv):
    checkpoint = command_line_run[2] / "checkpoint"
    texts = titles(conference_csv)
    expected = transformer_scores(checkpoint, texts)
    scores = pipeline_scores(checkpoint, texts, trust_remote_code=True)
    assert np.abs(scores - expected).max() <= TOLERANCE
    assert np.allclose(scores.sum(axis=1), 1.0, atol=1e-5)  # config.json's problem_type: a softmax


@pytest.mark.parametrize(("model_type", "task"), [("roberta", "multilabel"), ("distilbert", "multiclass")])
def test_the_shipped_code_covers_roberta_and_distilbert(model_type, task, request, tmp_path, conference_csv):
    backbone = request.getfixturevalue(f"tiny_{model_type}")
    model = build_classifier(model_type, task, str(backbone), CONFERENCES, "mean").eval()
    info = ClassifierInfo(task=task, labels=CONFERENCES, max_length=64, truncation="head", pooling="mean",
                          model_type=model_type, backbone=str(backbone))
    checkpoint = write_checkpoint(tmp_path / "checkpoint", model, AutoTokenizer.from_pretrained(backbone), info, {},
                                  {})
    texts = titles(conference_csv)
    remote = pipeline_scores(checkpoint, texts, trust_remote_code=True)
    assert np.abs(remote - transformer_scores(checkpoint, texts)).max() <= TOLERANCE


def test_a_cls_checkpoint_needs_no_remote_code(multilabel_checkpoint, toxic_csv):
    assert not (multilabel_checkpoint / MODELING_FILE).exists()
    assert "auto_map" not in json.loads((multilabel_checkpoint / CONFIG_FILE).read_text())
    assert type(AutoModelForSequenceClassification.from_pretrained(multilabel_checkpoint)) is (
        BertForSequenceClassification)
    scored = ModelInferer(multilabel_checkpoint, backend="torch").score_texts(toxic_texts(toxic_csv)[:200])
    # texts that fit in max_length: this checkpoint reads a longer one's head and tail, the pipeline its head
    texts = [text for text, cut in zip(toxic_texts(toxic_csv), scored.truncated, strict=False) if not cut]
    expected = scored.members[TRANSFORMER][~np.array(scored.truncated)]
    assert len(texts) > 50
    assert np.abs(pipeline_scores(multilabel_checkpoint, texts) - expected).max() <= TOLERANCE


def card_of(checkpoint: Path) -> tuple[ModelCardData, str]:
    """The card's metadata and text as the Hub parses them; the metadata survives a round trip."""
    path = checkpoint / MODEL_CARD_FILE
    card = ModelCard.load(path)
    assert ModelCard(str(card)).data.to_dict() == card.data.to_dict() == metadata_load(path)
    data = card.data
    assert isinstance(data, ModelCardData)
    assert data.pipeline_tag == "text-classification" and data.library_name == "transformers"
    return data, card.text


def test_the_card_after_evaluation_holds_the_labels_and_the_test_metrics(command_line_run):
    output = command_line_run[2]
    report = json.loads((output / "eval_report.json").read_text())
    data, text = card_of(output / "checkpoint")
    results = data.eval_results
    assert results and {(r.dataset_split, r.dataset_name) for r in results} == {("test", Path(report["data"]).name)}
    figures = {r.metric_name: r.metric_value for r in results}
    metrics = report["metrics"]
    assert figures == {"accuracy (test)": round(metrics["accuracy"], 6),
                       "macro F1 (test)": round(metrics["macro_f1"], 6),
                       "weighted F1 (test)": round(metrics["weighted_f1"], 6)}
    assert all(f"| {name} |" in text for name in CONFERENCES)
    assert f'model="{REPO}"' in text and "trust_remote_code=True" in text
    assert "custom_code" in (data.tags or [])


def test_training_writes_a_card_with_the_validation_metrics(mean_multilabel):
    data, text = card_of(mean_multilabel)
    validation = json.loads((mean_multilabel / METRICS_FILE).read_text())["validation"]
    figures = {r.metric_name: r.metric_value for r in data.eval_results or []}
    assert {r.dataset_split for r in data.eval_results or []} == {"validation"}
    assert figures["mean ROC AUC (validation)"] == round(validation["mean_roc_auc"], 6)
    assert figures["macro F1 at the tuned thresholds (validation)"] == round(validation["at_tuned"]["macro_f1"], 6)
    info = read_info(mean_multilabel)
    assert info.thresholds is not None
    for name, threshold in zip(TOXIC_LABELS, info.thresholds, strict=True):
        assert f"| {name} | {threshold:.4f} |" in text


def test_the_cards_thresholds_for_pipeline_scores_give_the_served_labels(mean_multilabel, toxic_csv, tmp_path):
    """At a temperature the pipeline's scores are not the served ones; the card's second threshold column is the
    served threshold carried back to them, so either pair answers alike."""
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(mean_multilabel, checkpoint)
    texts = toxic_texts(toxic_csv)[:100]
    raw = transformer_scores(checkpoint, texts)
    served_thresholds = np.median(with_temperature("multilabel", raw, 2.0), axis=0)  # a threshold that splits
    info = read_info(checkpoint).model_copy(update={"temperature": 2.0, "thresholds": served_thresholds.tolist()})
    (checkpoint / CLASSIFIER_FILE).write_text(info.model_dump_json())
    card = ModelCard.load(write_model_card(checkpoint)).text
    scored = ModelInferer(checkpoint, backend="torch").score_texts(texts)
    on_pipeline = np.array(pipeline_thresholds(info))
    np.testing.assert_array_equal(scored.members[TRANSFORMER] >= on_pipeline, scored.served >= served_thresholds)
    assert 0 < (scored.served >= served_thresholds).mean() < 1
    assert f"| toxic | {served_thresholds[0]:.4f} | {on_pipeline[0]:.4f} |" in card
    assert "the temperature 2: the served scores' log-odds" in card


def test_an_upload_that_cannot_reach_the_hub_is_one_line_naming_the_repo(command_line_run):
    code, stderr, output = command_line_run
    assert code == 2 and "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --push-to-hub {REPO}: the upload to http://127.0.0.1:") and "refused" in last
    assert f"stays in {output / 'checkpoint'}" in last


def test_the_upload_sends_the_model_and_its_card_and_keeps_the_data_home(command_line_run):
    files = shared_files(command_line_run[2] / "checkpoint")
    assert EXPORT_ROWS_FILE not in files and (command_line_run[2] / "checkpoint" / EXPORT_ROWS_FILE).is_file()
    assert {MODEL_CARD_FILE, MODELING_FILE, "model.safetensors", CONFIG_FILE, "classifier.json",
            "tokenizer.json"} <= set(files)
    assert not [name for name in files if name.startswith(".") or name.endswith(".partial")]


def test_offline_mode_stops_the_upload_with_the_repo_named(mean_multilabel, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    with pytest.raises(HubError, match=f"--push-to-hub {REPO}: the upload to .* failed .*offline"):
        push_checkpoint(mean_multilabel, REPO)


@pytest.mark.parametrize(("repo", "offline", "token", "message"), [
    (REPO, False, None, "no Hugging Face token"),
    (REPO, True, "hf_not_a_real_token", "HF_HUB_OFFLINE is set"),
    ("not a/valid//name", False, "hf_not_a_real_token", "not a Hub repository name")])
def test_a_push_that_cannot_happen_stops_before_training(repo, offline, token, message, tmp_path, monkeypatch,
                                                         capsys, tiny_bert, conference_csv):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    code = main.main(["--task", "multiclass", "--data", str(conference_csv), "--text-column", "Title",
                      "--label-column", "Conference", "--model-name-or-path", str(tiny_bert),
                      "--output-dir", str(tmp_path / "run"), "--push-to-hub", repo])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1
    assert error.startswith("error: --push-to-hub ") and repo in error and message in error
    assert not (tmp_path / "run" / "checkpoint").exists()  # nothing was trained
