"""The measurements behind the lexical member's and the blend's defaults (docs/lexical_experiments.md).

    python bench/lexical_blend.py lexical --data toxic          # lexical settings, one change at a time
    python bench/lexical_blend.py blend --data toxic --checkpoint /tmp/lex_toxic/checkpoint

`lexical` fits each setting on the transformer's own training rows and reads the validation figure (C chosen
on validation); the best one is refitted with `LexicalModel.fit` (timed) and its validation and test scores are
kept in --scores-dir. `blend` scores the same rows with the transformer checkpoint, compares blend methods and
weight guards by repeated split halves of the validation rows, and reports validation and test figures.
Nothing is chosen on test rows. Results go to docs/results/lexical_<data>.json.
"""
# pyright: reportOptionalMemberAccess=false
# (the built-in datasets measured here always have a test split)

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so that `python bench/lexical_blend.py` finds utils/ and models/
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402
from scipy.sparse import hstack  # noqa: E402

from bench.records import machine, results_path  # noqa: E402
from models.blend import blend_scores  # noqa: E402
from models.lexical import LexicalSettings  # noqa: E402
from utils.config import parse_config  # noqa: E402
from utils.data.datasets import BUILTIN_DATASETS  # noqa: E402
from utils.data.prepare import DataSplits, prepare_splits  # noqa: E402
from utils.evaluation.metrics import compute_metrics, tune_thresholds  # noqa: E402
from utils.training.blend_weights import choose_blend_weights, roc_auc  # noqa: E402
from utils.training.lexical_fit import build_vectorizers, fit_lexical, fit_multiclass, fit_multilabel  # noqa: E402

# one change at a time against the base (the baseline's settings: the starting point of the measurements)
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "raw tf (sublinear off)": {"sublinear_tf": False},
    "NB weighting": {"nb_weighting": True},
    "class_weight None": {"class_weight": None},
    "C per label": {"c_per_label": True},
    "word 1-3": {"word_ngrams": (1, 3)},
    "char_wb 1-4": {"char_ngrams": (1, 4)},
    "char_wb 2-6": {"char_ngrams": (2, 6), "char_max_features": 300_000},
    "word only": {"char_ngrams": None},
    "strip accents": {"strip_accents": True},
    "1-char tokens": {"token_pattern": r"(?u)\b\w+\b"},
    "min_df 1": {"min_df": 1},
    "wider C grid": {"c_grid": (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)},
    "low C grid": {"c_grid": (0.1, 0.25, 0.5, 1.0)},
    "C grid from 0.05": {"c_grid": (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)},
    "NB alpha 0.1": {"nb_alpha": 0.1},
    # the way back, to check each part of a combination on top of the others
    "word 1-2": {"word_ngrams": (1, 2)},
    "char_wb 2-5": {"char_ngrams": (2, 5)},
    "keep accents": {"strip_accents": False},
    "one C": {"c_per_label": False},
    "default C grid": {"c_grid": (0.5, 2.0, 8.0)},
    "no NB": {"nb_weighting": False},
}
BASE = LexicalSettings(word_ngrams=(1, 2), char_ngrams=(2, 5), min_df=2, strip_accents=False, sublinear_tf=True,
                       nb_weighting=False, c_grid=(0.5, 2.0, 8.0), c_per_label=False, class_weight="balanced")


def load_splits(data: str) -> tuple[str, DataSplits]:
    """Exactly the rows `main.py --data <data>` trains, validates and tests on."""
    task = BUILTIN_DATASETS[data].task
    config = parse_config(["--task", task, "--data", data])
    return task, prepare_splits(config)


def headline(task: str, labels: np.ndarray, probs: np.ndarray, names: list[str],
             thresholds: np.ndarray | None = None) -> dict[str, Any]:
    metrics = compute_metrics(task, labels, probs, names, thresholds)
    if task == "multiclass":
        return {"macro_f1": metrics["macro_f1"], "accuracy": metrics["accuracy"]}
    return {"mean_roc_auc": metrics["mean_roc_auc"], "macro_f1_tuned": metrics["at_tuned"]["macro_f1"],
            "micro_f1_tuned": metrics["at_tuned"]["micro_f1"],
            "roc_auc": {n: row["roc_auc"] for n, row in metrics["per_label"].items()}}


