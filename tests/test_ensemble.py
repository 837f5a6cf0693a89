"""The TF-IDF + transformer blend end to end: trained, saved without pickle, reloaded to the same scores, and
served alike by every path (ModelInferer, int8, ONNX, the API, file scoring)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TOXIC_LABELS

import export
import predict
from app import create_app
from inferer import ModelInferer
from serving.settings import ServingSettings
from utils.checkpoint.contract import LEXICAL, LEXICAL_CONFIG_FILE, LEXICAL_WEIGHTS_FILE, TRANSFORMER, CheckpointFolder
from utils.config import config_from_saved
from utils.data.prepare import prepare_splits
from utils.evaluation.metrics import SELECTION_METRIC, compute_metrics

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def blended(blend_checkpoint):
    """A tiny BERT trained on real toxic rows with the TF-IDF member beside it (conftest.py)."""
    return blend_checkpoint


@pytest.fixture(scope="module")
def blended_multiclass(blend_multiclass_checkpoint):
    return blend_multiclass_checkpoint


def training_config(checkpoint: Path, **overrides):
    """The Config the checkpoint was trained with, changed by `overrides`."""
    return config_from_saved(CheckpointFolder(checkpoint).training_config() | overrides)


def validation_rows(checkpoint: Path):
    config = training_config(checkpoint)
    return config, prepare_splits(config).validation


@pytest.mark.parametrize("fixture", ["blended", "blended_multiclass"])
def test_the_checkpoint_describes_its_members_and_reloads_to_the_training_scores(fixture, request):
    checkpoint = request.getfixturevalue(fixture)
    folder = CheckpointFolder(checkpoint)
    assert folder.info.members == [TRANSFORMER, LEXICAL]
    weights = folder.info.blend_weights
    assert weights is not None and all(0 <= w <= 1 for w in weights)
    assert len(weights) == len(folder.info.labels)
    assert folder.info.task == "multilabel" or len(set(weights)) == 1  # multi-class: one share for every class
    assert (checkpoint / LEXICAL_WEIGHTS_FILE).is_file() and (checkpoint / LEXICAL_CONFIG_FILE).is_file()
    config, validation = validation_rows(checkpoint)
    inferer = ModelInferer(checkpoint, precision="fp32")
    scores, _ = inferer.score_batch(validation.texts, batch_size=config.eval_batch_size)
    metric = SELECTION_METRIC[folder.info.task]
    recorded = folder.metrics()
    again = compute_metrics(folder.info.task, validation.labels, scores, validation.label_names,
                            inferer.thresholds)[metric]
    assert again == pytest.approx(recorded["validation"][metric], abs=1e-6)
    members = recorded["validation_members"]
    assert set(members) == {TRANSFORMER, LEXICAL}
    if folder.info.task == "multilabel":  # the blend is chosen per label on these rows: never below both members
        assert again >= min(members[TRANSFORMER][metric], members[LEXICAL][metric])


def test_ensemble_none_gives_the_transformer_alone(multilabel_checkpoint, blended, toxic_csv):
    assert CheckpointFolder(multilabel_checkpoint).info.members == [TRANSFORMER]
    assert not (multilabel_checkpoint / LEXICAL_WEIGHTS_FILE).exists()
    texts = pd.read_csv(toxic_csv).comment_text.head(20).tolist()
    plain = ModelInferer(multilabel_checkpoint)
    members = plain.score_texts(texts).members
    np.testing.assert_array_equal(plain.score_batch(texts)[0], members[TRANSFORMER])
    both = ModelInferer(blended)
    members = both.score_texts(texts).members
    assert set(members) == {TRANSFORMER, LEXICAL}
    assert np.abs(both.score_batch(texts)[0] - members[TRANSFORMER]).max() > 1e-3  # the member does count


PICKLE_PROBE = """
import pickle, sys
from pathlib import Path
events = []
sys.addaudithook(lambda event, args: events.append(args) if event == "pickle.find_class" else None)
from inferer import ModelInferer
inferer = ModelInferer(sys.argv[1])
inferer.predict_batch(["you are an idiot", "thanks for the help"])
print(len(events), Path(sys.argv[2]).exists())
"""


class Planted:
    """Unpickling this touches a marker file: proof that something read the pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_no_pickle_is_ever_loaded_from_a_checkpoint(blended, tmp_path):
    import pickle
    import shutil

    checkpoint = Path(shutil.copytree(blended, tmp_path / "checkpoint"))
    marker = tmp_path / "unpickled"
    for name in ("lexical.pkl", "model.pkl", "pytorch_model.bin", "training_args.bin"):
        (checkpoint / name).write_bytes(pickle.dumps(Planted(marker)))
    done = subprocess.run([sys.executable, "-c", PICKLE_PROBE, str(checkpoint), str(marker)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.split() == ["0", "False"]  # no class looked up by any unpickler, the marker untouched


def test_every_serving_path_gives_the_same_blended_scores(blended, tmp_path, toxic_csv):
    texts = pd.read_csv(toxic_csv).comment_text.head(24).tolist()
    reference = ModelInferer(blended, precision="fp32")
    expected, _ = reference.score_batch(texts)
    # the API
    client = create_app(reference, ServingSettings()).test_client()
    served = client.post("/predict", json={"texts": texts}).get_json()["predictions"]
    np.testing.assert_allclose([[p["scores"][n] for n in TOXIC_LABELS] for p in served], expected, atol=1e-9)
    assert client.get("/metadata").get_json()["members"] == [TRANSFORMER, LEXICAL]
    # file scoring
    source, output = tmp_path / "in.csv", tmp_path / "out.csv"
    pd.DataFrame({"comment_text": texts}).to_csv(source, index=False)
    predict.predict_file(reference, source, output, "comment_text")
    scored = pd.read_csv(output)[[f"score_{n}" for n in TOXIC_LABELS]].to_numpy()
    np.testing.assert_allclose(scored, expected, atol=1e-9)
    # the other backends: the blend sits on top of whichever runs the transformer
    import shutil

    exported = Path(shutil.copytree(blended, tmp_path / "exported"))
    export.export_graphs(exported)
    for options, tolerance in (({"backend": "onnx"}, 1e-6), ({"backend": "onnx-int8"}, 1e-3),
                               ({"quantize": True}, 1e-3)):
        scores, _ = ModelInferer(exported, **options).score_batch(texts)
        assert np.abs(scores - expected).max() <= tolerance, options


def test_eval_reports_each_member_and_the_blend(blended, tmp_path, capsys):
    import eval as evaluation

    config = training_config(blended, output_dir=str(tmp_path))
    report = evaluation.run(config, blended)
    members = report["metrics"]["members"]
    assert set(members) == {TRANSFORMER, LEXICAL}
    assert set(members[LEXICAL]["per_label"]) == set(TOXIC_LABELS)
    out = capsys.readouterr().out
    assert "tfidf alone: mean ROC AUC" in out and "transformer alone" in out
    saved = json.loads((tmp_path / "eval_report.json").read_text())
    assert saved["metrics"]["members"][LEXICAL]["mean_roc_auc"] == members[LEXICAL]["mean_roc_auc"]
