"""Which word attribution method is faithful: deletion curves on held-out texts, and the cost of each method.

    python bench/explain.py --checkpoint /tmp/explain_run/checkpoint --texts 120

For held-out texts of the checkpoint's own validation split (the rows training held out, rebuilt from its
training_config.json) on which the model predicts at least one label, and for each predicted label: remove the k
words each method ranks highest for that label (k = 1..--max-k) and measure how far the label's score falls,
against removing k words drawn at random (--random-orders draws per text). Words are removed from what the
model sees (their word pieces deleted), and, as a check that the curve does not merely reward occlusion for
measuring the same deletion it ranks by, also replaced by [MASK] pieces. A faithful method's curve lies above
random. Prints a table, appends to docs/results/explain_faithfulness.json and draws docs/explain_deletion.png
(docs/explain_deletion_long.png with --bury-in).

With --bury-in WORDS, each such text is placed at a random word of WORDS words of held-out texts that carry no
label, and read as --long-texts says (windows: the whole text): the same curves, over every word of a long text,
for the labels predicted on the text alone (a buried text's score starts lower, often under its threshold). Each
drop is also given as a share of the label's score before any removal, which compares long texts with short.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so that `python bench/explain.py` finds the project's modules
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from bench.records import append_record, figure_path, machine, new_record, results_path, save_figure  # noqa: E402
from inferer import ModelInferer  # noqa: E402
from models.scoring import scores_from_logits  # noqa: E402
from utils.config import config_from_saved  # noqa: E402
from utils.data.prepare import prepare_splits  # noqa: E402
from utils.inference.explain import METHODS, TextToExplain, attribute, prepare_text  # noqa: E402
from utils.inference.runners import score_sequences  # noqa: E402

RESULTS = results_path("explain_faithfulness.json")
PLOT = figure_path("explain_deletion.png")
PLOT_LONG = figure_path("explain_deletion_long.png")  # with --bury-in
PERTURBATIONS = ("delete", "mask")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--checkpoint", default="outputs/run/checkpoint")
    parser.add_argument("--texts", type=int, default=120, help="Held-out texts with a predicted label.")
    parser.add_argument("--max-k", type=int, default=5, help="Most words removed.")
    parser.add_argument("--min-words", type=int, default=8, help="Texts with fewer seen words are skipped.")
    parser.add_argument("--random-orders", type=int, default=10, help="Random removal orders per text.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bury-in", type=int, default=0,
                        help="Words of unlabelled held-out texts around each text (0: the texts alone).")
    parser.add_argument("--long-texts", choices=["truncate", "windows"], default=None,
                        help="How the long texts are read (default: the checkpoint's own reading).")
    parser.add_argument("--cost-only", action="store_true",
                        help="Only time ModelInferer.explain per method (wall and CPU seconds), no curves.")
    return parser.parse_args()


def held_out_texts(inferer: ModelInferer, count: int, min_words: int, seed: int) -> list[str]:
    """Validation rows of the checkpoint's own run with at least one predicted label, in a seeded order."""
    validation = prepare_splits(config_from_saved(inferer.checkpoint.training_config())).validation
    order = np.random.default_rng(seed).permutation(len(validation))
    chosen: list[str] = []
    for start in range(0, len(order), 256):
        texts = [validation.texts[i] for i in order[start:start + 256]]
        for text, prediction in zip(texts, inferer.predict_batch(texts), strict=True):
            seen = len(prepare_text(inferer.tokenizer, text, inferer.reading).seen)
            if prediction["labels"] and seen >= min_words:
                chosen.append(text)
        if len(chosen) >= count:
            break
    return chosen[:count]


def buried(inferer: ModelInferer, texts: list[str], words: int, seed: int) -> list[str]:
    """Each text at a random word of `words` words of held-out texts without a label (multi-label checkpoints)."""
    validation = prepare_splits(config_from_saved(inferer.checkpoint.training_config())).validation
    if inferer.task != "multilabel":
        raise SystemExit("--bury-in needs a multi-label checkpoint: texts without a label to bury in")
    clean = [validation.texts[i].split() for i in np.flatnonzero(validation.labels.sum(axis=1) == 0)]
    rng = np.random.default_rng(seed)
    long_texts = []
    for text in texts:
        filler: list[str] = []
        while len(filler) < words:
            filler += clean[int(rng.integers(len(clean)))]
        at = int(rng.integers(words + 1))
        long_texts.append(" ".join(filler[:at] + text.split() + filler[at:words]))
    return long_texts


def without(item: TextToExplain, words: np.ndarray, how: str, mask_id: int) -> list[np.ndarray]:
    """The input's sequences (one, or its windows) with these words' pieces deleted, or replaced by [MASK]."""
    changed = []
    for window in item.windows:
        positions = sorted({p for w in words for p in window.pieces.get(int(w), [])})
        if how == "delete":
            changed.append(np.delete(window.input_ids, positions))
        else:
            masked = window.input_ids.copy()
            masked[positions] = mask_id
            changed.append(masked)
    return changed


