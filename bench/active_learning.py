"""What to label next (issue 38), simulated: start from a share of a labelled file's training rows, hide the labels of
the rest (the pool), and in each round label the rows a strategy picks (their hidden labels revealed, as a person
would give them) and retrain. `random` is the baseline; the others rank the pool with `suggest.rank` (the code of
`python main.py --mode suggest`) from the last round's checkpoint. Every round trains through `main.py` with the
picked rows as `--extra-data`, with one fixed short recipe for every round and arm, and is evaluated on the same
held-out test rows.

    nice -n 19 python bench/active_learning.py                     # toxic: 10% to start, 5 rounds of 500 rows
    python bench/active_learning.py --strategies random uncertainty uncertainty+disagreement+diversity

A round whose report is already in --work-dir is read, not run again (a long run can be resumed). Results go to
docs/results/active_learning.json and the curves to docs/active_learning.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so that `python bench/active_learning.py` finds the project's modules
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import main as cli  # noqa: E402
from bench.records import append_record, figure_path, machine, new_record, results_path, save_figure  # noqa: E402
from utils.data.datasets import SHARED_DATA_DIR  # noqa: E402
from utils.data.extra import text_key  # noqa: E402
from utils.data.readers import ColumnLayout, LabeledTexts, read_labeled_texts  # noqa: E402
from utils.data.splits import stratified_split  # noqa: E402
from utils.evaluation.acquisition import DEFAULT_STRATEGY, STRATEGIES, choose  # noqa: E402
from utils.inference.blend import Scored  # noqa: E402

TOXIC = SHARED_DATA_DIR / "toxic" / "train.csv"
TOXIC_LABELS = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
RARE = ["threat", "identity_hate", "severe_toxic"]
# One short recipe for every round and arm (no speed measurement, so no round depends on the machine's load).
RECIPE = ["--epochs", "1", "--max-length", "64", "--freeze-layers", "3", "--long-texts", "truncate",
          "--blend", "lexical", "--no-export-onnx"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--data", default=str(TOXIC), help="a labelled multi-label file (default: toxic's)")
    parser.add_argument("--text-column", default="comment_text")
    parser.add_argument("--label-columns", nargs="+", default=TOXIC_LABELS)
    parser.add_argument("--rare", nargs="*", default=RARE, help="labels whose mean ROC AUC is reported apart")
    parser.add_argument("--test-split", type=float, default=0.15, help="share of the file held out to report on")
    parser.add_argument("--start", type=float, default=0.10, help="share of the file's rows labelled at the start")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=500, help="rows labelled in each round")
    parser.add_argument("--strategies", nargs="+", default=["random", DEFAULT_STRATEGY], choices=list(STRATEGIES))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--work-dir", default="/tmp/active_learning", help="files, checkpoints and reports")
    parser.add_argument("--figure", default="active_learning.png", help="the curves' file name in docs/")
    parser.add_argument("--train-args", nargs=argparse.REMAINDER, default=[],
                        help="more main.py flags for every training (last on the line), e.g. --model-name-or-path")
    return parser.parse_args(argv)


def split_files(args: argparse.Namespace, work: Path) -> tuple[LabeledTexts, list[int]]:
    """The file split into test.csv, start.csv (the rows labelled first) and the pool (returned with its hidden
    labels); the pool's candidates are its first row of each text not in the test or start rows."""
    layout = ColumnLayout(args.text_column, tuple(args.label_columns))
    data = read_labeled_texts(args.data, "multilabel", layout)
    rest, test = stratified_split(data.labels, args.test_split, args.seed)
    start_share = args.start * len(data) / len(rest)
    pool, start = (rest[part] for part in stratified_split(data.labels[rest], start_share, args.seed + 1))
    for name, rows in (("test", test), ("start", start)):
        write_rows(data.subset(rows), work / f"{name}.csv", args)
    pool_data = data.subset(pool)
    seen = {text_key(data.texts[i]) for i in [*test, *start]}
    candidates = []
    for position, text in enumerate(pool_data.texts):
        if text_key(text) not in seen:
            seen.add(text_key(text))
            candidates.append(position)
    return pool_data, candidates


def write_rows(data: LabeledTexts, path: Path, args: argparse.Namespace) -> None:
    frame = pd.DataFrame(data.labels.astype(int), columns=args.label_columns)
    frame.insert(0, args.text_column, data.texts)
    frame.to_csv(path, index=False)