def feature_key(settings: LexicalSettings) -> tuple:
    return (settings.word_ngrams, settings.char_ngrams, settings.word_max_features, settings.char_max_features,
            settings.min_df, settings.token_pattern, settings.strip_accents, settings.sublinear_tf)


def run_variants(task: str, splits: DataSplits, variants: dict[str, LexicalSettings]) -> list[dict[str, Any]]:
    """Validation figure of each setting; features are computed once per distinct feature setting."""
    cache: dict[tuple, tuple[Any, Any, float]] = {}
    rows = []
    for name, settings in variants.items():
        started = time.perf_counter()
        key = feature_key(settings)
        if key not in cache:
            vectorizers = build_vectorizers(settings)
            x_train = hstack([v.fit_transform(splits.train.texts) for v in vectorizers], format="csr")
            x_val = hstack([v.transform(splits.validation.texts) for v in vectorizers], format="csr")
            cache = {key: (x_train, x_val, time.perf_counter() - started)}  # keep one: they are large
        x_train, x_val, feature_seconds = cache[key]
        fitter = fit_multilabel if task == "multilabel" else fit_multiclass
        fit_started = time.perf_counter()
        _, _, _, report = fitter(x_train, splits.train.labels, x_val, splits.validation.labels, settings)
        seconds = feature_seconds + time.perf_counter() - fit_started
        metric = {k: v for k, v in report.items() if k.startswith("validation_") and not isinstance(v, dict)}
        chosen = report.get("C", report.get("c_per_label"))
        rows.append({"variant": name, **metric, "C": chosen, "features": x_train.shape[1],
                     "seconds": round(seconds, 1)})
        print(f"  {name:<24} " + "  ".join(f"{k} {v:.4f}" for k, v in metric.items()
                                           if isinstance(v, float)) + f"  C={chosen}  {seconds:.0f}s", flush=True)
    return rows


def primary(task: str, row: dict[str, Any]) -> float:
    return row["validation_mean_roc_auc"] if task == "multilabel" else row["validation_macro_f1"]


def lexical_command(data: str, scores_dir: Path, variant_names: list[str] | None,
                    on_top_of: list[str]) -> dict[str, Any]:
    """Each variant against the base (the defaults plus the `on_top_of` variants' changes); then the best."""
    base = replace(BASE, **{k: v for n in on_top_of for k, v in VARIANTS[n].items()})
    task, splits = load_splits(data)
    print(f"[{data}] {len(splits.train)} train / {len(splits.validation)} validation / "
          f"{len(splits.test)} test rows", flush=True)
    names = variant_names or list(VARIANTS)
    variants = {n: replace(base, **VARIANTS[n]) for n in names}
    rows = run_variants(task, splits, variants)
    base_value = primary(task, rows[0])
    helped = sorted((r for n, r in zip(names, rows, strict=True) if n != "base" and primary(task, r) > base_value),
                    key=lambda r: primary(task, r))
    helped = [r["variant"] for r in helped]  # rising: where two changes set one field, the better one wins
    combined = replace(base, **{k: v for n in helped for k, v in VARIANTS[n].items()})
    if len(helped) > 1:
        print(f"  combining {helped}", flush=True)
        rows += run_variants(task, splits, {"combined: " + " + ".join(helped): combined})
    best_row = max(rows, key=lambda r: primary(task, r))
    best = combined if best_row["variant"].startswith("combined") else variants[best_row["variant"]]
    print(f"  best on validation: {best_row['variant']}", flush=True)
    started = time.perf_counter()
    model = fit_lexical(splits.train.texts, splits.train.labels, task, best,
                             (splits.validation.texts, splits.validation.labels))
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    val_scores, test_scores = model.scores(splits.validation.texts), model.scores(splits.test.texts)
    score_seconds = time.perf_counter() - started
    scores_dir.mkdir(parents=True, exist_ok=True)
    save_file({"validation": val_scores, "test": test_scores}, str(scores_dir / f"{data}_lexical.safetensors"))
    model.save(scores_dir / f"{data}_lexical_model")
    result = {
        "data": data, "task": task, "machine": machine(),
        "rows": {"train": len(splits.train), "validation": len(splits.validation), "test": len(splits.test)},
        "on_top_of": on_top_of, "variants": rows,
        "chosen": {"variant": best_row["variant"], "settings": best.to_json()},
        "fit_report": model.fit_report, "fit_seconds": round(fit_seconds, 1),
        "numpy_scoring_seconds": round(score_seconds, 1),
        "validation": headline(task, splits.validation.labels, val_scores, splits.label_names),
        "test": headline(task, splits.test.labels, test_scores, splits.label_names,
                         tune_thresholds(splits.validation.labels, val_scores) if task == "multilabel" else None),
    }
    write_result(data, "lexical" + "".join(f" + {n}" for n in on_top_of), result)
    return result


