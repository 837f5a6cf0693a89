"""The label audit (issue 38), simulated: flip a share of a file's labels at random (seeded), run the audit
(`audit.audit`, the code of `python main.py --mode audit`) on the noisy copy, and measure how many of the flipped
rows its ranking puts first: recall and precision at cut-offs of 1%, 2.5%, 5% and 10% of the rows, against each
member's loss alone, the transformer fine-tuned on each fold (k trainings through `train.run`, alone and with the
members), cleanlab's other rankings of the same probabilities, and chance.

    nice -n 19 python bench/label_audit.py                                     # conference: 5 classes
    nice -n 19 python bench/label_audit.py --data ../shared/data/toxic/train.csv --label insult --finetune-epochs 0

Multi-class: a flipped row gets another class, at random. Multi-label: `--label`'s 0/1 is turned over, and the
rankings are of that label's scores. Results go to docs/results/label_audit.json and the recall curves to
docs/label_audit_<name>.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so that `python bench/label_audit.py` finds the project's modules
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import audit  # noqa: E402
from bench.records import append_record, figure_path, machine, new_record, results_path, save_figure  # noqa: E402
from utils.config import make_config  # noqa: E402
from utils.data.datasets import SHARED_DATA_DIR  # noqa: E402
from utils.data.file_rows import read_file_rows  # noqa: E402
from utils.data.readers import LabeledTexts  # noqa: E402
from utils.data.splits import stratified_folds  # noqa: E402
from utils.evaluation.label_issues import find_label_issues  # noqa: E402

CONFERENCE = SHARED_DATA_DIR / "conference" / "title_conference.csv"
CUTS = (0.01, 0.025, 0.05, 0.10)
GOAL = {"cut": 0.05, "recall": 0.70}
FINETUNED = "transformer fine-tuned per fold"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--data", default=str(CONFERENCE), help="a labelled file (default: conference's titles)")
    parser.add_argument("--label", default=None, help="multi-label: the label whose 0/1 values are flipped")
    parser.add_argument("--flip", type=float, default=0.05, help="share of the rows whose label is flipped")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one simulation per seed")
    parser.add_argument("--time-budget", type=float, default=None, help="the audit's, minutes (default: its own)")
    parser.add_argument("--model-name-or-path", default=None)
    parser.add_argument("--finetune-epochs", type=float, default=3.0, help="0: no fine-tuned transformer")
    parser.add_argument("--finetune-max-length", type=int, default=64)
    parser.add_argument("--finetune-freeze-layers", type=int, default=0)
    parser.add_argument("--name", default=None, help="the plot's name (default: the file's)")
    parser.add_argument("--work-dir", default="/tmp/label_audit", help="noisy copies, folds' trainings, audits")
    return parser.parse_args(argv)


def flipped_copy(data: LabeledTexts, task: str, label: int | None, share: float, seed: int,
                 path: Path) -> np.ndarray:
    """Write the rows with `share` of them flipped (seeded) as a CSV (text, then the label column or 0/1 columns);
    returns the flipped rows' indices."""
    rng = np.random.default_rng(seed)
    flipped = np.sort(rng.choice(len(data), int(round(share * len(data))), replace=False))
    labels = data.labels.copy()
    if task == "multiclass":
        classes = len(data.label_names)
        labels[flipped] = (labels[flipped] + rng.integers(1, classes, len(flipped))) % classes  # any other class
        frame = pd.DataFrame({"text": data.texts, "label": [data.label_names[c] for c in labels]})
    else:
        labels[flipped, label] = 1 - labels[flipped, label]
        frame = pd.DataFrame({"text": data.texts} | {name: labels[:, j].astype(int)
                                                     for j, name in enumerate(data.label_names)})
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return flipped


def layout(task: str, label_names: list[str]) -> dict[str, Any]:
    return ({"task": task, "text_column": "text", "label_column": "label"} if task == "multiclass"
            else {"task": task, "text_column": "text", "label_columns": label_names})


