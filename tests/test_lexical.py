"""The lexical member on real rows: numpy features equal scikit-learn's, scores survive save and load, no
pickle is written or read, and serving needs neither scikit-learn nor scipy."""

from __future__ import annotations

import builtins
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TOXIC_LABELS
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from scipy.sparse import csr_matrix, hstack
from sklearn.linear_model import LogisticRegression

from models.lexical import CONFIG_FILE, WEIGHTS_FILE, LexicalModel, LexicalSettings
from utils.data.datasets import SHARED_DATA_DIR
from utils.inference.explain import split_words
from utils.training import lexical_fit
from utils.training.lexical_fit import IN_PROCESS_ROWS, build_vectorizers, fit_label, fit_lexical

ROOT = Path(__file__).resolve().parents[1]
# measured on these rows: at most 2.5e-16 between the numpy transform and TfidfVectorizer, and 1.3e-15
# between the numpy scores and LogisticRegression.predict_proba
TRANSFORM_TOLERANCE = 1e-14
SCORE_TOLERANCE = 1e-14
OCCLUSION_TOLERANCE = 1e-13  # measured: at most 4.3e-15 between occlusion_scores and scoring each shorter text
# what lowercasing and accent stripping change in place: final sigma, dotted I, NFKD to a space (´ ¨), NBSP
TRICKY_TEXTS = ["Ωραία ΟΔΟΣ» «ΣΑΣ» café naïve ´x¨y İstanbul \u00a0nbsp\u3000wide ﬁne ½", "idiot!! don't f***ing",
                "", "   ", "idiot", "idiot idiot", "a b", "«»", "you are an idiot.\n\nGo away,stupid!"]


@pytest.fixture(scope="module")
def toxic() -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """900 real Jigsaw comments (every label present) to fit on, 300 others to score."""
    frame = pd.read_csv(SHARED_DATA_DIR / "toxic" / "train.csv")
    rare = frame[(frame.threat == 1) | (frame.identity_hate == 1) | (frame.severe_toxic == 1)].head(150)
    rows = pd.concat([rare, frame.drop(rare.index).head(1050)]).sample(frac=1.0, random_state=0)
    texts, labels = rows.comment_text.tolist(), np.asarray(rows[TOXIC_LABELS])
    return texts[:900], labels[:900], texts[900:], labels[900:]


@pytest.fixture(scope="module")
def conference() -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """Real paper titles, 5 conferences as class ids: 600 to fit on, 200 to score."""
    frame = pd.read_csv(SHARED_DATA_DIR / "conference" / "title_conference.csv").sample(800, random_state=0)
    classes = sorted(frame.Conference.unique())
    labels = frame.Conference.map(classes.index).to_numpy()
    return frame.Title.tolist()[:600], labels[:600], frame.Title.tolist()[600:], labels[600:]


@pytest.fixture(scope="module")
def goemotions_texts() -> list[str]:
    """Reddit comments with emoji, accents and other non-ASCII text."""
    frame = pd.read_csv(SHARED_DATA_DIR / "goemotions" / "dev.tsv", sep="\t", header=None, quoting=3)
    texts = frame[0].tolist()
    return [t for t in texts if not t.isascii()][:150] + texts[:350]


def as_scipy(model: LexicalModel, texts: list[str]) -> csr_matrix:
    rows = model.transform(texts)
    return csr_matrix((rows.values, rows.indices, rows.indptr), shape=(len(texts), rows.num_columns))


