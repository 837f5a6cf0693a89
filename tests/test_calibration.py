"""Temperature scaling: the fitted temperature undoes a known over-confidence, keeps each label's ranking
(multi-label) or each text's top class (multi-class), and the checkpoint serves the tempered scores that its
thresholds were tuned on."""

from __future__ import annotations

import numpy as np
import pytest

from inferer import ModelInferer
from models.scoring import with_temperature
from utils.checkpoint.contract import CheckpointFolder
from utils.training.calibration import calibration_summary, fit_temperature


def overconfident(task: str, temperature: float, rows: int = 4000, seed: int = 0):
    """Labels drawn from known probabilities, and those probabilities made sharper by `temperature`."""
    rng = np.random.default_rng(seed)
    if task == "multilabel":
        true = 1 / (1 + np.exp(-rng.normal(-1.0, 1.5, (rows, 3))))
        labels = (rng.random(true.shape) < true).astype(float)
    else:
        logits = rng.normal(0.0, 1.0, (rows, 4))
        true = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        labels = np.array([rng.choice(4, p=p) for p in true])
    return labels, with_temperature(task, true, 1 / temperature)


@pytest.mark.parametrize("task", ["multilabel", "multiclass"])
def test_the_fitted_temperature_undoes_a_known_overconfidence(task):
    labels, scores = overconfident(task, 2.0)
    temperature = fit_temperature(task, labels, scores)
    assert temperature == pytest.approx(2.0, rel=0.1)  # 4,000 rows: the estimate lies within 10%
    tempered = with_temperature(task, scores, temperature)
    summary = calibration_summary(task, labels, scores, tempered, ["a", "b", "c", "d"][:scores.shape[1]],
                                  temperature)
    assert summary["validation_ece_after"] < summary["validation_ece_before"] / 2
    assert summary["validation_nll_after"] < summary["validation_nll_before"]
    if task == "multiclass":  # every text keeps its top class
        assert (tempered.argmax(axis=1) == scores.argmax(axis=1)).all()
        return
    for j in range(scores.shape[1]):  # every label ranks the texts as before
        assert (np.argsort(tempered[:, j], kind="stable") == np.argsort(scores[:, j], kind="stable")).all()


def test_the_checkpoint_serves_the_tempered_scores_its_thresholds_were_tuned_on(tmp_path, tiny_trainer, tiny_bert,
                                                                                toxic_csv):
    import pandas as pd

    checkpoint = tiny_trainer(tmp_path, tiny_bert, "bert", "multilabel", toxic_csv,
                              temperature_scaling=True).checkpoint
    summary = CheckpointFolder(checkpoint).metrics()["calibration"]
    assert summary["validation_nll_after"] <= summary["validation_nll_before"]
    inferer = ModelInferer(checkpoint, backend="torch")
    temperature = inferer.info.temperature
    assert temperature == summary["temperature"] != 1.0 and 0.1 <= temperature <= 10.0  # fitted in training
    texts = pd.read_csv(toxic_csv).comment_text.tolist()[:16]
    members = inferer.score_texts(texts).members
    served, _ = inferer.score_batch(texts)
    np.testing.assert_allclose(served, with_temperature("multilabel", members["transformer"], temperature),
                               atol=1e-9)  # the same arithmetic on the same scores
    assert inferer.predict(texts[0])["scores"] == pytest.approx(dict(zip(inferer.label_names, served[0],
                                                                         strict=True)), abs=1e-6)
