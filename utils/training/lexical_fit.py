"""Fitting the lexical member with scikit-learn: the TF-IDF vectorizers whose transform `LexicalModel` reproduces,
then logistic regression per label (multi-label) or over the classes, C chosen on validation."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, cast

import numpy as np

from models.lexical import LexicalModel
from models.lexical_features import Block, LexicalSettings
from utils.data.files import DataError
from utils.machine import available_cores

IN_PROCESS_ROWS = 1000  # training rows below which the member is fitted in this process
TASKS_PER_PROCESS = 4  # groups of labels each process fits: few copies of the features, the work still shared
# one label's fits: (coef, intercept) and validation ROC AUC at each C, unconverged fits, fits made
LabelFits = tuple[list[tuple[np.ndarray, float]], list[float], int, int]


def fit_lexical(texts: list[str], labels: np.ndarray, task: str, settings: LexicalSettings | None = None,
                validation: tuple[list[str], np.ndarray] | None = None) -> LexicalModel:
    """Fit the vectorizers and the classifier on the training texts; C is chosen on `validation` if given."""
    from scipy.sparse import hstack

    settings = settings or LexicalSettings.for_task(task)
    started = time.perf_counter()
    vectorizers = build_vectorizers(settings)
    x_train = hstack([v.fit_transform(texts) for v in vectorizers], format="csr")
    x_val = (hstack([v.transform(validation[0]) for v in vectorizers], format="csr")
             if validation is not None else None)
    blocks = [Block(v.analyzer, tuple(v.ngram_range), vocabulary_list(v), v.idf_.astype(np.float64))
              for v in vectorizers]
    feature_seconds = time.perf_counter() - started
    y_val = validation[1] if validation is not None else None
    fitter = fit_multilabel if task == "multilabel" else fit_multiclass
    coef, intercept, nb_ratios, report = fitter(x_train, np.asarray(labels), x_val, y_val, settings)
    report.update({"train_rows": len(texts), "features": {b.analyzer: len(b.vocabulary) for b in blocks},
                   "seconds": {"features": round(feature_seconds, 2),
                               "total": round(time.perf_counter() - started, 2)}})
    return LexicalModel(task, settings, blocks, coef, intercept, nb_ratios, report)


def build_vectorizers(settings: LexicalSettings) -> list[Any]:
    """The scikit-learn TfidfVectorizers whose transform `LexicalModel.transform` reproduces."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    common = {"lowercase": True, "min_df": settings.min_df, "sublinear_tf": settings.sublinear_tf,
              "strip_accents": "unicode" if settings.strip_accents else None, "dtype": np.float64}
    vectorizers = [TfidfVectorizer(analyzer="word", ngram_range=tuple(settings.word_ngrams),
                                   token_pattern=settings.token_pattern,
                                   max_features=settings.word_max_features, **common)]
    if settings.char_ngrams is not None:
        vectorizers.append(TfidfVectorizer(analyzer="char_wb", ngram_range=tuple(settings.char_ngrams),
                                           max_features=settings.char_max_features, **common))
    return vectorizers


def vocabulary_list(vectorizer: Any) -> list[str]:
    """The fitted vocabulary as a list: n-gram i is feature column i."""
    terms = [""] * len(vectorizer.vocabulary_)
    for term, index in vectorizer.vocabulary_.items():
        terms[index] = term
    return terms


def nb_log_count_ratio(x: Any, y: np.ndarray, alpha: float) -> np.ndarray:
    """log(p / q): smoothed mean feature value over positive rows against negative rows (NB-LR, NB-SVM)."""
    positive = y == 1
    p = (np.asarray(x[positive].sum(axis=0)).ravel() + alpha) / (positive.sum() + alpha)
    q = (np.asarray(x[~positive].sum(axis=0)).ravel() + alpha) / ((~positive).sum() + alpha)
    return np.log(p / q)