SETTINGS = {
    "defaults": LexicalSettings(),
    "raw tf, accents stripped, word 1-3, char 1-4": LexicalSettings(
        sublinear_tf=False, strip_accents=True, word_ngrams=(1, 3), char_ngrams=(1, 4), min_df=1),
    "word only, 1-char tokens, capped": LexicalSettings(
        char_ngrams=None, token_pattern=r"(?u)\b\w+\b", word_max_features=2000),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_numpy_transform_equals_sklearn(name, toxic, goemotions_texts):
    fit_texts, fit_labels, other_texts, _ = toxic
    settings = SETTINGS[name]
    model = fit_lexical(fit_texts, fit_labels, "multilabel", settings)
    vectorizers = build_vectorizers(settings)
    for vectorizer in vectorizers:
        vectorizer.fit(fit_texts)
    for texts in (other_texts, goemotions_texts, ["", "   ", "a", "Ünïcödé ÀÉÎ naïve café"]):
        expected = hstack([v.transform(texts) for v in vectorizers], format="csr")
        got = as_scipy(model, texts)
        assert got.shape == expected.shape
        assert got.count_nonzero() == expected.count_nonzero()
        assert abs(got - expected).max() <= TRANSFORM_TOLERANCE


def test_multiclass_scores_equal_sklearn_predict_proba(conference):
    fit_texts, fit_labels, other_texts, _ = conference
    settings = LexicalSettings(c=4.0, nb_weighting=False)
    model = fit_lexical(fit_texts, fit_labels, "multiclass", settings)
    vectorizers = build_vectorizers(settings)
    x_fit = hstack([v.fit_transform(fit_texts) for v in vectorizers], format="csr")
    reference = LogisticRegression(C=4.0, class_weight="balanced", solver="newton-cg", max_iter=1000, tol=1e-4)
    reference.fit(x_fit, fit_labels)
    expected = reference.predict_proba(hstack([v.transform(other_texts) for v in vectorizers], format="csr"))
    np.testing.assert_allclose(model.scores(other_texts), expected, rtol=0, atol=SCORE_TOLERANCE)


def test_two_classes_score_as_scikit_learns_binary_model(conference):
    """Two classes: scikit-learn fits one logit; the member serves the same probabilities as a softmax of two."""
    texts, labels, other, _ = conference
    keep = labels < 2
    texts, labels = [t for t, k in zip(texts, keep, strict=True) if k], labels[keep]
    settings = LexicalSettings.for_task("multiclass")
    model = fit_lexical(texts, labels, "multiclass", settings)
    reference = LogisticRegression(C=settings.c, class_weight=settings.class_weight, solver="newton-cg",
                                   tol=settings.tol, max_iter=settings.max_iter).fit(as_scipy(model, texts), labels)
    np.testing.assert_allclose(model.scores(other), reference.predict_proba(as_scipy(model, other)),
                               rtol=0, atol=SCORE_TOLERANCE)


def test_multilabel_scores_equal_sklearn_predict_proba(toxic):
    fit_texts, fit_labels, other_texts, _ = toxic
    settings = LexicalSettings(c=2.0, class_weight=None, nb_weighting=False)
    model = fit_lexical(fit_texts, fit_labels, "multilabel", settings)
    vectorizers = build_vectorizers(settings)
    x_fit = hstack([v.fit_transform(fit_texts) for v in vectorizers], format="csr")
    x_other = hstack([v.transform(other_texts) for v in vectorizers], format="csr")
    for j in (0, 3):  # toxic, threat
        reference = LogisticRegression(C=2.0, solver="liblinear", dual=True, random_state=42)
        reference.fit(x_fit, fit_labels[:, j])
        np.testing.assert_allclose(model.scores(other_texts)[:, j], reference.predict_proba(x_other)[:, 1],
                                   rtol=0, atol=SCORE_TOLERANCE)


def test_fits_stopped_at_max_iter_are_counted_not_warned_per_fit(toxic, recwarn):
    fit_texts, fit_labels, other_texts, other_labels = toxic
    settings = LexicalSettings(c_grid=(0.5, 8.0), max_iter=1)
    model = fit_lexical(fit_texts, fit_labels, "multilabel", settings, validation=(other_texts, other_labels))
    assert 0 < model.fit_report["unconverged_fits"] <= model.fit_report["fits"]
    assert not [w for w in recwarn if "converge" in str(w.message)]
    converged = fit_lexical(fit_texts, fit_labels, "multilabel", LexicalSettings(c_grid=(0.5,)),
                                 validation=(other_texts, other_labels))
    assert converged.fit_report["unconverged_fits"] == 0


def test_c_is_chosen_on_validation(toxic):
    fit_texts, fit_labels, other_texts, other_labels = toxic
    settings = LexicalSettings(c_grid=(0.5, 8.0), c=2.0, c_per_label=True, rare_below=0)
    model = fit_lexical(fit_texts, fit_labels, "multilabel", settings, validation=(other_texts, other_labels))
    grid = model.fit_report["validation_roc_auc"]
    assert set(grid) == {"0.5", "2.0", "8.0"}
    for j, c in enumerate(model.fit_report["c_per_label"]):
        assert grid[str(c)][j] == max(grid[k][j] for k in grid if grid[k][j] is not None)


def test_rising_c_stops_once_validation_turns_down(toxic):
    """Each label stops after two C values below its best; where its whole curve has one peak the choice is
    the whole grid's, and the skipped values (the slowest fits) are reported as unscored."""
    fit_texts, fit_labels, other_texts, other_labels = toxic
    grid = (0.05, 0.25, 1.0, 4.0, 16.0)
    whole, stopped = (fit_lexical(fit_texts, fit_labels, "multilabel",
                                       LexicalSettings(c_grid=grid, c=1.0, c_patience=patience, rare_below=0),
                                       validation=(other_texts, other_labels)) for patience in (None, 2))
    curves = np.array([whole.fit_report["validation_roc_auc"][str(c)] for c in grid], dtype=float)
    kept = np.array([stopped.fit_report["validation_roc_auc"][str(c)] for c in grid], dtype=float)
    assert np.isnan(kept).any()  # some label stopped early
    for j in range(curves.shape[1]):
        scored = ~np.isnan(kept[:, j])
        assert np.allclose(kept[scored, j], curves[scored, j])  # the same fits up to the stop
        peaks = int(np.sum(np.diff(np.sign(np.diff(curves[:, j]))) < 0))
        if peaks <= 1:
            assert stopped.fit_report["c_per_label"][j] == whole.fit_report["c_per_label"][j]


def test_a_rare_label_takes_the_shrunk_default_not_its_own_choice(toxic):
    """threat has 7 validation positives here (under 10): it neither chooses its C on them nor takes NB
    weighting; it is the plain model at C = 4, while the other labels keep their NB weighting and own C."""
    fit_texts, fit_labels, other_texts, other_labels = toxic
    model = fit_lexical(fit_texts, fit_labels, "multilabel", LexicalSettings(),
                        validation=(other_texts, other_labels))
    report = model.fit_report
    threat = TOXIC_LABELS.index("threat")
    assert other_labels[:, threat].sum() == 7
    assert report["rare"] == {"labels": [threat], "C": 4.0, "nb_weighting": False}
    assert report["c_per_label"][threat] == 4.0
    assert all(by_label[threat] is None for by_label in report["validation_roc_auc"].values())  # none searched
    plain = fit_lexical(fit_texts, fit_labels, "multilabel", LexicalSettings(c=4.0, nb_weighting=False))
    np.testing.assert_allclose(model.scores(other_texts)[:, threat], plain.scores(other_texts)[:, threat],
                               rtol=0, atol=SCORE_TOLERANCE)
    assert model.nb_ratios is not None and (model.nb_ratios[threat] == 1).all()
    others = [j for j in range(len(TOXIC_LABELS)) if j != threat]
    assert not (model.nb_ratios[others] == 1).all(axis=1).any()  # NB-weighted


def test_over_the_budget_each_label_stops_at_the_first_c_below_its_best(toxic):
    """900 rows x 5 searched labels x 9 C values = 40,500: under a budget of 10,000 each label's search stops one
    C past its best instead of two, which cuts the fits (each label's highest C: its slowest)."""
    fit_texts, fit_labels, other_texts, other_labels = toxic
    reports = {budget: fit_lexical(fit_texts, fit_labels, "multilabel", LexicalSettings(c_search_budget=budget),
                                   validation=(other_texts, other_labels)).fit_report for budget in (10**9, 10_000)}
    assert reports[10**9]["c_patience"] == 2 and reports[10_000]["c_patience"] == 1
    for report in reports.values():
        curves = np.array(list(report["validation_roc_auc"].values()), dtype=float)  # C values x labels
        fitted = (~np.isnan(curves)).sum(axis=0)
        for j in np.flatnonzero(fitted):  # threat (rare) is fitted once, unsearched
            assert fitted[j] == min(9, int(np.nanargmax(curves[:, j])) + 1 + report["c_patience"])
        assert report["fits"] == fitted.sum() + 1
    assert reports[10_000]["fits"] < reports[10**9]["fits"]


def test_labels_fitted_in_groups_across_processes_equal_each_fitted_alone(toxic):
    """Past IN_PROCESS_ROWS the labels go to one process per core in groups (the features copied once a group):
    each label's model is the one fitted alone in this process, to the bit."""
    texts, labels = toxic[0] + toxic[2], np.vstack([toxic[1], toxic[3]])
    labels = np.hstack([labels, labels[:, ::-1]])  # 12 labels: more than one a group
    settings = LexicalSettings()
    x = hstack([v.fit_transform(texts) for v in build_vectorizers(settings)], format="csr")
    assert len(texts) >= IN_PROCESS_ROWS
    grouped = lexical_fit.fit_labels(x, labels, None, None, None, list(range(12)), [1.0], settings)
    assert len(grouped) == 12
    for j, fitted in enumerate(grouped):
        alone = fit_label(x, labels[:, j], None, None, None, [1.0], settings)
        assert np.array_equal(fitted[0][0][0], alone[0][0][0]) and fitted[0][0][1] == alone[0][0][1]


def test_settings_saved_before_the_rare_labels_rule_still_load():
    """A lexical.json written before `rare_below` and the search budget existed loads with their defaults."""
    old = {k: v for k, v in LexicalSettings().to_json().items()
           if k not in ("rare_below", "rare_c", "c_search_budget")}
    assert LexicalSettings.from_json(json.loads(json.dumps(old))) == LexicalSettings()


def test_multiclass_c_search_stops_once_validation_turns_down(conference):
    """Rising C, two at a time: the search ends two values past the best macro-F1, and chooses as the whole
    grid does when the grid's curve has one peak."""
    fit_texts, fit_labels, other_texts, other_labels = conference
    grid = (0.05, 0.25, 1.0, 4.0, 16.0, 64.0)
    whole, stopped = (fit_lexical(fit_texts, fit_labels, "multiclass",
                                       LexicalSettings(nb_weighting=False, c_grid=grid, c=1.0, c_patience=patience),
                                       validation=(other_texts, other_labels)) for patience in (None, 2))
    curve = [(point["macro_f1"], point["accuracy"]) for point in whole.fit_report["validation_grid"]]
    kept = [(point["macro_f1"], point["accuracy"]) for point in stopped.fit_report["validation_grid"]]
    assert len(curve) == 6 and kept == curve[:len(kept)]
    assert len(kept) - 1 - kept.index(max(kept)) >= 2 or len(kept) == 6
    if len(kept) < 6 and max(curve) == max(kept):
        assert stopped.fit_report["C"] == whole.fit_report["C"]
        np.testing.assert_array_equal(stopped.coef, whole.coef)


@pytest.fixture(scope="module")
def saved(toxic, conference, tmp_path_factory) -> dict[str, tuple[LexicalModel, Path, list[str]]]:
    """Each task's default model (NB-weighted multi-label, multinomial multi-class) and an NB-weighted
    multi-class one (a binary NB-LR per class), fitted and saved."""
    out = {}
    for name, task, (fit_texts, fit_labels, other_texts, _), settings in (
            ("multilabel", "multilabel", toxic, LexicalSettings.for_task("multilabel")),
            ("multiclass", "multiclass", conference, LexicalSettings.for_task("multiclass")),
            ("multiclass NB", "multiclass", conference, LexicalSettings(nb_weighting=True))):
        model = fit_lexical(fit_texts, fit_labels, task, settings)
        folder = tmp_path_factory.mktemp(task)
        model.save(folder)
        out[name] = (model, folder, other_texts)
    return out


@pytest.mark.parametrize("name", ["multilabel", "multiclass", "multiclass NB"])
def test_save_load_round_trip_gives_the_same_scores(name, saved):
    model, folder, texts = saved[name]
    loaded = LexicalModel.load(folder)
    np.testing.assert_array_equal(loaded.scores(texts), model.scores(texts))
    assert loaded.settings == model.settings and loaded.task == model.task
    assert (loaded.nb_ratios is not None) == model.settings.nb_weighting
    assert loaded.fit_report == json.loads(json.dumps(model.fit_report))


@pytest.mark.parametrize("name", ["multilabel", "multiclass", "multiclass NB"])
def test_save_writes_safetensors_and_json_only(name, saved):
    _, folder, _ = saved[name]
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    json.loads((folder / CONFIG_FILE).read_text())
    raw = (folder / WEIGHTS_FILE).read_bytes()
    header_size = int.from_bytes(raw[:8], "little")  # safetensors: a JSON header, then raw little-endian floats
    header = json.loads(raw[8:8 + header_size])
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"F64"}
    assert not raw.startswith(b"\x80")  # the pickle protocol marker