def finetuned_out_of_fold(args: argparse.Namespace, noisy: Path, audited: audit.Audited, seed: int,
                          work: Path) -> tuple[np.ndarray, float]:
    """The transformer fine-tuned on each fold's other rows through `train.run` (explicit settings: no speed
    measurement, no blend, no export), scoring its held-out fold; the probabilities and the seconds."""
    import train
    from inferer import ModelInferer

    started, rows = time.time(), audited.rows
    frame = pd.read_csv(noisy)
    fold_of = stratified_folds(rows.data.labels, audit.FOLDS, seed)
    probabilities = np.zeros_like(audited.members[audit.MEMBER])
    for fold in range(audit.FOLDS):
        folder = work / f"fold{fold}"
        folder.mkdir(parents=True, exist_ok=True)
        frame[fold_of != fold].to_csv(folder / "train.csv", index=False)
        settings = {**layout(rows.task, rows.data.label_names), "data": str(folder / "train.csv"),
                    "output_dir": str(folder / "run"), "epochs": args.finetune_epochs, "seed": seed,
                    "max_length": args.finetune_max_length, "freeze_layers": args.finetune_freeze_layers,
                    "long_texts": "truncate", "blend": "none", "export_onnx": False, "test_split": 0.0,
                    "val_split": 0.1, "none_label": "off", "reject_rate": 0.0}
        if args.model_name_or_path:
            settings["model_name_or_path"] = args.model_name_or_path
        result = train.run(make_config(**settings))
        held = np.flatnonzero(fold_of == fold)
        probabilities[held] = ModelInferer(result.checkpoint).score_texts([rows.data.texts[i] for i in held]).served
    return probabilities, time.time() - started


def losses(task: str, labels: np.ndarray, probabilities: np.ndarray, label: int | None) -> np.ndarray:
    """Each row's loss under one model: cross-entropy of the given class, or binary cross-entropy of `label`."""
    eps = 1e-12
    if task == "multiclass":
        normalised = probabilities / probabilities.sum(axis=1, keepdims=True)
        return -np.log(normalised[np.arange(len(labels)), labels.astype(int)] + eps)
    p, y = probabilities[:, label], labels[:, label] > 0
    return -np.log(np.where(y, p, 1 - p) + eps)


def at_cuts(order: np.ndarray, flipped: np.ndarray) -> dict[str, dict[str, float]]:
    """Recall and precision of the flipped rows among the first 1%, 2.5%, 5% and 10% of `order`."""
    is_flipped = np.zeros(len(order), dtype=bool)
    is_flipped[flipped] = True
    figures = {}
    for cut in CUTS:
        top = order[:max(1, int(round(cut * len(order))))]
        hits = int(is_flipped[top].sum())
        figures[f"{cut:.1%}"] = {"rows": len(top), "recall": hits / len(flipped), "precision": hits / len(top)}
    return figures


def rankings(audited: audit.Audited, extra: dict[str, np.ndarray], label: int | None) -> dict[str, np.ndarray]:
    """Every ranking compared, most doubtful first: the audit's own, cleanlab's on other blends and methods, and
    each model's loss alone."""
    from cleanlab.rank import get_label_quality_scores

    rows, issues = audited.rows, audited.issues
    task, labels = rows.task, rows.data.labels
    own = issues.scores if task == "multiclass" else issues.label_scores[:, label]
    orders = {"audit (cleanlab, " + " + ".join(audited.members) + ")": np.argsort(own, kind="stable")}
    if task == "multilabel":
        orders["audit, rows by all labels' score"] = issues.order()
    blend = np.mean(list(audited.members.values()), axis=0)
    if task == "multiclass":
        for method in ("normalized_margin", "confidence_weighted_entropy"):
            orders[f"cleanlab {method}, same probabilities"] = np.argsort(
                get_label_quality_scores(labels, blend / blend.sum(axis=1, keepdims=True), method=method),
                kind="stable")
    models = {**audited.members, **extra}
    if FINETUNED in extra:
        for name, combined in ((f"{FINETUNED} + {audit.MEMBER}", [audit.MEMBER]),
                               (f"{FINETUNED} + both members", list(audited.members))):
            probabilities = np.mean([extra[FINETUNED], *(audited.members[m] for m in combined)], axis=0)
            verdict = find_label_issues(task, labels, probabilities)
            orders[f"cleanlab, {name}"] = np.argsort(
                verdict.scores if task == "multiclass" else verdict.label_scores[:, label], kind="stable")
    for name, probabilities in models.items():
        orders[f"{name}: its loss alone"] = np.argsort(-losses(task, labels, probabilities, label), kind="stable")
    return orders


