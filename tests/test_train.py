"""Training end to end on real rows: checkpoints that load with plain transformers, determinism, frozen
encoders, early stopping, the metrics log, float32 weights, and one run on the real MiniLM backbone."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CONFERENCES, TOXIC_LABELS
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import train
from inferer import ModelInferer
from models import build_classifier, default_backbone_path, load_classifier
from utils.checkpoint.contract import METRICS_FILE, CheckpointFolder, ClassifierInfo, read_info, write_checkpoint
from utils.config import config_from_saved, make_config
from utils.data.prepare import DataLayout, DataSplits, prepare_splits
from utils.data.readers import LabeledTexts
from utils.evaluation.metrics import SELECTION_METRIC, compute_metrics
from utils.training.optim import freeze, loss_weights, parameter_groups
from utils.training.resume import Progress

SHORT = {"max_length": 32, "max_train_samples": 64}  # a few steps on short inputs for the tests' own runs
PROBLEM_TYPES = {"multilabel": "multi_label_classification", "multiclass": "single_label_classification"}


def texts_of(data: Path, count: int = 8) -> list[str]:
    frame = pd.read_csv(data)
    return frame["comment_text" if "comment_text" in frame else "Title"].head(count).tolist()


def logits(model, tokenizer, texts, max_length=32) -> torch.Tensor:
    batch = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def log_records(checkpoint: Path) -> list[dict]:
    return [json.loads(line) for line in (checkpoint.parent / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data_of(toxic_csv, conference_csv):
    return {"multilabel": toxic_csv, "multiclass": conference_csv}


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, tiny_trainer, data_of, request):
    """Train (once per module) a tiny backbone for a few steps: `short_run(model_type, task)` -> checkpoint."""
    done = {}

    def get(model_type: str, task: str) -> Path:
        if (model_type, task) not in done:
            backbone = request.getfixturevalue(f"tiny_{model_type}")
            done[model_type, task] = tiny_trainer(tmp_path_factory.mktemp(f"{model_type}_{task}"), backbone,
                                                  model_type, task, data_of[task], **SHORT).checkpoint
        return done[model_type, task]

    return get


@pytest.fixture(scope="module", params=[(m, t) for m in ("bert", "roberta", "distilbert")
                                        for t in ("multilabel", "multiclass")], ids=lambda p: "-".join(p))
def cls_checkpoint(request, short_run):
    """A checkpoint with the stock [CLS] head per backbone and task (tiny BERT ones come from conftest)."""
    model_type, task = request.param
    if model_type == "bert":
        return request.getfixturevalue(f"{task}_checkpoint"), model_type, task
    return short_run(model_type, task), model_type, task


def test_cls_checkpoint_loads_with_plain_transformers(cls_checkpoint, data_of):
    checkpoint, model_type, task = cls_checkpoint
    labels = TOXIC_LABELS if task == "multilabel" else CONFERENCES
    plain = AutoModelForSequenceClassification.from_pretrained(checkpoint)
    ours = load_classifier(checkpoint)
    assert type(plain).__name__ == {"bert": "BertForSequenceClassification", "roberta":
                                    "RobertaForSequenceClassification", "distilbert":
                                    "DistilBertForSequenceClassification"}[model_type]
    assert plain.config.problem_type == PROBLEM_TYPES[task]
    assert plain.config.id2label == dict(enumerate(labels))
    assert plain.config.label2id == {name: i for i, name in enumerate(labels)}
    assert plain.config.classifier_pooling == "cls"
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    texts = texts_of(data_of[task])
    expected = logits(ours, tokenizer, texts)
    assert expected.shape == (len(texts), len(labels))
    torch.testing.assert_close(logits(plain, tokenizer, texts), expected, rtol=0, atol=1e-5)
    assert read_info(checkpoint).labels == labels


def test_weights_are_float32_and_the_metrics_log_is_written(cls_checkpoint):
    checkpoint, _, task = cls_checkpoint
    weights = load_file(str(checkpoint / "model.safetensors"))
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}
    records = log_records(checkpoint)
    summary = json.loads((checkpoint / METRICS_FILE).read_text())
    metric = f"val_{SELECTION_METRIC[task]}"
    assert records and all(metric in r and "loss" in r for r in records)
    assert records[-1]["step"] == summary["steps"]
    assert max(r[metric] for r in records) == pytest.approx(summary["validation"][SELECTION_METRIC[task]])


@pytest.mark.parametrize("model_type", ["bert", "roberta", "distilbert"])
def test_mean_pooling_checkpoint_reloads_with_the_same_logits(model_type, request, tmp_path, conference_csv):
    backbone = request.getfixturevalue(f"tiny_{model_type}")
    model = build_classifier(model_type, "multiclass", str(backbone), CONFERENCES, "mean").eval()
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    info = ClassifierInfo(task="multiclass", labels=CONFERENCES, max_length=64, truncation="head", pooling="mean",
                          model_type=model_type, backbone=str(backbone))
    checkpoint = write_checkpoint(tmp_path / "checkpoint", model, tokenizer, info, {}, {})
    texts = texts_of(conference_csv)
    expected = logits(model, tokenizer, texts)
    first, second = load_classifier(checkpoint), load_classifier(checkpoint)
    assert first.config.classifier_pooling == "mean"
    torch.testing.assert_close(logits(first, tokenizer, texts), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(logits(second, tokenizer, texts), expected, rtol=0, atol=1e-6)
    # the stock head reads the first token only, so mean pooling really is a different model
    plain = AutoModelForSequenceClassification.from_pretrained(checkpoint)
    assert not torch.allclose(logits(plain, tokenizer, texts), expected, atol=1e-3)


def test_trained_mean_pooling_checkpoint_scores_as_in_training(tmp_path, tiny_trainer, tiny_roberta,
                                                               conference_csv):
    result = tiny_trainer(tmp_path, tiny_roberta, "roberta", "multiclass", conference_csv, pooling="mean", seed=3,
                          **SHORT)
    assert read_info(result.checkpoint).pooling == "mean"
    config = make_config(task="multiclass", data=str(conference_csv), text_column="Title", label_column="Conference",
                         test_split=0.2, val_split=0.2, seed=3, max_train_samples=SHORT["max_train_samples"])
    validation = prepare_splits(config).validation
    scores, _ = ModelInferer(result.checkpoint).score_batch(validation.texts, batch_size=128)  # as in training
    macro_f1 = compute_metrics("multiclass", validation.labels, scores, CONFERENCES)["macro_f1"]
    assert macro_f1 == pytest.approx(result.best_metrics["macro_f1"], abs=1e-9)


def test_same_seed_gives_the_same_metrics_and_weights(tmp_path, tiny_trainer, tiny_distilbert, conference_csv,
                                                      short_run):
    first = short_run("distilbert", "multiclass")
    again = tiny_trainer(tmp_path, tiny_distilbert, "distilbert", "multiclass", conference_csv, **SHORT).checkpoint
    assert json.loads((again / METRICS_FILE).read_text())["validation"] == json.loads(
        (first / METRICS_FILE).read_text())["validation"]
    assert [r["val_macro_f1"] for r in log_records(first)] == [r["val_macro_f1"] for r in log_records(again)]
    a, b = load_file(str(first / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_freeze_encoder_trains_only_the_head(tmp_path, tiny_trainer, tiny_bert, conference_csv,
                                             multiclass_checkpoint):
    result = tiny_trainer(tmp_path, tiny_bert, "bert", "multiclass", conference_csv, freeze_encoder=True, **SHORT)
    backbone = load_file(str(tiny_bert / "model.safetensors"))
    trained = load_file(str(result.checkpoint / "model.safetensors"))
    encoder = {key: value for key, value in trained.items() if key.startswith("bert.")}
    assert len(encoder) == len(backbone)
    for key, value in encoder.items():
        assert torch.equal(value, backbone[key.removeprefix("bert.")]), key
    assert {"classifier.weight", "classifier.bias"} <= trained.keys()
    # without freezing, the same backbone does move
    unfrozen = load_file(str(multiclass_checkpoint / "model.safetensors"))
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(unfrozen[key], backbone[key.removeprefix("bert.")])


@pytest.mark.parametrize(("model_type", "task", "prefix"), [("bert", "multilabel", "bert."),
                                                            ("distilbert", "multiclass", "distilbert.")])
def test_a_head_fit_changes_only_the_last_layer_and_serves_what_validation_measured(
        tmp_path, tiny_trainer, request, toxic_csv, conference_csv, model_type, task, prefix):
    """transformer_fit = head: the encoder stays the pretrained one, the last layer is fitted on the texts'
    windows, and the served model scores the validation rows as the fit measured them (windows pooled)."""
    backbone = request.getfixturevalue(f"tiny_{model_type}")
    data = toxic_csv if task == "multilabel" else conference_csv
    layout = ({"text_column": "comment_text", "label_columns": TOXIC_LABELS} if task == "multilabel"
              else {"text_column": "Title", "label_column": "Conference"})
    result = tiny_trainer(tmp_path, backbone, model_type, task, data, transformer_fit="head", max_length=16,
                          long_texts="windows", seed=5)
    assert result.steps == 0 and result.settings.transformer_fit == "head"
    pretrained = load_file(str(backbone / "model.safetensors"))
    trained = load_file(str(result.checkpoint / "model.safetensors"))
    encoder = {key: value for key, value in trained.items() if key.startswith(prefix)}
    assert encoder and all(torch.equal(value, pretrained.get(key, pretrained.get(key.removeprefix(prefix))))
                           for key, value in encoder.items())
    assert {"classifier.weight", "classifier.bias"} <= trained.keys()
    validation = prepare_splits(make_config(task=task, data=str(data), test_split=0.2, val_split=0.2, seed=5,
                                            **layout)).validation
    scores, _ = ModelInferer(result.checkpoint).score_batch(validation.texts)
    metric = SELECTION_METRIC[task]
    names = TOXIC_LABELS if task == "multilabel" else CONFERENCES
    # the fit scored validation from vectors batched its own way, the inferer pads other batches: float-level
    # differences that move the tiny random model's near-tied scores (measured up to 2.9e-4 in a CI run)
    assert compute_metrics(task, validation.labels, scores, names)[metric] == pytest.approx(
        CheckpointFolder(result.checkpoint).metrics()["validation"][metric], abs=5e-4)


def test_freeze_layers_trains_the_upper_layers_only(tmp_path, tiny_trainer, tiny_bert, conference_csv):
    result = tiny_trainer(tmp_path, tiny_bert, "bert", "multiclass", conference_csv, freeze_layers=1, **SHORT)
    backbone = load_file(str(tiny_bert / "model.safetensors"))
    trained = load_file(str(result.checkpoint / "model.safetensors"))
    for key, value in trained.items():
        if key.startswith("bert.") and "pooler" not in key:
            frozen = "embeddings" in key or ".layer.0." in key
            assert torch.equal(value, backbone[key.removeprefix("bert.")]) == frozen, key
    with pytest.raises(ValueError, match="--freeze-layers 2: the encoder has 2 layers"):
        freeze(build_classifier("bert", "multiclass", str(tiny_bert), ["a", "b"], "mean"),
               make_config(), 2)


def test_early_stopping_stops_when_nothing_improves(tmp_path, tiny_trainer, tiny_bert, conference_csv):
    result = tiny_trainer(tmp_path, tiny_bert, "bert", "multiclass", conference_csv, learning_rate=0.0,
                          eval_every=1, early_stopping_patience=1, **SHORT)
    records = log_records(result.checkpoint)
    assert result.steps == 2  # of the 4 an epoch of 64 rows in batches of 16 would take
    assert [r["step"] for r in records] == [1, 2]
    assert [r["best"] for r in records] == [True, False]
    assert records[0]["val_macro_f1"] == records[1]["val_macro_f1"]


def test_real_minilm_backbone_learns(tmp_path, tiny_trainer, toxic_csv):
    backbone = default_backbone_path()
    result = tiny_trainer(tmp_path, backbone, "bert", "multilabel", toxic_csv, max_length=32,
                          max_train_samples=64, pooling="mean", freeze_embeddings=True, learning_rate=1e-4,
                          head_learning_rate=3e-3)
    pretrained = load_file(str(Path(backbone) / "model.safetensors"))
    trained = load_file(str(result.checkpoint / "model.safetensors"))
    # the pretrained encoder was loaded: frozen embeddings equal the package's, trained layers stay close
    assert torch.equal(trained["bert.embeddings.word_embeddings.weight"],
                       pretrained["embeddings.word_embeddings.weight"])
    key = "encoder.layer.3.attention.self.query.weight"
    assert (trained["bert." + key] - pretrained[key]).abs().max() < 0.01
    # 0.80 measured after 64 rows (seeded; AMD EPYC); chance is 0.5, so 0.75 says the pretrained encoder learned
    assert result.best_metrics["mean_roc_auc"] > 0.75
    assert read_info(result.checkpoint).backbone == backbone


def test_the_checkpoint_records_what_reading_and_the_recipe_decided(tmp_path, tiny_bert, conference_csv):
    """Nothing writes to the settings; training_config.json still holds the run's resolved settings as one flat
    mapping: the task and columns read from the file, the recipe's choices, the resolved backbone."""
    config = make_config(data=str(conference_csv), model_name_or_path=str(tiny_bert), output_dir=str(tmp_path),
                         epochs=1.0, batch_size=16, learning_rate=1e-3, test_split=0.2, blend="none",
                         temperature_scaling=False, export_onnx=False, **SHORT)
    result = train.run(config)
    assert (config.task, config.text_column, config.label_smoothing) == ("auto", None, None)  # as given
    recorded = CheckpointFolder(result.checkpoint).training_config()
    assert (recorded["task"], recorded["text_column"], recorded["label_column"]) == ("multiclass", "Title",
                                                                                   "Conference")
    assert (recorded["max_length"], recorded["epochs"], recorded["label_smoothing"], recorded["blend"]) == (
        32, 1.0, 0.1, "none")
    assert recorded["backbone"] == str(tiny_bert) and recorded["at_least_one_label"] == "no"
    resolved = dataclasses.replace(result.settings, precision=recorded["precision"])  # recorded as resolved too
    assert config_from_saved(recorded) == resolved  # result.settings: what main.py evaluates the test rows with