def pooled_scores(inferer: ModelInferer, variants: list[list[np.ndarray]]) -> np.ndarray:
    """Scores (variants, labels) of inputs given as their sequences, pooled as prediction pools windows."""
    sequences = [sequence for variant in variants for sequence in variant]
    owner = np.repeat(np.arange(len(variants)), [len(variant) for variant in variants])
    logits = score_sequences(inferer.runner.logits, sequences, inferer.pad_id)
    return scores_from_logits(inferer.task, inferer.reading.pool(logits, owner))


def curves_of_text(inferer: ModelInferer, text: str, labels: list[int], max_k: int, orders: int,
                   rng: np.random.Generator, mask_id: int) -> dict[str, Any]:
    """Score drops of `labels` after removing top-k (per method) and random words; and timings."""
    item = prepare_text(inferer.tokenizer, text, inferer.reading)
    seen = np.array(item.seen)
    rankings, seconds = {}, {}
    for method in METHODS:
        started = time.perf_counter()
        values = attribute(method, inferer.runner, item, inferer.task, labels, inferer.pad_id)
        seconds[method] = time.perf_counter() - started
        rankings[method] = [seen[np.argsort(-row[seen], kind="stable")] for row in values]
    random_orders = [rng.permutation(seen) for _ in range(orders)]
    drops: dict[str, Any] = {}
    for how in PERTURBATIONS:
        variants = [[window.input_ids for window in item.windows]]
        for method in METHODS:
            variants += [without(item, ranking[:k], how, mask_id) for ranking in rankings[method]
                         for k in range(1, max_k + 1)]
        variants += [without(item, order[:k], how, mask_id) for order in random_orders for k in range(1, max_k + 1)]
        scores = pooled_scores(inferer, variants)[:, labels]  # (variants, labels)
        base, rest = scores[0], scores[1:]
        per_method = rest[:len(METHODS) * len(labels) * max_k].reshape(len(METHODS), len(labels), max_k, len(labels))
        chosen = np.stack([per_method[:, j, :, j] for j in range(len(labels))], axis=1)  # (methods, labels, k)
        random = rest[len(METHODS) * len(labels) * max_k:].reshape(orders, max_k, len(labels)).mean(axis=0).T
        drops[how] = {"methods": base[None, :, None] - chosen, "random": base[:, None] - random, "base": base}
    return {"drops": drops, "seconds": seconds, "labels": len(labels), "words": len(seen)}


def summarize(results: list[dict[str, Any]], max_k: int, rng: np.random.Generator) -> dict[str, Any]:
    """Mean drop at each k per method and for random words, their area (AOPC), and the margin over random."""
    summary: dict[str, Any] = {}
    for how in PERTURBATIONS:
        methods = np.concatenate([r["drops"][how]["methods"] for r in results], axis=1)  # (methods, pairs, k)
        random = np.concatenate([r["drops"][how]["random"] for r in results], axis=0)  # (pairs, k)
        base = np.concatenate([r["drops"][how]["base"] for r in results])  # (pairs,): each label's starting score
        share = np.maximum(base, 1e-12)[:, None]
        block: dict[str, Any] = {"random": {"mean_drop": random.mean(axis=0).round(4).tolist(),
                                            "aopc": round(float(random.mean()), 4),
                                            "relative_aopc": round(float((random / share).mean()), 4)}}
        summary["mean_base_score"] = round(float(base.mean()), 4)  # the same text before removal, either way
        for m, method in enumerate(METHODS):
            margin = methods[m].mean(axis=1) - random.mean(axis=1)  # per (text, label) pair
            boot = [margin[rng.integers(0, len(margin), len(margin))].mean() for _ in range(2000)]
            block[method] = {"mean_drop": methods[m].mean(axis=0).round(4).tolist(),
                             "aopc": round(float(methods[m].mean()), 4),
                             "relative_mean_drop": (methods[m] / share).mean(axis=0).round(4).tolist(),
                             "relative_aopc": round(float((methods[m] / share).mean()), 4),
                             "margin_over_random": round(float(margin.mean()), 4),
                             "margin_95ci": [round(float(q), 4) for q in np.percentile(boot, [2.5, 97.5])],
                             "pairs_above_random": round(float((margin > 0).mean()), 4)}
        summary[how] = block
    summary["seconds_per_text"] = {m: round(float(np.median([r["seconds"][m] for r in results])), 4)
                                   for m in METHODS}
    summary["seconds_per_text_and_label"] = {
        m: round(float(np.median([r["seconds"][m] / r["labels"] for r in results])), 4) for m in METHODS}
    summary["pairs"] = int(sum(r["labels"] for r in results))
    summary["mean_words"] = round(float(np.mean([r["words"] for r in results])), 1)
    return summary


