"""What a long text costs to score, cut or read whole in windows:

    python bench/long_texts.py --checkpoint outputs/run/checkpoint

Texts of each --lengths (in words, built from real toxic comments laid end to end) are scored by the checkpoint as
it is served (backend auto) and with the torch backend, under `--long-texts truncate` and `windows`, one thread,
--texts texts per length in batches of --batch-size. Per row: texts/s, tokens read/s (every window's tokens) and
windows a text; the plot shows texts/s and tokens read/s against length. Cut, a text's cost stays flat; in
windows it grows linearly with the length (tokens/s stays level). Appends to docs/results/bench_long_texts.json
and writes docs/bench_long_texts.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so that `python bench/long_texts.py` finds the project's modules
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.records import (  # noqa: E402
    append_record,
    figure_path,
    machine,
    new_record,
    quiet_scoring,
    results_path,
    save_figure,
)
from inferer import ModelInferer  # noqa: E402
from utils.data.datasets import SHARED_DATA_DIR  # noqa: E402

RESULTS = results_path("bench_long_texts.json")
FIGURE = figure_path("bench_long_texts.png")
READINGS = ("truncate", "windows")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="What a long text costs to score, cut or in windows.")
    parser.add_argument("--checkpoint", default="outputs/run/checkpoint")
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 100, 200, 400, 800, 1600, 3200],
                        help="Words a text.")
    parser.add_argument("--texts", type=int, default=16, help="Texts scored per length and reading.")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backends", nargs="+", default=["auto", "torch"])
    return parser.parse_args()


def texts_of(words: int, count: int, seed: int = 0) -> list[str]:
    """`count` texts of `words` words each: real toxic comments, drawn at random and laid end to end."""
    import pandas as pd

    comments = pd.read_csv(SHARED_DATA_DIR / "toxic" / "train.csv", usecols=["comment_text"]).comment_text
    pool = [c.split() for c in comments.sample(2000, random_state=seed)]
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(count):
        chosen: list[str] = []
        while len(chosen) < words:
            chosen += pool[int(rng.integers(len(pool)))]
        texts.append(" ".join(chosen[:words]))
    return texts


def measure(inferer: ModelInferer, texts: list[str], batch_size: int) -> dict[str, float]:
    """Texts/s, tokens read/s and windows a text over one scoring of `texts` (after one warm-up batch)."""
    inferer.score_batch(texts[:batch_size], batch_size)
    sequences = inferer.reading.encode(inferer.tokenizer, texts)
    started = time.perf_counter()
    inferer.score_batch(texts, batch_size)
    seconds = time.perf_counter() - started
    return {"texts_per_s": len(texts) / seconds, "tokens_per_s": float(sequences.tokens_per_text.sum()) / seconds,
            "ms_per_text": 1000 * seconds / len(texts), "windows_per_text": float(sequences.windows_per_text.mean()),
            "tokens_per_text": float(sequences.tokens_per_text.mean())}


def main() -> None:
    args = parse_args()
    quiet_scoring(args.threads)
    rows = []
    for backend in args.backends:
        inferers = {reading: ModelInferer(args.checkpoint, backend=backend, long_texts=reading,
                                          num_threads=args.threads) for reading in READINGS}
        for words in args.lengths:
            texts = texts_of(words, args.texts)
            for reading, inferer in inferers.items():
                row = {"backend": inferer.backend, "requested": backend, "long_texts": reading, "words": words,
                       **measure(inferer, texts, args.batch_size)}
                rows.append(row)
                print(f"{inferer.backend:>16} {reading:>8} {words:>5} words: {row['texts_per_s']:8.1f} texts/s "
                      f"{row['tokens_per_s']:8.0f} tokens/s {row['windows_per_text']:5.1f} windows")
    reference = ModelInferer(args.checkpoint, backend="torch")
    record = new_record(machine=machine(), checkpoint=str(args.checkpoint), max_length=reference.max_length,
                        window_stride=reference.reading.stride(reference.max_length - 2),
                        max_windows=reference.reading.max_windows, texts=args.texts, batch_size=args.batch_size,
                        threads=args.threads, rows=rows)
    append_record(RESULTS, record)
    plot(rows, record)
    print(f"appended to {RESULTS}; plot {FIGURE}")


def plot(rows: list[dict], record: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (speed, tokens) = plt.subplots(1, 2, figsize=(11, 4))
    for backend in dict.fromkeys(row["backend"] for row in rows):
        for reading, style in zip(READINGS, ("--", "-"), strict=True):
            chosen = [row for row in rows if row["backend"] == backend and row["long_texts"] == reading]
            words = [row["words"] for row in chosen]
            label = f"{backend}, {reading}"
            speed.plot(words, [row["texts_per_s"] for row in chosen], style, marker="o", label=label)
            tokens.plot(words, [row["tokens_per_s"] for row in chosen], style, marker="o", label=label)
    for axes, name in ((speed, "texts/s"), (tokens, "tokens read/s")):
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("words a text")
        axes.set_ylabel(name)
        axes.grid(True, which="both", alpha=0.3)
    speed.legend(fontsize=8)
    save_figure(fig, f"Scoring long texts, {record['max_length']}-token windows, {record['threads']} thread "
                     f"({record['machine']['cpu']})", FIGURE)


if __name__ == "__main__":
    main()
