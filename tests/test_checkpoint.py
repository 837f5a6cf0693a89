"""The checkpoint folder: what it holds, float32 weights, and atomic replacement when a save fails midway."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoTokenizer

from models import build_classifier, load_classifier
from utils.checkpoint import (
    CLASSIFIER_FILE,
    METRICS_FILE,
    TRAINING_CONFIG_FILE,
    read_classifier_info,
    read_json_file,
    save_checkpoint,
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


def save(target, model, tokenizer, version, metrics=None):
    return save_checkpoint(target, model, tokenizer, {"task": "multilabel", "labels": LABELS, "version": version},
                           {"seed": version}, metrics if metrics is not None else {"val": 0.5})


def folder_state(path):
    """Every file of the folder with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_folder_holds_weights_config_tokenizer_and_json(tmp_path, model, tokenizer):
    target = save(tmp_path / "checkpoint", model, tokenizer, 1, {"validation": {"mean_roc_auc": 0.7}})
    names = {p.name for p in target.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            CLASSIFIER_FILE, TRAINING_CONFIG_FILE, METRICS_FILE} <= names
    assert read_classifier_info(target) == {"task": "multilabel", "labels": LABELS, "version": 1}
    assert read_json_file(target, TRAINING_CONFIG_FILE) == {"seed": 1}
    assert read_json_file(target, METRICS_FILE) == {"validation": {"mean_roc_auc": 0.7}}
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
    torch.testing.assert_close(word_embeddings, half.bert.embeddings.word_embeddings.weight.float(), rtol=0, atol=0)
    assert half.dtype == torch.bfloat16  # saving did not change the model itself


def test_a_new_save_replaces_the_whole_folder(tmp_path, model, tokenizer):
    target = save(tmp_path / "checkpoint", model, tokenizer, 1)
    (target / "stale.txt").write_text("from an older run")
    save(target, model, tokenizer, 2)
    assert read_classifier_info(target)["version"] == 2
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
    with pytest.raises(FileNotFoundError, match=CLASSIFIER_FILE):
        read_classifier_info(tmp_path)
    assert read_json_file(tmp_path, METRICS_FILE) == {}


def test_trained_checkpoint_describes_itself(multilabel_checkpoint):
    info = read_classifier_info(multilabel_checkpoint)
    assert info["task"] == "multilabel" and info["labels"] == ["toxic", "severe_toxic", "obscene", "threat",
                                                                 "insult", "identity_hate"]
    assert len(info["thresholds"]) == 6 and all(0 <= t <= 1 for t in info["thresholds"])
    assert (info["max_length"], info["truncation"], info["pooling"], info["model_type"]) == (64, "head_tail", "cls",
                                                                                             "bert")
    training = json.loads((multilabel_checkpoint / TRAINING_CONFIG_FILE).read_text())
    assert training["seed"] == 42 and training["task"] == "multilabel"
    metrics = read_json_file(multilabel_checkpoint, METRICS_FILE)
    assert metrics["steps"] > 0 and metrics["validation"]["mean_roc_auc"] is not None