# ----------------------------------------------------------------------------------------------------------
# the blend


def split_halves(labels: np.ndarray, repeats: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random halves of the validation rows, stratified on the rarest label (or the class)."""
    rng = np.random.default_rng(seed)
    key = labels if labels.ndim == 1 else labels[:, labels.sum(axis=0).argmin()] * 2 + labels.max(axis=1)
    halves = []
    for _ in range(repeats):
        first = []
        for value in np.unique(key):
            rows = rng.permutation(np.flatnonzero(key == value))
            first.extend(rows[: len(rows) // 2])
        first_mask = np.zeros(len(labels), bool)
        first_mask[first] = True
        halves.append((np.flatnonzero(first_mask), np.flatnonzero(~first_mask)))
    return halves


def quantile_map(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Each column's scores as their fraction of the reference column below them (a servable rank)."""
    out = np.empty_like(scores, dtype=np.float64)
    for j in range(scores.shape[1]):
        ordered = np.sort(reference[:, j])
        out[:, j] = (np.searchsorted(ordered, scores[:, j], side="left")
                     + np.searchsorted(ordered, scores[:, j], side="right")) / (2 * len(ordered))
    return out


def rank_columns(scores: np.ndarray) -> np.ndarray:
    """Each column's scores replaced by their rank fraction among these rows (Jigsaw rank averaging)."""
    return quantile_map(scores, scores)


def strategy_scores(task: str, strategy: dict[str, Any], fit_labels: np.ndarray, t: np.ndarray, lex: np.ndarray,
                    fit_rows: np.ndarray, eval_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights chosen on `fit_rows` (whose labels are `fit_labels`: no other row's label is seen), and the
    blended scores of `eval_rows`."""
    method = strategy["method"]
    if method == "quantile":  # map each member through its CDF on the fitting rows, then average
        t_all, lex_all = quantile_map(t[fit_rows], t), quantile_map(lex[fit_rows], lex)
        method = "probability"
    elif method == "rank":  # ranks among the rows being scored (needs a batch: not servable per text)
        t_all, lex_all = t.copy(), lex.copy()
        t_all[fit_rows], lex_all[fit_rows] = rank_columns(t[fit_rows]), rank_columns(lex[fit_rows])
        t_all[eval_rows], lex_all[eval_rows] = rank_columns(t[eval_rows]), rank_columns(lex[eval_rows])
        method = "probability"
    else:
        t_all, lex_all = t, lex
    if "fixed" in strategy:  # a member alone (1: the transformer, 0: the lexical member), for reference
        weights = np.full(t.shape[1], float(strategy["fixed"]))
    else:
        weights = choose_blend_weights(task, fit_labels, t_all[fit_rows], lex_all[fit_rows], method=method,
                                       step=strategy.get("step", 0.05), shrinkage=strategy.get("shrinkage", 0.0))
    return weights, blend_scores(task, weights, t_all[eval_rows], lex_all[eval_rows], method=method)


def strategy_name(strategy: dict[str, Any], task: str = "multilabel") -> str:
    if "fixed" in strategy:
        return {1.0: "transformer alone", 0.0: "lexical alone"}.get(
            strategy["fixed"], f"{strategy['method']}, fixed {strategy['fixed']:g}")
    parts = [strategy["method"], f"step {strategy.get('step', 0.05):g}"]
    shrinkage = strategy.get("shrinkage", 0.0)
    parts.append("one weight" if np.isinf(shrinkage) or task == "multiclass" else
                 f"shrinkage {shrinkage:g}" if shrinkage else "per label")
    return ", ".join(parts)


def multilabel_strategies() -> list[dict[str, Any]]:
    out = [{"method": m, "shrinkage": s} for m in ("logit", "probability", "quantile", "rank")
           for s in (0.0, 30.0, np.inf)]
    out += [{"method": "logit", "step": 0.25}, {"method": "logit", "step": 0.1},
            {"method": "logit", "shrinkage": 10.0}, {"method": "logit", "shrinkage": 100.0}]
    return out


# reported on validation (in-sample) and test beside the best by validation halves; the first is the default
# of utils/training/blend_weights.py
REPORTED = [{"method": "logit", "shrinkage": 30.0}, {"method": "logit", "shrinkage": 0.0},
            {"method": "probability", "shrinkage": 0.0}, {"method": "logit", "shrinkage": np.inf},
            {"method": "quantile", "shrinkage": 30.0}, {"method": "logit", "fixed": 0.5}]
REPORTED_MULTICLASS = [{"method": "logit"}, {"method": "probability"}, {"method": "logit", "fixed": 0.5},
                       {"method": "probability", "fixed": 0.5}]


def evaluate_halves(task: str, labels: np.ndarray, t: np.ndarray, lex: np.ndarray, strategy: dict[str, Any],
                    halves: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, list[float]]:
    """The held-out half's figures over the halves (both directions), weights chosen on the other half."""
    values: dict[str, list[float]] = {}
    for first, second in halves:
        for fit_rows, eval_rows in ((first, second), (second, first)):
            _, blended = strategy_scores(task, strategy, labels[fit_rows], t, lex, fit_rows, eval_rows)
            y = labels[eval_rows]
            if task == "multilabel":
                aucs = [roc_auc(y[:, j], blended[:, j]) for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
                values.setdefault("mean_roc_auc", []).append(float(np.mean(aucs)))
            else:
                figures = headline(task, y, blended, [str(k) for k in range(t.shape[1])])
                for k, v in figures.items():
                    values.setdefault(k, []).append(v)
    return values


def transformer_scores(checkpoint: str, splits: DataSplits, cache: Path) -> tuple[np.ndarray, np.ndarray, float]:
    if cache.is_file():
        arrays = load_file(str(cache))
        return arrays["validation"], arrays["test"], float(arrays["seconds"][0])
    from inferer import ModelInferer

    inferer = ModelInferer(checkpoint)
    started = time.perf_counter()
    val = inferer.score_batch(splits.validation.texts)[0].astype(np.float64)
    test = inferer.score_batch(splits.test.texts)[0].astype(np.float64)
    seconds = time.perf_counter() - started
    save_file({"validation": val, "test": test, "seconds": np.array([seconds])}, str(cache))
    return val, test, seconds


def blend_command(data: str, checkpoint: str, scores_dir: Path, repeats: int) -> dict[str, Any]:
    task, splits = load_splits(data)
    names, y_val, y_test = splits.label_names, splits.validation.labels, splits.test.labels
    t_val, t_test, t_seconds = transformer_scores(checkpoint, splits, scores_dir / f"{data}_transformer.safetensors")
    lexical = load_file(str(scores_dir / f"{data}_lexical.safetensors"))
    l_val, l_test = lexical["validation"], lexical["test"]
    halves = split_halves(y_val, repeats, seed=0)
    references = [{"method": "probability", "fixed": 1.0}, {"method": "probability", "fixed": 0.0},
                  {"method": "logit", "fixed": 0.5}, {"method": "probability", "fixed": 0.5}]
    strategies = references + (multilabel_strategies() if task == "multilabel" else
                  [{"method": m} for m in ("logit", "probability", "quantile")] +
                  [{"method": "logit", "step": s} for s in (0.1, 0.25)])
    key = "mean_roc_auc" if task == "multilabel" else "macro_f1"
    comparison, runs = [], []
    for strategy in strategies:
        values = evaluate_halves(task, y_val, t_val, l_val, strategy, halves)
        means = {k: float(np.mean(v)) for k, v in values.items()}
        comparison.append({"strategy": strategy_name(strategy, task), **means})
        runs.append(np.array(values[key]))
    best_index = len(references) + int(np.argmax([row[key] for row in comparison[len(references):]]))
    best = strategies[best_index]
    metrics = [k for k in comparison[0] if k != "strategy"]
    for row, values in zip(comparison, runs, strict=True):  # paired against the best: is a gap above noise?
        difference = values - runs[best_index]
        row.update({"minus_best": float(difference.mean()), "minus_best_sd": float(difference.std()),
                    "share_above_best": float(np.mean(difference > 0))})
        print(f"  {row['strategy']:<36} " + "  ".join(f"{k} {row[k]:.4f}" for k in metrics)
              + f"   minus best {row['minus_best']:+.4f} (sd {row['minus_best_sd']:.4f}, "
              f"above best in {row['share_above_best']:.0%})", flush=True)
    print(f"  best by validation halves: {comparison[best_index]['strategy']}", flush=True)
    members = {"transformer": (t_val, t_test), "lexical": (l_val, l_test)}
    report: dict[str, Any] = {}
    for name, (val, test) in members.items():
        thresholds = tune_thresholds(y_val, val) if task == "multilabel" else None
        report[name] = {"validation": headline(task, y_val, val, names, thresholds),
                        "test": headline(task, y_test, test, names, thresholds)}
    blends = {}
    # the rows after the validation rows are the test rows; only validation labels reach the weights
    t_both, l_both = np.concatenate([t_val, t_test]), np.concatenate([l_val, l_test])
    val_rows, test_rows = np.arange(len(y_val)), np.arange(len(y_val), len(t_both))
    for strategy in [best] + [s for s in (REPORTED if task == "multilabel" else REPORTED_MULTICLASS) if s != best]:
        weights, val = strategy_scores(task, strategy, y_val, t_both, l_both, val_rows, val_rows)
        _, test = strategy_scores(task, strategy, y_val, t_both, l_both, val_rows, test_rows)
        thresholds = tune_thresholds(y_val, val) if task == "multilabel" else None
        blends[strategy_name(strategy, task)] = {
            "weights": weights.tolist(), "validation": headline(task, y_val, val, names, thresholds),
            "test": headline(task, y_test, test, names, thresholds)}
    result = {"data": data, "task": task, "machine": machine(), "checkpoint": checkpoint,
              "transformer_scoring_seconds": round(t_seconds, 1), "halves": repeats,
              "strategy_comparison": comparison, "chosen_strategy": strategy_name(best, task),
              "members": report, "blends": blends}
    write_result(data, "blend", result)
    print(json.dumps({"members": report, "blends": blends}, indent=1), flush=True)
    return result


def write_result(data: str, part: str, result: dict[str, Any]) -> None:
    path = results_path(f"lexical_{data}.json")
    existing = json.loads(path.read_text()) if path.is_file() else {}
    existing[part] = result
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(existing, indent=1, default=float) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("part", choices=["lexical", "blend"])
    parser.add_argument("--data", required=True, choices=list(BUILTIN_DATASETS))
    parser.add_argument("--variants", default=None, help="Comma-separated names from VARIANTS (default: all).")
    parser.add_argument("--on-top-of", default="", help="Comma-separated VARIANTS names applied to the base.")
    parser.add_argument("--checkpoint", help="Transformer checkpoint folder (blend).")
    parser.add_argument("--scores-dir", default="/tmp/lex_scores", help="Where member scores are kept.")
    parser.add_argument("--halves", type=int, default=50, help="Random validation halvings (blend).")
    args = parser.parse_args(argv)
    if args.part == "lexical":
        lexical_command(args.data, Path(args.scores_dir), args.variants.split(",") if args.variants else None,
                        [n for n in args.on_top_of.split(",") if n])
    else:
        blend_command(args.data, args.checkpoint, Path(args.scores_dir), args.halves)
    return 0


if __name__ == "__main__":
    sys.exit(main())