def train_round(args: argparse.Namespace, work: Path, folder: Path, extra: Path | None) -> dict[str, Any]:
    """One training through main.py on the start rows (and the picked rows as --extra-data), evaluated on the
    test rows; its report, or the one a previous run left in `folder`."""
    report = folder / "eval_report.json"
    if not report.is_file():
        shutil.rmtree(folder, ignore_errors=True)  # what an interrupted run left: start the round afresh
        flags = ["--task", "multilabel", "--data", str(work / "start.csv"), "--test-data", str(work / "test.csv"),
                 "--text-column", args.text_column, "--label-columns", *args.label_columns, "--output-dir",
                 str(folder), "--seed", str(args.seed), *RECIPE, *args.train_args]
        started = time.perf_counter()
        assert cli.main([*flags, *(["--extra-data", str(extra)] if extra else [])]) == 0
        (folder / "seconds.json").write_text(json.dumps({"train_and_eval": time.perf_counter() - started}))
    metrics = json.loads(report.read_text())["metrics"]
    data = json.loads((folder / "data_report.json").read_text())
    auc = {name: metrics["per_label"][name]["roc_auc"] for name in args.label_columns}
    rare = [auc[name] for name in args.rare if auc[name] is not None]
    return {"training_rows": data["rows"]["train"], "mean_roc_auc": metrics["mean_roc_auc"],
            "rare_mean_roc_auc": float(np.mean(rare)) if rare else None, "roc_auc": auc,
            "seconds": json.loads((folder / "seconds.json").read_text())["train_and_eval"]}


def pick(strategy: str, checkpoint: Path, pool: LabeledTexts, left: list[int], k: int, seed: int,
         batch_size: int) -> tuple[list[int], float]:
    """`k` pool positions among `left` by `strategy` (suggest.rank, from the checkpoint), and the seconds it took."""
    started = time.perf_counter()
    texts = [pool.texts[i] for i in left]
    if not STRATEGIES[strategy].informed:
        chosen = choose(STRATEGIES[strategy], np.zeros(len(left)), texts, k, seed)
    else:
        import suggest
        from inferer import ModelInferer

        inferer = ModelInferer(checkpoint, backend="torch")
        scored = pool_scores(checkpoint.parent / "pool_scores.npz", left, lambda: suggest.score_pool(
            inferer, texts, batch_size))
        chosen = suggest.rank(inferer, texts, k, seed, batch_size, strategy, scored).picks
    return [left[i] for i in chosen], time.perf_counter() - started


def pool_scores(path: Path, left: list[int], score: Callable[[], Scored]) -> Scored:
    """The pool's rows `left` as the checkpoint scores them: kept beside the checkpoint, so that every strategy's
    first round (all from the same checkpoint and pool) scores the pool once."""
    if path.is_file():
        saved = np.load(path)
        if saved["left"].tolist() == left:
            members = {name[len("member_"):]: saved[name] for name in saved.files if name.startswith("member_")}
            return Scored(members, saved["served"], saved["evidence"], saved["truncated"].tolist())
    scored = score()
    np.savez(path, left=np.asarray(left), served=scored.served, evidence=scored.evidence,
             truncated=np.asarray(scored.truncated), **{f"member_{k}": v for k, v in scored.members.items()})
    return scored


def run_arm(args: argparse.Namespace, work: Path, strategy: str, pool: LabeledTexts, candidates: list[int],
            first: dict[str, Any]) -> list[dict[str, Any]]:
    """The rounds of one strategy from the shared first round; picks are kept in --work-dir for a resumed run."""
    rounds, picked, checkpoint = [first | {"round": 0, "labelled": first["training_rows"]}], [], work / "start_run"
    arm = work / strategy.replace("+", "_")
    arm.mkdir(parents=True, exist_ok=True)
    for number in range(1, args.rounds + 1):
        picks_file = arm / f"picks_{number}.json"
        if picks_file.is_file():
            new, seconds = json.loads(picks_file.read_text()), None
        else:
            left = sorted(set(candidates) - set(picked))
            new, seconds = pick(strategy, checkpoint / "checkpoint", pool, left, args.per_round,
                                args.seed + number, 128)
            picks_file.write_text(json.dumps(new))
        picked += new
        extra = arm / f"labelled_{number}.csv"
        write_rows(pool.subset(picked), extra, args)  # the picked rows with their labels revealed
        checkpoint = arm / f"round_{number}"
        result = train_round(args, work, checkpoint, extra)
        labels = pool.labels[new]
        rounds.append(result | {"round": number, "picked": len(picked), "pick_seconds": seconds,
                                "picked_positives": dict(zip(args.label_columns, labels.sum(axis=0).astype(int)
                                                             .tolist(), strict=True))})
        print(f"{strategy:<36} round {number}: {len(picked):>5} picked  mean ROC AUC {result['mean_roc_auc']:.4f}  "
              f"rare {result['rare_mean_roc_auc'] or float('nan'):.4f}", flush=True)
    return rounds