class PlantedPayload:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_planted_pickle_is_never_read(saved, tmp_path, monkeypatch):
    model, folder, texts = saved["multilabel"]
    planted = tmp_path / "checkpoint"
    planted.mkdir()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        (planted / name).write_bytes((folder / name).read_bytes())
    marker = tmp_path / "unpickled"
    for name in ("lexical.pkl", "lexical.joblib", "model.pickle"):
        (planted / name).write_bytes(pickle.dumps(PlantedPayload(marker)))
    opened: list[str] = []
    real_open = builtins.open

    def recording_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(builtins, "open", recording_open)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    loaded = LexicalModel.load(planted)
    scores = loaded.scores(texts)
    monkeypatch.undo()
    assert not marker.exists()
    assert not [path for path in opened if Path(path).suffix in (".pkl", ".joblib", ".pickle")]
    np.testing.assert_array_equal(scores, model.scores(texts))


SERVING_SCRIPT = """
import importlib.abc, importlib.util, json, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("sklearn", "scipy", "joblib"):
            raise ImportError("serving must not import " + name)
        return None

sys.meta_path.insert(0, Refuse())
spec = importlib.util.spec_from_file_location("lexical", sys.argv[1])
lexical = importlib.util.module_from_spec(spec)
sys.modules["lexical"] = lexical
spec.loader.exec_module(lexical)
model = lexical.LexicalModel.load(sys.argv[2])
texts = json.loads(sys.stdin.read())
print(json.dumps({"scores": model.scores(texts).tolist(),
                  "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("sklearn", "scipy"))}))
"""


