"""Batch scoring throughput: the single-process `--mode predict` against `--engine ray` with 1 and 2 actors, on
the same rows of toxic, side by side in one run:

    python bench/ray_predict.py --checkpoint outputs/bench_cls/checkpoint          # 10,000 rows

Writes the first --rows comments of toxic/train.csv to one CSV file and scores it with `predict.run` (one process,
torch threads = cores, the file read in 4,096-row chunks), then on one local Ray cluster (started once and timed
apart, as `--engine ray` starts one per command) with `predict.run(engine="ray")` for each --actors count, 1 CPU and
1 torch thread per actor. Each time is the whole command after Python's imports: model loading, actor start-up,
reading, scoring, writing and the row check. Every Ray output is compared with the single-process one (each row
once, scores within SCORE_TOLERANCE). Prints a table and appends the record to docs/results/bench_ray_predict.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so that `python bench/ray_predict.py` finds the project's modules
    sys.path.insert(0, str(ROOT))

from bench.records import append_record, machine, new_record  # noqa: E402

RESULTS = ROOT / "docs" / "results" / "bench_ray_predict.json"
DATA = ROOT.parent / "shared" / "data" / "toxic" / "train.csv"
SCORE_TOLERANCE = 1e-5  # 1 torch thread in an actor against 2 in the single process, other batches: float32 noise


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--checkpoint", default="outputs/bench_cls/checkpoint")
    parser.add_argument("--rows", type=int, default=10_000, help="Rows of toxic/train.csv to score (at least 1).")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="Ray actor counts to time.")
    parser.add_argument("--batch-size", type=int, default=1024, help="Rows per Ray batch (its --batch-size).")
    parser.add_argument("--ray-address", default=None, help="Join this cluster instead of starting a local one.")
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON history the record is appended to.")
    args = parser.parse_args(argv)
    if args.rows < 1 or min(args.actors) < 1:
        parser.error("--rows and --actors must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import ray
    import torch

    import predict
    import predict_ray
    from utils.config import make_config

    args = parse_args(argv)
    checkpoint = str(Path(args.checkpoint).resolve())
    with tempfile.TemporaryDirectory(prefix="bench_ray_") as folder:
        work = Path(folder)
        source = work / "toxic.csv"
        pd.read_csv(DATA, dtype=str, keep_default_na=False).head(args.rows).to_csv(source, index=False)
        settings = {"mode": "predict", "checkpoint": checkpoint, "input": str(source)}

        single = work / "single.csv"
        started = time.perf_counter()
        predict.run(make_config(**settings, output=str(single)), checkpoint)
        rows = [{"engine": "single", "actors": None, "threads": torch.get_num_threads(),
                 "seconds": time.perf_counter() - started}]
        expected = pd.read_csv(single)

        started = time.perf_counter()
        with predict_ray.ray_cluster(args.ray_address):
            cluster_start_s = time.perf_counter() - started
            cluster_cpus = int(ray.cluster_resources().get("CPU", 0))
            for actors in args.actors:
                output = work / f"ray-{actors}"
                started = time.perf_counter()
                predict.run(make_config(**settings, output=str(output), engine="ray", num_actors=actors,
                                        cpus_per_actor=1, batch_size=args.batch_size), checkpoint)
                seconds = time.perf_counter() - started
                rows.append({"engine": "ray", "actors": actors, "threads": 1, "seconds": seconds,
                             "max_abs_diff": max_score_difference(output, expected)})
    for row in rows:
        row["texts_per_s"] = args.rows / row["seconds"]
    record = new_record(machine=machine(torch=torch.__version__, ray=ray.__version__), checkpoint=checkpoint,
                        rows=args.rows, ray_batch_size=args.batch_size, joined_cluster=args.ray_address is not None,
                        cluster_cpus=cluster_cpus, cluster_start_s=cluster_start_s, runs=rows)
    print_table(record)
    append_record(args.results, record)
    return record


def max_score_difference(output: Path, expected: pd.DataFrame) -> float:
    """Largest score difference between a Ray output folder and the single-process CSV; every row once."""
    import predict_ray

    scored = pd.concat([pd.read_parquet(p) for p in sorted(output.glob("*.parquet"))], ignore_index=True)
    order = scored[predict_ray.ROW_NUMBER].to_numpy()
    if sorted(order.tolist()) != list(range(1, len(expected) + 1)):
        raise RuntimeError(f"{output}: rows missing or repeated")
    columns = [c for c in expected.columns if c.startswith("score_")]
    difference = np.abs(scored[columns].to_numpy() - expected[columns].to_numpy()[order - 1]).max()
    if difference > SCORE_TOLERANCE:
        raise RuntimeError(f"{output}: scores differ from the single process by {difference:.2e}")
    return float(difference)


def print_table(record: dict[str, Any]) -> None:
    single = record["runs"][0]
    print(f"\n{record['machine']['cpu']}, {record['machine']['cores']} cores; {record['rows']} rows of toxic; Ray "
          f"batch {record['ray_batch_size']} rows; Ray cluster start {record['cluster_start_s']:.1f} s "
          f"({'joined' if record['joined_cluster'] else 'local, once per --engine ray command'})\n")
    print("| engine            | actors x threads | seconds | texts/s | x single | texts/s with cluster start |")
    print("|-------------------|------------------|---------|---------|----------|----------------------------|")
    for run in record["runs"]:
        shape = f"1 process x {run['threads']}" if run["actors"] is None else f"{run['actors']} x {run['threads']}"
        with_start = "" if run["actors"] is None else \
            f"{record['rows'] / (run['seconds'] + record['cluster_start_s']):.1f}"
        print(f"| {run['engine']:<17} | {shape:<16} | {run['seconds']:7.1f} | {run['texts_per_s']:7.1f} | "
              f"{run['texts_per_s'] / single['texts_per_s']:8.2f} | {with_start:>26} |")


if __name__ == "__main__":
    main()