# --- pieces of the loop -------------------------------------------------------------------------------------

def splits_with(labels: np.ndarray, names: list[str]) -> DataSplits:
    data = LabeledTexts(["x"] * len(labels), labels, names, "memory")
    return DataSplits(data, data, None, [], DataLayout("multilabel" if labels.ndim == 2 else "multiclass"))


def test_loss_weights_follow_the_settings():
    multilabel = splits_with(np.array([[1, 0], [0, 0], [0, 0], [1, 1]], dtype=np.float32), ["a", "b"])
    task = "multilabel"  # as reading the data resolves it
    np.testing.assert_allclose(loss_weights(make_config(pos_weight_cap=2.5), task, multilabel), [1.0, 2.5])
    np.testing.assert_allclose(loss_weights(make_config(pos_weight="2,3"), task, multilabel), [2.0, 3.0])
    assert loss_weights(make_config(pos_weight="none"), task, multilabel) is None
    multiclass = splits_with(np.array([0, 0, 0, 1]), ["a", "b"])
    assert loss_weights(make_config(), "multiclass", multiclass) is None
    np.testing.assert_allclose(loss_weights(make_config(class_weights="auto"), "multiclass", multiclass),
                               [4 / 6, 2.0])


def test_layer_wise_learning_rates_and_no_decay_groups(tiny_bert):
    model = build_classifier("bert", "multilabel", str(tiny_bert), ["a", "b"], "cls")
    config = make_config(learning_rate=1e-3, head_learning_rate=5e-3, layer_decay=0.5, weight_decay=0.1)
    groups = parameter_groups(model, config)
    lr_of, decay_of = {}, {}
    for group in groups:
        for param in group["params"]:
            lr_of[id(param)], decay_of[id(param)] = group["lr"], group["weight_decay"]
    named = dict(model.named_parameters())
    assert len(lr_of) == len(named)  # every trainable parameter in exactly one group
    assert lr_of[id(named["bert.embeddings.word_embeddings.weight"])] == pytest.approx(1e-3 * 0.25)
    assert lr_of[id(named["bert.encoder.layer.0.attention.self.query.weight"])] == pytest.approx(1e-3 * 0.5)
    assert lr_of[id(named["bert.encoder.layer.1.attention.self.query.weight"])] == pytest.approx(1e-3)
    assert lr_of[id(named["classifier.weight"])] == pytest.approx(5e-3)
    assert decay_of[id(named["classifier.weight"])] == 0.1
    assert decay_of[id(named["classifier.bias"])] == 0.0
    assert decay_of[id(named["bert.encoder.layer.0.output.LayerNorm.weight"])] == 0.0


def test_early_stopping_counter():
    progress = Progress()
    assert [progress.record_evaluation(v) for v in (0.5, 0.6, 0.6, 0.55)] == [True, True, False, False]
    assert progress.should_stop(patience=2) and not progress.should_stop(patience=3)
    assert progress.best_value == 0.6 and not progress.should_stop(patience=0)