def plot(summary: dict[str, Any], max_k: int, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PERTURBATIONS), figsize=(11, 4.2), sharey=True)
    ks = list(range(1, max_k + 1))
    for ax, how in zip(axes, PERTURBATIONS, strict=True):
        for name in (*METHODS, "random"):
            entry = summary[how][name]
            ax.plot(ks, entry["mean_drop"], marker="o", linestyle="--" if name == "random" else "-",
                    color="grey" if name == "random" else None,
                    label=f"{name} (AOPC {entry['aopc']:.3f}, {entry['relative_aopc']:.0%} of the score)")
        ax.set(xlabel="words removed (k)", xticks=ks,
               title="top-k words' pieces deleted" if how == "delete" else "top-k words' pieces -> [MASK]")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("mean drop of the label's score")
    save_figure(fig, title, path)


def cost_of_explaining(inferer: ModelInferer, texts: list[str]) -> dict[str, Any]:
    """Medians over texts of ModelInferer.explain's wall and CPU seconds (all threads) per method, for the
    predicted labels, per text and per text and label; with the machine's load average before and after."""
    load_before = os.getloadavg()
    timings: dict[str, list[tuple[float, float, int]]] = {method: [] for method in METHODS}
    for text in texts:
        for method in METHODS:
            wall, cpu = time.perf_counter(), time.process_time()
            labels = len(inferer.explain(text, method=method)["attributions"])
            timings[method].append((time.perf_counter() - wall, time.process_time() - cpu, labels))
    cost = {method: {
        "wall_seconds_per_text": round(float(np.median([w for w, _, _ in rows])), 4),
        "cpu_seconds_per_text": round(float(np.median([c for _, c, _ in rows])), 4),
        "wall_seconds_per_text_and_label": round(float(np.median([w / n for w, _, n in rows])), 4),
        "cpu_seconds_per_text_and_label": round(float(np.median([c / n for _, c, n in rows])), 4)}
        for method, rows in timings.items()}
    return {"cost": cost, "load_average": [round(v, 2) for v in (*load_before, *os.getloadavg())]}


def main() -> None:
    args = parse_args()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    inferer = ModelInferer(args.checkpoint, precision="fp32", backend="torch",  # gradient methods need PyTorch
                           long_texts=args.long_texts)
    texts = held_out_texts(inferer, args.texts, args.min_words, args.seed)
    labels = [[inferer.label_names.index(name) for name in prediction["labels"]]
              for prediction in inferer.predict_batch(texts)]  # predicted on the text alone
    if args.bury_in:
        texts = buried(inferer, texts, args.bury_in, args.seed)
    if args.cost_only:
        measured = cost_of_explaining(inferer, texts)
        for method, figures in measured["cost"].items():
            print(f"{method:<22} {figures}")
        print("load average (1, 5, 15 min) before and after:", measured["load_average"])
        append_record(RESULTS, new_record(machine=machine(torch=torch.__version__, threads=args.threads),
                                          checkpoint=str(args.checkpoint), checkpoint_id=inferer.checkpoint_id,
                                          texts=len(texts), **measured))
        return
    rng = np.random.default_rng(args.seed)
    mask_id = inferer.tokenizer.mask_token_id
    results = []
    for number, (text, asked) in enumerate(zip(texts, labels, strict=True), 1):
        results.append(curves_of_text(inferer, text, asked, args.max_k, args.random_orders, rng, mask_id))
        if number % 20 == 0:
            print(f"{number}/{len(texts)} texts", flush=True)
    summary = summarize(results, args.max_k, rng)
    print(f"{len(texts)} held-out texts, {summary['pairs']} (text, predicted label) pairs, "
          f"{summary['mean_words']} words per text on average")
    print(f"the labels' scores before any removal: {summary['mean_base_score']:.3f} on average")
    for how in PERTURBATIONS:
        print(f"\n{how}: mean drop of the label's score after removing k = 1..{args.max_k} words")
        for name in (*METHODS, "random"):
            entry = summary[how][name]
            extra = (f"  margin {entry['margin_over_random']:+.4f} {entry['margin_95ci']}  "
                     f"above random {entry['pairs_above_random']:.0%}" if name != "random" else "")
            print(f"  {name:<22} {' '.join(f'{d:.3f}' for d in entry['mean_drop'])}  AOPC {entry['aopc']:.4f}  "
                  f"relative AOPC {entry['relative_aopc']:.3f}{extra}")
    print("\nseconds per text (median):", summary["seconds_per_text"])
    print("seconds per text and label (median):", summary["seconds_per_text_and_label"])
    record = new_record(machine=machine(torch=torch.__version__, threads=args.threads),
                        checkpoint=str(args.checkpoint), checkpoint_id=inferer.checkpoint_id,
                        settings={k: v for k, v in vars(args).items() if k != "checkpoint"},
                        texts=len(texts), **summary)
    append_record(RESULTS, record)
    where = f" in {args.bury_in} words ({inferer.reading.long_texts})" if args.bury_in else ""
    plot(summary, args.max_k, f"Deletion curves: {len(texts)} held-out toxic comments{where}, {summary['pairs']} "
                              "predicted labels", PLOT_LONG if args.bury_in else PLOT)
    print(f"\n{RESULTS}\n{PLOT_LONG if args.bury_in else PLOT}\n{json.dumps(summary['seconds_per_text'])}")


if __name__ == "__main__":
    main()