def simulate(args: argparse.Namespace, seed: int, work: Path) -> dict[str, Any]:
    """One seed: the noisy copy, the audit, the fine-tuned folds if asked, every ranking's figures."""
    original = read_file_rows(make_config(data=args.data))
    task, names = original.task, original.data.label_names
    label = names.index(args.label) if args.label else None
    noisy = work / f"seed{seed}" / "noisy.csv"
    flipped = flipped_copy(original.data, task, label, args.flip, seed, noisy)
    settings = {**layout(task, names), "data": str(noisy), "seed": seed, "output_dir": str(noisy.parent / "audit"),
                "time_budget": args.time_budget}
    if args.model_name_or_path:
        settings["model_name_or_path"] = args.model_name_or_path
    audited = audit.audit(make_config(**settings))
    extra, finetune_seconds = {}, None
    if args.finetune_epochs > 0:
        extra[FINETUNED], finetune_seconds = finetuned_out_of_fold(args, noisy, audited, seed, noisy.parent / "ft")
    flags = audited.issues.flagged if task == "multiclass" else audited.issues.doubted[:, label]
    hits, flagged = int(flags[flipped].sum()), int(flags.sum())
    return {"seed": seed, "rows": len(original.data), "flipped": len(flipped), "audit": audited.summary,
            "finetune_seconds": finetune_seconds,
            "flagged": {"rows": flagged, "recall": hits / len(flipped), "precision": hits / max(1, flagged)},
            "rankings": {name: at_cuts(order, flipped) for name, order in rankings(audited, extra, label).items()}}


def mean_figures(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Each ranking's recall and precision at each cut, averaged over the seeds, with chance's."""
    names = list(runs[0]["rankings"])
    means = {name: {cut: {k: float(np.mean([r["rankings"][name][cut][k] for r in runs])) for k in ("recall",
                                                                                              "precision")}
                    for cut in runs[0]["rankings"][name]} for name in names}
    share = runs[0]["flipped"] / runs[0]["rows"]
    means["chance"] = {f"{cut:.1%}": {"recall": cut, "precision": share} for cut in CUTS}
    return means


def plot(means: dict[str, dict[str, dict[str, float]]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, figures in means.items():
        ax.plot([100 * c for c in CUTS], [figures[f"{c:.1%}"]["recall"] for c in CUTS], marker="o", label=name,
                linestyle="--" if name == "chance" else "-", linewidth=2.5 if name.startswith("audit (") else 1.2)
    ax.axhline(GOAL["recall"], color="grey", linewidth=0.8)
    ax.axvline(100 * GOAL["cut"], color="grey", linewidth=0.8)
    ax.set(xlabel="rows checked, most doubtful first (% of the file)", ylabel="flipped rows found (recall)",
           ylim=(0, 1.02))
    ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, title, path)


def table(means: dict[str, dict[str, dict[str, float]]]) -> str:
    cuts = [f"{c:.1%}" for c in CUTS]
    lines = ["| ranking | " + " | ".join(f"recall / precision at {c}" for c in cuts) + " |",
             "|---|" + "---|" * len(cuts)]
    lines += [f"| {name} | " + " | ".join(f"{f[c]['recall']:.3f} / {f[c]['precision']:.3f}" for c in cuts) + " |"
              for name, f in means.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    name = args.name or Path(args.data).stem
    work = Path(args.work_dir) / name
    runs = [simulate(args, seed, work) for seed in args.seeds]
    means = mean_figures(runs)
    first = next(iter(means))
    met = means[first][f"{GOAL['cut']:.1%}"]["recall"] >= GOAL["recall"]
    record = new_record(machine=machine(), data=args.data, label=args.label, flip=args.flip, seeds=args.seeds,
                        finetune={"epochs": args.finetune_epochs, "max_length": args.finetune_max_length,
                                  "freeze_layers": args.finetune_freeze_layers}, runs=runs, means=means,
                        goal={**GOAL, "ranking": first, "met": met})
    append_record(results_path("label_audit.json"), record)
    plot(means, f"Label audit: {args.flip:.0%} of {name}'s labels{f' ({args.label})' if args.label else ''} "
         f"flipped, {len(args.seeds)} seed(s)", figure_path(f"label_audit_{name}.png"))
    print(table(means))
    print(f"goal (recall >= {GOAL['recall']:.0%} at {GOAL['cut']:.0%}, {first}): {'met' if met else 'missed'}")


if __name__ == "__main__":
    main()