def binary_logistic(x: Any, y: np.ndarray, c: float, settings: LexicalSettings) -> tuple[np.ndarray, float]:
    """One liblinear logistic regression (dual: far more n-grams than rows); (coef, intercept)."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y)) < 2:  # a label never (or always) seen: its training prevalence, smoothed
        rate = (y.sum() + 0.5) / (len(y) + 1.0)
        return np.zeros(x.shape[1]), float(np.log(rate / (1 - rate)))
    model = LogisticRegression(C=c, class_weight=settings.class_weight, solver="liblinear", dual=True,
                               tol=settings.tol, max_iter=settings.max_iter, random_state=settings.seed)
    model.fit(x, y)
    return model.coef_.ravel().astype(np.float64), float(model.intercept_[0])  # pyright: ignore[reportIndexIssue]


def fit_processes(rows: int, tasks: int) -> int:
    """One process per core for the fits, except on a small file, whose fits take less than starting the
    processes (each imports scikit-learn: about a second)."""
    return 1 if rows < IN_PROCESS_ROWS else max(1, min(tasks, available_cores()))


def candidate_cs(settings: LexicalSettings, has_validation: bool) -> list[float]:
    return sorted(set(settings.c_grid) | {settings.c}) if has_validation else [settings.c]


def fit_label(x: Any, y: np.ndarray, x_val: Any, y_val: np.ndarray | None, ratios: np.ndarray | None,
              cs: list[float], settings: LexicalSettings) -> LabelFits:
    """One label's model at each C, each one's validation ROC AUC (NaN without two validation classes), how
    many of the fits stopped at max_iter before converging (counted here, not warned once per fit), and how many
    fits were made."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import roc_auc_score

    if ratios is not None:
        x = x.multiply(ratios).tocsr()
        x_val = x_val.multiply(ratios).tocsr() if x_val is not None else None
    scored = x_val is not None and y_val is not None and len(np.unique(y_val)) == 2
    patience = settings.c_patience if scored and settings.c_per_label else None
    pairs, aucs, unconverged = [], [], 0
    for c in cs:  # rising C: the slowest fits come last, and are skipped once the curve has turned down
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            coef, intercept = binary_logistic(x, y, c, settings)
        unconverged += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        pairs.append((coef, intercept))
        aucs.append(float(roc_auc_score(y_val, x_val @ coef + intercept)) if scored else np.nan)
        if patience is not None and len(aucs) - 1 - int(np.argmax(aucs)) >= patience:
            break
    skipped = len(cs) - len(pairs)  # reported as NaN, never chosen
    return pairs + [pairs[-1]] * skipped, aucs + [np.nan] * skipped, unconverged, len(pairs)


def fit_multilabel(x: Any, y: np.ndarray, x_val: Any, y_val: np.ndarray | None,
                   settings: LexicalSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]:
    """One binary model per label; with validation, C by each label's ROC AUC or by their mean, except for the
    rare labels (fewer than `rare_below` validation positives): `fit_rare`."""
    num_labels = y.shape[1]
    ratios = (np.stack([nb_log_count_ratio(x, y[:, j], settings.nb_alpha) for j in range(num_labels)])
              if settings.nb_weighting else None)
    rare = (y_val.sum(axis=0) < settings.rare_below) if y_val is not None else np.zeros(num_labels, bool)
    common = [int(j) for j in np.flatnonzero(~rare)]
    cs = candidate_cs(settings, x_val is not None)
    search = bounded_search(settings, x.shape[0], len(common), len(cs))
    results = fit_labels(x, y, x_val, y_val, ratios, common, cs, search)
    auc = np.full((len(cs), num_labels), np.nan)
    auc[:, common] = np.array([r[1] for r in results], dtype=np.float64).T
    default = cs.index(settings.c)
    if x_val is None or not common:
        chosen = [default] * len(common)
    elif settings.c_per_label:
        chosen = [int(np.nanargmax(auc[:, j])) if not np.isnan(auc[:, j]).all() else default for j in common]
    else:
        chosen = [int(np.nanargmax(np.nanmean(auc[:, common], axis=1)))] * len(common)
    coef, intercept = np.zeros((num_labels, x.shape[1])), np.zeros(num_labels)
    c_per_label = [settings.c] * num_labels
    for j, k, result in zip(common, chosen, results, strict=True):
        coef[j], intercept[j], c_per_label[j] = *result[0][k], cs[k]
    report: dict[str, Any] = {"unconverged_fits": sum(r[2] for r in results),
                              "fits": sum(r[3] for r in results)}
    if rare.any():
        ratios = fit_rare(x, y, ratios, np.flatnonzero(rare), settings, coef, intercept, report)
        for j in np.flatnonzero(rare):
            c_per_label[j] = settings.rare_c
    report.update({"c_per_label": c_per_label, "c_patience": search.c_patience,
                   "validation_roc_auc": {str(c): [None if np.isnan(v) else float(v) for v in auc[k]]
                                          for k, c in enumerate(cs)} if x_val is not None else None})
    if x_val is not None and common:
        report["validation_mean_roc_auc"] = float(np.nanmean(auc[chosen, common]))
    return coef, intercept, ratios, report


