"""The lexical member on labels with few rows (docs/lexical_experiments.md, "Rare labels"): the member as training
fits it against a plain LogisticRegression(C=4, class_weight='balanced') on the same features, and which of its
parts (NB weighting, C chosen per label) costs the rare labels.

    python bench/long_documents.py --output-dir /tmp/member_docs
    python bench/lexical_rare.py --data /tmp/member_docs/topics/train.csv --label-column labels \\
        --test-data /tmp/member_docs/topics/test.csv
    python bench/lexical_rare.py --data goemotions --variants member plain

Every variant is fitted on the rows `main.py` trains on and chooses only on its validation rows; test is scored
once, to report. Multi-label only. Results go to docs/results/lexical_rare.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so that `python bench/lexical_rare.py` finds utils/ and models/
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from scipy.sparse import hstack  # noqa: E402

from bench.records import append_record, machine, new_record, results_path  # noqa: E402
from models.lexical import LexicalSettings  # noqa: E402
from utils.config import parse_config  # noqa: E402
from utils.data.datasets import BUILTIN_DATASETS  # noqa: E402
from utils.data.prepare import prepare_splits  # noqa: E402
from utils.training.blend_weights import roc_auc  # noqa: E402
from utils.training.lexical_fit import build_vectorizers, fit_multilabel  # noqa: E402

RARE_TEST_BELOW = 0.6  # a label scoring under this test ROC AUC is listed by name

MEMBER = LexicalSettings.for_task("multilabel")
VARIANTS: dict[str, dict[str, Any] | None] = {
    "member": {},  # the defaults, as training fits the member
    "plain": None,  # LogisticRegression(C=4, class_weight='balanced'), lbfgs, no NB: the reference
    "NB, C=4": {"c_grid": (4.0,), "c": 4.0},
    "no NB, C per label": {"nb_weighting": False},
    "NB, one C": {"c_per_label": False},
    "no NB, C=4": {"nb_weighting": False, "c_grid": (4.0,), "c": 4.0},
    "no NB, one C": {"nb_weighting": False, "c_per_label": False},
}


def plain_logits(x: Any, y: np.ndarray, x_test: Any) -> np.ndarray:
    """The plainest reference: scikit-learn's default solver, C=4, balanced, per label."""
    from sklearn.linear_model import LogisticRegression

    columns = []
    for j in range(y.shape[1]):
        if len(np.unique(y[:, j])) < 2:
            columns.append(np.zeros(x_test.shape[0]))
            continue
        model = LogisticRegression(C=4.0, class_weight="balanced", max_iter=1000).fit(x, y[:, j])
        columns.append(model.decision_function(x_test))
    return np.stack(columns, axis=1)


def per_label_auc(labels: np.ndarray, logits: np.ndarray) -> np.ndarray:
    return np.array([roc_auc(labels[:, j], logits[:, j]) if 0 < labels[:, j].sum() < len(labels) else np.nan
                     for j in range(labels.shape[1])])


def run_variant(name: str, x: Any, y: np.ndarray, x_val: Any, y_val: np.ndarray, x_test: Any,
                y_test: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Test ROC AUC per label of one variant, and its fit report (seconds, fits, C values)."""
    started = time.perf_counter()
    changes = VARIANTS[name]
    if changes is None:
        logits, report = plain_logits(x, y, x_test), {}
    else:
        coef, intercept, ratios, report = fit_multilabel(x, y, x_val, y_val, replace(MEMBER, **changes))
        weights = coef * ratios if ratios is not None else coef  # NB scales the features: the same as the weights
        logits = np.asarray(x_test @ weights.T) + intercept
    report = {k: v for k, v in report.items() if k not in ("validation_roc_auc", "c_per_label")}
    report["seconds"] = round(time.perf_counter() - started, 1)
    return per_label_auc(y_test, logits), report


def mean(values: np.ndarray) -> float | None:
    return float(np.nanmean(values)) if not np.isnan(values).all() else None


def summary(auc: np.ndarray, rare: np.ndarray, names: list[str]) -> dict[str, Any]:
    return {"test_mean_roc_auc": mean(auc), "rare_test_mean_roc_auc": mean(auc[rare]),
            "common_test_mean_roc_auc": mean(auc[~rare]),
            "below": {names[j]: round(float(auc[j]), 3) for j in np.flatnonzero(auc < RARE_TEST_BELOW)}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a built-in multi-label dataset or a training file")
    parser.add_argument("--label-column", default=None)
    parser.add_argument("--test-data", default=None)
    parser.add_argument("--label-delimiter", default=None, help="what joins a row's labels, if not inferred")
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args(argv)
    config_args = ["--task", "multilabel", "--data", args.data]
    for flag, value in (("--label-column", args.label_column), ("--test-data", args.test_data),
                        ("--label-delimiter", args.label_delimiter), ("--max-train-samples", args.max_train_samples)):
        if value is not None:
            config_args += [flag, str(value)]
    if args.data not in BUILTIN_DATASETS and args.test_data is None:
        parser.error("a file needs --test-data")
    splits = prepare_splits(parse_config(config_args))
    train, validation, test = splits.train, splits.validation, splits.test
    assert test is not None
    started = time.perf_counter()
    vectorizers = build_vectorizers(MEMBER)
    x = hstack([v.fit_transform(train.texts) for v in vectorizers], format="csr")
    x_val, x_test = (hstack([v.transform(s.texts) for v in vectorizers], format="csr") for s in (validation, test))
    feature_seconds = time.perf_counter() - started
    y, y_val, y_test = (np.asarray(s.labels) for s in (train, validation, test))
    rare = y_val.sum(axis=0) < MEMBER.rare_below
    print(f"{len(train)} train / {len(validation)} validation / {len(test)} test rows, {y.shape[1]} labels, "
          f"{int(rare.sum())} with under {MEMBER.rare_below} validation positives; features "
          f"{feature_seconds:.0f} s", flush=True)
    rows = []
    for name in args.variants:
        auc, report = run_variant(name, x, y, x_val, y_val, x_test, y_test)
        row = {"variant": name, **summary(auc, rare, splits.label_names), "fit": report,
               "test_roc_auc": [None if np.isnan(a) else round(float(a), 4) for a in auc]}
        rows.append(row)
        figures = "  ".join(f"{part} {row[key]:.4f}" for part, key in (
            ("test mean ROC AUC", "test_mean_roc_auc"), ("rare", "rare_test_mean_roc_auc"),
            ("common", "common_test_mean_roc_auc")) if row[key] is not None)
        print(f"  {name:<20} {figures}  {report['seconds']:.0f} s  below {RARE_TEST_BELOW}: {row['below']}",
              flush=True)
    append_record(results_path("lexical_rare.json"), new_record(
        machine=machine(), data=args.data, rows={"train": len(train), "validation": len(validation),
                                                  "test": len(test)},
        labels=splits.label_names, train_positives=y.sum(axis=0).tolist(),
        validation_positives=y_val.sum(axis=0).tolist(), feature_seconds=round(feature_seconds, 1),
        variants=rows))


if __name__ == "__main__":
    main()