@pytest.mark.parametrize("name", ["multilabel", "multiclass"])
def test_serving_path_needs_neither_sklearn_nor_scipy(name, saved):
    model, folder, texts = saved[name]
    answer = subprocess.run([sys.executable, "-c", SERVING_SCRIPT, str(ROOT / "models" / "lexical.py"), str(folder)],
                            input=json.dumps(texts[:50]), capture_output=True, text=True, check=True)
    result = json.loads(answer.stdout)
    assert result["modules"] == []
    np.testing.assert_array_equal(np.array(result["scores"]), model.scores(texts[:50]))


def test_feature_contributions_add_up_to_the_logit(saved):
    model, _, texts = saved["multilabel"]
    text = next(t for t in texts if len(t) > 80)
    for label in range(model.num_labels):
        contributions = model.feature_contributions(text, label)
        total = sum(c.value for c in contributions) + model.intercept[label]
        assert total == pytest.approx(model.logits([text])[0, label], abs=1e-13)
        assert [abs(c.value) for c in contributions] == sorted((abs(c.value) for c in contributions), reverse=True)
        assert {c.analyzer for c in contributions} == {"word", "char_wb"}


def shorter_texts(text: str, spans: list[tuple[int, int]]) -> list[str]:
    """The text, then with each span's characters replaced by one space: what occlusion_scores scores."""
    return [text] + [text[:start] + " " + text[end:] for start, end in spans]