def bounded_search(settings: LexicalSettings, rows: int, labels: int, values: int) -> LexicalSettings:
    """The settings the per-label C search runs with: when rows x labels x C values passes `c_search_budget`,
    each label stops at the first C below its best (patience 1), which drops its highest C fitted: with
    liblinear's dual solver the slowest fit of its search."""
    if rows * labels * values <= settings.c_search_budget or settings.c_patience is None:
        return settings
    return replace(settings, c_patience=min(settings.c_patience, 1))


def fit_labels(x: Any, y: np.ndarray, x_val: Any, y_val: np.ndarray | None, ratios: np.ndarray | None,
               labels: list[int], cs: list[float],
               settings: LexicalSettings) -> list[LabelFits]:
    """`fit_label` for each of `labels`, one process per core (not threads: liblinear shuffles with one global
    generator). The labels go in TASKS_PER_PROCESS groups per process, so that the features travel to a process
    once per group, not once per label (on long documents, copying them cost more than a fit); each group gets
    writable copies (liblinear refuses joblib's read-only memory maps)."""
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    if not labels:
        return []
    processes = fit_processes(x.shape[0], len(labels))
    groups = [list(g) for g in np.array_split(labels, len(labels) if processes == 1
                                               else min(len(labels), processes * TASKS_PER_PROCESS))]
    in_order = Parallel(n_jobs=processes, max_nbytes=None, return_as="generator")(
        delayed(fit_group)(x, y[:, group], x_val, None if y_val is None else y_val[:, group],
                           None if ratios is None else ratios[group], cs, settings)
        for group in groups)
    results: list[LabelFits] = []
    with tqdm(total=len(labels), desc=f"lexical member ({len(cs)} C each)", unit="label") as bar:
        for fitted in cast(Iterator[list[LabelFits]], in_order):  # joblib's generator, typed loosely
            results += fitted
            bar.update(len(fitted))
    return results


def fit_group(x: Any, y: np.ndarray, x_val: Any, y_val: np.ndarray | None, ratios: np.ndarray | None,
              cs: list[float], settings: LexicalSettings) -> list[LabelFits]:
    """`fit_label` for each column of `y` (with the matching columns of `y_val` and rows of `ratios`)."""
    return [fit_label(x, y[:, j], x_val, None if y_val is None else y_val[:, j],
                      None if ratios is None else ratios[j], cs, settings) for j in range(y.shape[1])]


def fit_rare(x: Any, y: np.ndarray, ratios: np.ndarray | None, rare: np.ndarray, settings: LexicalSettings,
             coef: np.ndarray, intercept: np.ndarray, report: dict[str, Any]) -> np.ndarray | None:
    """The rare labels fitted once each at `rare_c` without NB weighting (the shrunk default: their few
    positives can choose neither); fills their `coef` and `intercept`; returns the NB ratios with ones (no
    weighting) in their rows."""
    results = fit_labels(x, y, None, None, None, [int(j) for j in rare], [settings.rare_c], settings)
    for j, result in zip(rare, results, strict=True):
        coef[j], intercept[j] = result[0][0]
    report["fits"] += sum(r[3] for r in results)
    report["unconverged_fits"] += sum(r[2] for r in results)
    report["rare"] = {"labels": [int(j) for j in rare], "C": settings.rare_c, "nb_weighting": False}
    if ratios is None:
        return None
    ratios = ratios.copy()
    ratios[rare] = 1.0
    return ratios


