"""The baseline a user would otherwise pick: TF-IDF word and character n-grams with logistic regression.

It trains on the transformer's own training rows (the same Config, profile and seed), tunes C and the class
weighting on the validation split only, tunes multi-label thresholds there, and reports on the test split:

    python bench/baseline.py --data toxic|goemotions|conference|all

Full metrics go to docs/results/baseline_<data>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so that `python bench/baseline.py` finds utils/
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import sklearn  # noqa: E402
from scipy.sparse import csr_matrix, hstack  # noqa: E402
from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.multiclass import OneVsRestClassifier  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from bench.records import results_path  # noqa: E402
from utils.config import Config, parse_config  # noqa: E402
from utils.data.datasets import BUILTIN_DATASETS  # noqa: E402
from utils.data.prepare import DataSplits, prepare_splits  # noqa: E402
from utils.evaluation.metrics import SELECTION_METRIC, compute_metrics, tune_thresholds  # noqa: E402


@dataclass
class BaselineSettings:
    """The feature caps and the small grid searched on the validation split."""

    c_grid: tuple[float, ...] = (0.5, 2.0, 8.0)  # inverse regularisation strengths, tried in rising order
    class_weights: tuple[str | None, ...] = (None, "balanced")  # sklearn class_weight values to compare
    word_max_features: int = 100_000  # most frequent word 1-2 grams kept
    char_max_features: int = 200_000  # most frequent char_wb 2-5 grams kept
    min_df: int = 2  # an n-gram must occur in this many training texts
    max_iter: int = 1000  # solver iterations per fit
    # liblinear's dual solver stops at this tolerance; 1e-2 halves GoEmotions fits, AUC equal to 4 digits
    liblinear_tol: float = 1e-2


@dataclass
class Features:
    """Word 1-2 gram and char_wb 2-5 gram TF-IDF, fitted on the training texts only."""

    word: TfidfVectorizer
    char: TfidfVectorizer

    @classmethod
    def fit(cls, texts: list[str], settings: BaselineSettings) -> Features:
        common = {"sublinear_tf": True, "min_df": settings.min_df, "strip_accents": "unicode"}
        word = TfidfVectorizer(analyzer="word", ngram_range=(1, 2), token_pattern=r"(?u)\b\w+\b",
                               max_features=settings.word_max_features, **common)
        char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5),
                               max_features=settings.char_max_features, **common)
        word.fit(texts)
        char.fit(texts)
        return cls(word, char)

    def transform(self, texts: list[str]) -> csr_matrix:
        return csr_matrix(hstack([self.word.transform(texts), self.char.transform(texts)], format="csr"))

    def sizes(self) -> dict[str, int]:
        return {"word": len(self.word.vocabulary_), "char": len(self.char.vocabulary_)}


def load_splits(data: str) -> tuple[Config, DataSplits]:
    """The splits `main.py --data <data>` trains on: same defaults and seed."""
    task = BUILTIN_DATASETS[data].task
    config = parse_config(["--task", task, "--data", data])
    return config, prepare_splits(config)


def make_classifier(task: str, c: float, class_weight: str | None, settings: BaselineSettings, seed: int):
    """One liblinear logistic regression per label (multi-label), or one multinomial model (multi-class)."""
    if task == "multilabel":  # the dual problem is the smaller one: far more n-grams than rows
        return OneVsRestClassifier(
            LogisticRegression(C=c, class_weight=class_weight, solver="liblinear", dual=True,
                               tol=settings.liblinear_tol, max_iter=settings.max_iter, random_state=seed),
            n_jobs=1)
    return LogisticRegression(C=c, class_weight=class_weight, solver="newton-cg", max_iter=settings.max_iter)


def score(task: str, y_true: np.ndarray, probs: np.ndarray, label_names: list[str],
          threshold_strategy: str) -> tuple[dict[str, Any], np.ndarray | None]:
    """Metrics on these rows, with multi-label thresholds tuned on the same rows (validation only)."""
    thresholds = tune_thresholds(y_true, probs, threshold_strategy) if task == "multilabel" else None
    return compute_metrics(task, y_true, probs, label_names, thresholds), thresholds


def headline(task: str, metrics: dict[str, Any]) -> dict[str, float]:
    if task == "multilabel":
        return {"mean_roc_auc": metrics["mean_roc_auc"], "macro_f1_tuned": metrics["at_tuned"]["macro_f1"],
                "micro_f1_tuned": metrics["at_tuned"]["micro_f1"]}
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}


@dataclass
class Selection:
    """The candidate chosen on validation, and every candidate tried."""

    model: Any
    c: float
    class_weight: str | None
    metrics: dict[str, Any]
    thresholds: np.ndarray | None
    grid: list[dict[str, Any]] = field(default_factory=list)


def select_model(task: str, x_train: csr_matrix, y_train: np.ndarray, x_val: csr_matrix,
                 y_val: np.ndarray, label_names: list[str], threshold_strategy: str,
                 settings: BaselineSettings, seed: int, desc: str = "grid") -> Selection:
    """Fit each (class_weight, C) on train, keep the best by the validation primary metric.

    C rises within each class weighting and stops once the metric stops improving: past the optimum, a
    larger C only costs more (GoEmotions' C=8 fits took 60% of its time and were its worst).
    """
    metric = SELECTION_METRIC[task]
    best: Selection | None = None
    grid: list[dict[str, Any]] = []
    last: dict[str | None, float] = {}
    stopped: set[str | None] = set()
    candidates = [(w, c) for w in settings.class_weights for c in sorted(settings.c_grid)]
    for class_weight, c in tqdm(candidates, desc=desc, unit="fit"):
        if class_weight in stopped:
            continue
        started = time.time()
        model = make_classifier(task, c, class_weight, settings, seed).fit(x_train, y_train)
        metrics, thresholds = score(task, y_val, model.predict_proba(x_val), label_names, threshold_strategy)
        grid.append({"C": c, "class_weight": class_weight, **headline(task, metrics),
                     "seconds": round(time.time() - started, 1)})
        tqdm.write(f"  C={c:<5g} class_weight={class_weight}: " +
                   "  ".join(f"{k} {v:.4f}" for k, v in headline(task, metrics).items()))
        if best is None or metrics[metric] > best.metrics[metric]:
            best = Selection(model, c, class_weight, metrics, thresholds)
        if class_weight in last and metrics[metric] <= last[class_weight]:
            stopped.add(class_weight)
        last[class_weight] = metrics[metric]
    assert best is not None  # the grid is never empty
    best.grid = grid
    return best


def run_baseline(data: str, settings: BaselineSettings | None = None) -> dict[str, Any]:
    """Fit features on train, pick (C, class_weight) by the validation primary metric, report on test."""
    settings = settings or BaselineSettings()
    started = time.time()
    config, splits = load_splits(data)
    task, names = config.task, splits.label_names
    if splits.test is None:
        raise ValueError(f"{data}: has no test split")
    features = Features.fit(splits.train.texts, settings)
    x_train, x_val, x_test = (features.transform(s.texts) for s in (splits.train, splits.validation, splits.test))
    feature_seconds = time.time() - started
    print(f"[{data}] {len(splits.train)} train / {len(splits.validation)} validation / {len(splits.test)} test "
          f"rows; features {features.sizes()} in {feature_seconds:.0f}s", flush=True)

    best = select_model(task, x_train, splits.train.labels, x_val, splits.validation.labels, names,
                        config.threshold_strategy, settings, config.seed, desc=f"{data} grid")
    test_probs = best.model.predict_proba(x_test)
    test_metrics = compute_metrics(task, splits.test.labels, test_probs, names, best.thresholds)
    return {
        "data": data, "task": task,
        "model": "TF-IDF word 1-2 + char_wb 2-5 grams, " + (
            "one-vs-rest LogisticRegression (liblinear, dual)" if task == "multilabel"
            else "multinomial LogisticRegression (newton-cg)"),
        "settings": asdict(settings), "features": features.sizes(),
        "rows": {"train": len(splits.train), "validation": len(splits.validation), "test": len(splits.test)},
        "seed": config.seed, "notes": splits.notes,
        "selection": {"metric": f"validation {SELECTION_METRIC[task]}", "grid": best.grid,
                      "chosen": {"C": best.c, "class_weight": best.class_weight}},
        "thresholds": best.thresholds.tolist() if best.thresholds is not None else None,
        "validation": best.metrics, "test": test_metrics,
        "seconds": {"features": round(feature_seconds, 1), "total": round(time.time() - started, 1)},
        "sklearn_version": sklearn.__version__,
    }


def summary_table(result: dict[str, Any]) -> str:
    """Headline test figures, then one row per label (multi-label) or class (multi-class)."""
    test, chosen = result["test"], result["selection"]["chosen"]
    lines = [f"{result['data']} (test, {test['examples']} texts): C={chosen['C']:g}, "
             f"class_weight={chosen['class_weight']}, {result['seconds']['total']:.0f}s"]
    if result["task"] == "multiclass":
        lines += [f"accuracy {test['accuracy']:.4f}   macro-F1 {test['macro_f1']:.4f}",
                  f"{'class':<16}{'precision':>10}{'recall':>10}{'f1':>8}{'support':>9}"]
        lines += [f"{name:<16}{row['precision']:>10.3f}{row['recall']:>10.3f}{row['f1-score']:>8.3f}"
                  f"{int(row['support']):>9}"
                  for name, row in test["per_class"].items()
                  if isinstance(row, dict) and name not in ("macro avg", "weighted avg")]
        return "\n".join(lines)
    tuned = test["at_tuned"]
    lines += [f"mean ROC AUC {test['mean_roc_auc']:.4f}   macro-F1 {tuned['macro_f1']:.4f}   "
              f"micro-F1 {tuned['micro_f1']:.4f}   (thresholds tuned on validation)",
              f"{'label':<16}{'ROC AUC':>9}{'F1':>8}{'thresh':>8}{'pos':>6}"]
    for name, row in test["per_label"].items():
        roc = f"{row['roc_auc']:.4f}" if row["roc_auc"] is not None else "-"
        lines.append(f"{name:<16}{roc:>9}{row['f1_at_tuned']:>8.3f}{row['threshold']:>8.3f}{row['positives']:>6}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", default="all", choices=[*BUILTIN_DATASETS, "all"],
                        help="Built-in dataset to run the baseline on, or all of them.")
    args = parser.parse_args(argv)
    for data in list(BUILTIN_DATASETS) if args.data == "all" else [args.data]:
        result = run_baseline(data)
        path = results_path(f"baseline_{data}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(summary_table(result) + f"\nwrote {path}\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