@pytest.mark.parametrize("name", ["multilabel", "multiclass", "multiclass NB"])
def test_occlusion_scores_equal_scoring_each_shorter_text(name, saved):
    model, _, texts = saved[name]
    for text in texts[:40] + TRICKY_TEXTS:
        spans = split_words(text)
        np.testing.assert_allclose(model.occlusion_scores(text, spans), model.scores(shorter_texts(text, spans)),
                                   rtol=0, atol=OCCLUSION_TOLERANCE, err_msg=text)


@hypothesis_settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=" \t\n\u00a0idot!ab'-ΣσςİI´é½", max_size=30), cuts=st.lists(
    st.tuples(st.integers(0, 30), st.integers(0, 30)), max_size=6))
def test_occlusion_scores_any_spans_exactly(saved, text, cuts):
    """Any spans, across whitespace or empty too, over the characters normalising treats specially."""
    model = saved["multilabel"][0]
    spans = [(min(a, b, len(text)), min(max(a, b), len(text))) for a, b in cuts]
    np.testing.assert_allclose(model.occlusion_scores(text, spans), model.scores(shorter_texts(text, spans)),
                               rtol=0, atol=OCCLUSION_TOLERANCE)


def test_occlusion_scores_with_a_token_pattern_across_spaces_are_still_exact(toxic):
    """A pattern whose tokens span whitespace breaks the chunk-by-chunk reading: each shorter text is scored whole."""
    texts, labels = toxic[0][:200], toxic[1][:200]
    model = fit_lexical(texts, labels, "multilabel", LexicalSettings(token_pattern=r"\w+ \w+", char_ngrams=None))
    text = "you are an idiot. go away now"
    spans = split_words(text)
    np.testing.assert_allclose(model.occlusion_scores(text, spans), model.scores(shorter_texts(text, spans)),
                               rtol=0, atol=OCCLUSION_TOLERANCE)


def test_load_refuses_another_format_version(saved, tmp_path):
    _, folder, _ = saved["multiclass"]
    description = json.loads((folder / CONFIG_FILE).read_text())
    description["format_version"] = 99
    (tmp_path / CONFIG_FILE).write_text(json.dumps(description))
    (tmp_path / WEIGHTS_FILE).write_bytes((folder / WEIGHTS_FILE).read_bytes())
    with pytest.raises(ValueError, match="format version 99"):
        LexicalModel.load(tmp_path)