def fit_multiclass(x: Any, y: np.ndarray, x_val: Any, y_val: np.ndarray | None,
                   settings: LexicalSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]:
    """A multinomial model, or with NB weighting one binary NB-LR per class (softmax over their logits).

    With validation, C maximises macro-F1, ties broken by accuracy; rising values of C are fitted side by side,
    one process per core (150 intents on 15,000 rows: 200 s one after another on two cores), and the search
    stops once `c_patience` values in a row fall below the best.
    """
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    num_classes = int(y.max()) + 1 if y_val is None else int(max(y.max(), y_val.max())) + 1
    binary = np.eye(num_classes, dtype=int)[y]
    ratios = (np.stack([nb_log_count_ratio(x, binary[:, j], settings.nb_alpha) for j in range(num_classes)])
              if settings.nb_weighting else None)
    cs = candidate_cs(settings, x_val is not None)
    workers = fit_processes(x.shape[0], len(cs))
    patience = settings.c_patience if x_val is not None else None
    keys: list[tuple[float, float]] = []
    models: list[tuple[np.ndarray, np.ndarray]] = []
    with Parallel(n_jobs=workers, max_nbytes=None) as parallel, \
            tqdm(total=len(cs), desc="lexical member (C values)", unit="C") as bar:
        for start in range(0, len(cs), workers):
            batch = cs[start:start + workers]
            fitted = parallel(delayed(fit_classes)(x, y, binary, ratios, c, num_classes, settings) for c in batch)
            models += cast(list[tuple[np.ndarray, np.ndarray]], fitted)  # joblib's list, typed loosely
            keys += [multiclass_validation(x_val, y_val, coef, intercept, ratios, num_classes)
                     if x_val is not None else (0.0, 0.0) for coef, intercept in models[start:]]
            bar.update(len(batch))
            if patience is not None and len(keys) - 1 - keys.index(max(keys)) >= patience:
                break
    best = keys.index(max(keys))  # the first of equals: the smallest C
    grid = ([{"C": c, "macro_f1": key[0], "accuracy": key[1]} for c, key in zip(cs, keys, strict=False)]
            if x_val is not None else [])  # the values of C past the stop were never fitted
    report: dict[str, Any] = {"C": cs[best], "validation_grid": grid or None}
    if grid:
        report.update({"validation_macro_f1": keys[best][0], "validation_accuracy": keys[best][1]})
    return models[best][0], models[best][1], ratios, report


def fit_classes(x: Any, y: np.ndarray, binary: np.ndarray, ratios: np.ndarray | None, c: float, num_classes: int,
                settings: LexicalSettings) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients (classes, features) and intercepts at one C."""
    from sklearn.linear_model import LogisticRegression

    if ratios is not None:
        pairs = [binary_logistic(x.multiply(ratios[j]).tocsr(), binary[:, j], c, settings)
                 for j in range(num_classes)]
        return np.stack([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    model = LogisticRegression(C=c, class_weight=settings.class_weight, solver="newton-cg", tol=settings.tol,
                               max_iter=settings.max_iter).fit(x, y)
    coef, intercept = model.coef_.astype(np.float64), model.intercept_.astype(np.float64)
    if len(model.classes_) != num_classes:
        raise DataError(f"the training rows hold {len(model.classes_)} of the {num_classes} classes (a class only "
                        "in validation or test, or one of --labels-file that no row has)")
    if num_classes == 2:  # scikit-learn's one logit z of class 1: softmax over (-z/2, z/2) gives its sigmoid
        return np.concatenate([-coef, coef]) / 2, np.concatenate([-intercept, intercept]) / 2
    return coef, intercept


def multiclass_validation(x_val: Any, y_val: Any, coef: np.ndarray, intercept: np.ndarray,
                          ratios: np.ndarray | None, num_classes: int) -> tuple[float, float]:
    """Validation macro-F1 and accuracy of one fit."""
    from sklearn.metrics import accuracy_score, f1_score

    logits = np.stack([(x_val.multiply(ratios[j]).tocsr() if ratios is not None else x_val) @ coef[j]
                       for j in range(num_classes)], axis=1) + intercept
    predicted = logits.argmax(axis=1)
    return (float(f1_score(y_val, predicted, average="macro", labels=list(range(num_classes)), zero_division=0)),
            float(accuracy_score(y_val, predicted)))