def labels_saved(arm: list[dict[str, Any]], baseline: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """For each round of `arm`, the rows `baseline` needs for the same figure (linear between its rounds), and so
    the rows saved; past the baseline's last round, a lower bound."""
    xs = [r["picked"] if r["round"] else 0 for r in baseline]
    ys = [r[key] for r in baseline]
    saved = []
    for row in arm[1:]:
        need, bound = None, False
        if row[key] is None or None in ys:
            saved.append({"round": row["round"], "picked": row["picked"], "baseline_needs": None, "saved": None,
                          "at_least": False})
            continue
        for i in range(1, len(xs)):
            low, high = min(ys[i - 1], ys[i]), max(ys[i - 1], ys[i])
            if low <= row[key] <= high and ys[i] != ys[i - 1]:
                need = xs[i - 1] + (row[key] - ys[i - 1]) / (ys[i] - ys[i - 1]) * (xs[i] - xs[i - 1])
                break
        if need is None and row[key] > max(ys):
            need, bound = xs[-1], True
        saved.append({"round": row["round"], "picked": row["picked"], "baseline_needs": None if need is None
                      else round(need), "saved": None if need is None else round(need - row["picked"]),
                      "at_least": bound})
    return saved


def plot(arms: dict[str, list[dict[str, Any]]], path: Path, rare: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, rounds in arms.items():
        xs = [r["labelled"] if r["round"] == 0 else r["training_rows"] for r in rounds]
        for axis, key in zip(axes, ("mean_roc_auc", "rare_mean_roc_auc"), strict=True):
            axis.plot(xs, [r[key] for r in rounds], marker="o", label=name)
    for axis, title in zip(axes, ("test mean ROC AUC", f"rare labels ({', '.join(rare)})"), strict=True):
        axis.set_xlabel("training rows (start + labelled)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    save_figure(fig, "What to label next: suggested rows against random rows", path)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pool, candidates = split_files(args, work)
    first = train_round(args, work, work / "start_run", None)
    print(f"start: {first['training_rows']} training rows, pool {len(candidates)} texts; mean ROC AUC "
          f"{first['mean_roc_auc']:.4f}", flush=True)
    arms = {strategy: run_arm(args, work, strategy, pool, candidates, first) for strategy in args.strategies}
    baseline = arms.get("random")
    saved = {name: {key: labels_saved(rounds, baseline, key) for key in ("mean_roc_auc", "rare_mean_roc_auc")}
             for name, rounds in arms.items() if baseline is not None and name != "random"}
    figure = figure_path(args.figure)
    figure.parent.mkdir(parents=True, exist_ok=True)
    plot(arms, figure, args.rare)
    record = new_record(machine=machine(), data=args.data, recipe=RECIPE + args.train_args, seed=args.seed,
                        start_share=args.start, rounds=args.rounds, per_round=args.per_round,
                        test_rows=int(pd.read_csv(work / "test.csv").shape[0]), pool_texts=len(candidates),
                        rare=args.rare, arms=arms, labels_saved=saved,
                        wall_seconds=round(time.perf_counter() - started))
    append_record(results_path("active_learning.json"), record)
    for name, by_key in saved.items():
        mean, rare = ([f"{'>=' if s['at_least'] else ''}{s['saved']}" for s in by_key[key]]
                      for key in ("mean_roc_auc", "rare_mean_roc_auc"))
        print(f"{name}: rows saved against random at equal mean ROC AUC {mean}, at equal rare-label AUC {rare}")


if __name__ == "__main__":
    main()
