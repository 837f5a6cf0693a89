"""How far a served score moves with its batch neighbours, per backend:

    python bench/int8_batch_effect.py --checkpoint outputs/run/checkpoint

Dynamic int8 (torch's quantized Linear layers, and ONNX Runtime's onnx-int8 / onnx-fused-int8 graphs) computes
each activation's int8 scale from the whole batch tensor it quantizes, padding rows included, so a text's score
depends on the texts it shares a forward pass with. Each backend scores --texts held-out toxic texts alone (a
batch of one, the reference), then in single forward passes of each --batch-sizes size with different
neighbours: seeded shuffles of the texts (--shuffles), and half a batch of them beside half a batch of the
longest, or the shortest, other held-out texts. Per backend and batch size: the max, 99th percentile and mean
absolute score difference from the text alone, the widest gap between two batched passes of the same text, and
how many thresholded labels (the checkpoint's thresholds) flip; beside it, each backend's largest difference
from float32 PyTorch (alone), and texts/s alone and batched (what scoring each text alone would cost). Float32
(torch, onnx) is the control; a static int8 graph (`--onnx-static-int8` at export), whose scales were fixed at
calibration, is measured where the checkpoint has it.
Prints the table and appends to docs/results/int8_batch_effect.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so that `python bench/int8_batch_effect.py` finds the project's modules
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import export  # noqa: E402
from bench.records import append_record, machine, new_record, quiet_scoring, results_path  # noqa: E402
from inferer import ModelInferer  # noqa: E402
from utils.checkpoint.contract import CheckpointFolder  # noqa: E402
from utils.config import make_config  # noqa: E402
from utils.data.prepare import read_test_set  # noqa: E402

RESULTS = results_path("int8_batch_effect.json")
BACKENDS = {  # name: ModelInferer arguments; the float32 ones are the control
    "torch fp32": {"backend": "torch"}, "onnx fp32": {"backend": "onnx"},
    "torch int8 (dynamic)": {"quantize": True}, "onnx int8": {"backend": "onnx-int8"},
    "onnx fused int8": {"backend": "onnx-fused-int8"}, "onnx fused int8 static": {"backend": "onnx-fused-int8-static"},
}
FLOAT32 = ("torch fp32", "onnx fp32")
DYNAMIC_INT8 = ("torch int8 (dynamic)", "onnx int8", "onnx fused int8")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--checkpoint", default="outputs/run/checkpoint")
    parser.add_argument("--texts", type=int, default=64, help="Held-out toxic texts whose scores are followed.")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--shuffles", type=int, default=2, help="Seeded shuffles of the texts per batch size.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    return parser.parse_args()


def machine_with_flags() -> dict[str, Any]:
    import onnxruntime

    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), [])
    return machine(avx512_vnni="avx512_vnni" in flags, avx_vnni="avx_vnni" in flags, amx="amx_int8" in flags,
                   torch=torch.__version__, onnxruntime=onnxruntime.__version__)


def held_out(checkpoint: Path, count: int) -> tuple[list[str], list[str]]:
    """`count` texts of the toxic test split (a seeded shuffle), and the other test texts, their neighbours."""
    data = read_test_set(make_config(task="multilabel", data="toxic"), CheckpointFolder(checkpoint).info.labels)
    order = np.random.default_rng(0).permutation(len(data))
    texts = [data.texts[i] for i in order]
    return texts[:count], texts[count:]


def arrangements(count: int, size: int, shuffles: int, neighbours: list[str]) -> list[tuple[str, list[list[int]],
                                                                                        list[str]]]:
    """Named ways to cut the followed texts (ids 0..count-1) into forward passes of `size`, each with the other
    texts that fill them (id -1 - j is filler j): seeded shuffles of the followed texts among `size` random other
    ones, and half batches of them beside the longest, or the shortest, other texts."""
    ways = []
    for seed in range(shuffles):
        rng = np.random.default_rng(seed + 1)
        fillers = [neighbours[j] for j in rng.choice(len(neighbours), min(size, len(neighbours)), replace=False)]
        order = rng.permutation(list(range(count)) + [-1 - j for j in range(len(fillers))]).tolist()
        ways.append((f"shuffle {seed + 1}", [order[i:i + size] for i in range(0, len(order), size)], fillers))
    half = max(1, size // 2)
    beside = [list(range(i, min(i + half, count))) for i in range(0, count, half)]
    by_length = sorted(neighbours, key=len)
    for name, fillers in (("long neighbours", by_length[::-1][:size - half]), ("short neighbours",
                                                                            by_length[:size - half])):
        ways.append((name, [rows + [-1 - j for j in range(len(fillers))] for rows in beside], fillers))
    return ways


def scores_in(inferer: ModelInferer, texts: list[str], batches: list[list[int]],
              fillers: list[str]) -> tuple[np.ndarray, float]:
    """The followed texts' scores, each batch one forward pass (fillers scored beside them, then dropped), and
    texts scored per second."""
    scores = np.zeros((len(texts), len(inferer.label_names)))
    started = time.perf_counter()
    for batch in batches:
        batch_texts = [texts[i] if i >= 0 else fillers[-1 - i] for i in batch]
        batch_scores, _ = inferer.score_batch(batch_texts, batch_size=len(batch_texts))  # one pass, one batch
        for row, i in enumerate(batch):
            if i >= 0:
                scores[i] = batch_scores[row]
    return scores, sum(map(len, batches)) / (time.perf_counter() - started)


def effect(moved: np.ndarray, alone: np.ndarray, thresholds: np.ndarray) -> dict[str, Any]:
    difference = np.abs(moved - alone)
    flips = (moved >= thresholds) != (alone >= thresholds)
    return {"max": float(difference.max()), "p99": float(np.percentile(difference, 99)),
            "mean": float(difference.mean()), "label_flips": int(flips.sum()), "labels": int(flips.size),
            "texts_with_a_flip": int(flips.reshape(-1, *flips.shape[-2:]).any(axis=(0, 2)).sum())}


def measure(name: str, checkpoint: Path, texts: list[str], neighbours: list[str], args) -> dict[str, Any]:
    inferer = ModelInferer(checkpoint, device="cpu", num_threads=args.threads, **BACKENDS[name])
    thresholds = np.asarray(inferer.thresholds, dtype=np.float64)
    inferer.score_batch(texts[:2])  # warm-up
    alone, alone_speed = scores_in(inferer, texts, [[i] for i in range(len(texts))], [])
    row: dict[str, Any] = {"backend": name, "engine": inferer.backend, "alone": alone,
                           "alone_texts_per_s": alone_speed, "batches": []}
    for size in args.batch_sizes:
        everything, speeds, passes = [], [], []
        for way, batches, fillers in arrangements(len(texts), size, args.shuffles, neighbours):
            moved, speed = scores_in(inferer, texts, batches, fillers)
            everything.append(moved)
            passes.append({"neighbours": way, **effect(moved, alone, thresholds)})
            speeds += [speed] if way.startswith("shuffle") else []
        stacked = np.stack(everything)
        summary = effect(stacked, np.broadcast_to(alone, stacked.shape), thresholds)
        # the same text in two batched passes, neither alone: its scores' widest gap
        summary["between_batches_max"] = float(np.ptp(stacked, axis=0).max())
        row["batches"].append({"batch_size": size, **summary, "by_neighbours": passes,
                               "texts_per_s": float(np.mean(speeds)) if speeds else None})
        print(f"{name}, batches of {size}: max {row['batches'][-1]['max']:.2e}", file=sys.stderr, flush=True)
    return row


def runnable_backends(checkpoint: Path, asked: list[str]) -> list[str]:
    """The backends asked for, their graphs exported first where missing (static int8 only where it was)."""
    folder = CheckpointFolder(checkpoint)
    if not all(folder.onnx_file(BACKENDS[name]["backend"]).is_file() for name in asked
               if BACKENDS[name].get("backend", "torch") not in ("torch", "onnx-fused-int8-static")):
        export.export_graphs(checkpoint)  # the graphs alone: nothing here needs their measurement
    return [name for name in asked if BACKENDS[name].get("backend") != "onnx-fused-int8-static"
            or folder.onnx_file("onnx-fused-int8-static").is_file()]


def main() -> None:
    args = parse_args()
    quiet_scoring(args.threads)
    checkpoint = Path(args.checkpoint)
    backends = runnable_backends(checkpoint, args.backends)
    texts, neighbours = held_out(checkpoint, args.texts)
    rows = [measure(name, checkpoint, texts, neighbours, args) for name in backends]
    reference = next(row["alone"] for row in rows if row["backend"] == "torch fp32") if "torch fp32" in backends \
        else None
    thresholds = np.asarray(ModelInferer(checkpoint, backend="torch").thresholds, dtype=np.float64)
    for row in rows:
        alone = row.pop("alone")
        if reference is not None:
            against = effect(alone, reference, thresholds)
            row["against_torch_fp32"] = {key: against[key] for key in ("max", "p99", "label_flips")}
    record = new_record(machine=machine_with_flags(), checkpoint=str(checkpoint), texts=len(texts),
                        batch_sizes=args.batch_sizes, shuffles=args.shuffles, threads=args.threads,
                        thresholds=thresholds.tolist(), rows=rows)
    append_record(RESULTS, record)
    print_table(record)


def print_table(record: dict[str, Any]) -> None:
    print(f"{record['texts']} texts, {record['machine']['cpu']}, avx512_vnni {record['machine']['avx512_vnni']}")
    print("| backend | batch | max | p99 | mean | max between batches | label flips | texts/s batched (alone) | "
          "max vs torch fp32 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in record["rows"]:
        against = row.get("against_torch_fp32", {}).get("max")
        for batch in row["batches"]:
            speed = f"{batch['texts_per_s']:.1f} ({row['alone_texts_per_s']:.1f})" if batch["texts_per_s"] else ""
            print(f"| {row['backend']} | {batch['batch_size']} | {batch['max']:.2e} | {batch['p99']:.2e} | "
                  f"{batch['mean']:.2e} | {batch['between_batches_max']:.2e} | "
                  f"{batch['label_flips']} of {batch['labels']} | {speed} | "
                  f"{'' if against is None else f'{against:.2e}'} |")


if __name__ == "__main__":
    main()
