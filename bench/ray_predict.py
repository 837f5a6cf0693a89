"""Batch scoring throughput: the single-process `--mode predict` against `--engine ray` with 1 and 2 actors, on
the same rows of toxic, side by side in one run:

    python bench/ray_predict.py --checkpoint outputs/bench_ray/checkpoint          # 10,000 rows

Writes the first --rows comments of toxic/train.csv to one CSV file and starts one local Ray cluster (timed apart, as
`--engine ray` starts one per command). Then, for each --actors count n, in pairs on the same cores: `predict.run`
in this process with n torch threads (the file read in 4,096-row chunks), and `predict_ray.run` with n
actors of 1 CPU and 1 torch thread. Each time is the whole command after Python's imports: model loading, actor
start-up, reading, scoring, writing and the row check. Every Ray output is compared with its pair's single-process one
(each row once, scores within SCORE_TOLERANCE). Prints a table and appends the record to
docs/results/bench_ray_predict.json.
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
    default_threads = torch.get_num_threads()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_ray_") as folder:
        work = Path(folder)
        source = work / "toxic.csv"
        pd.read_csv(DATA, dtype=str, keep_default_na=False).head(args.rows).to_csv(source, index=False)
        settings = {"mode": "predict", "checkpoint": checkpoint, "input": str(source)}
        started = time.perf_counter()
        with predict_ray.ray_cluster(args.ray_address):
            cluster_start_s = time.perf_counter() - started
            cluster_cpus = int(ray.cluster_resources().get("CPU", 0))
            for cores in args.actors:
                single = work / f"single-{cores}.csv"
                torch.set_num_threads(cores)
                started = time.perf_counter()
                predict.run(make_config(**settings, output=str(single)), checkpoint)
                rows.append({"engine": "single", "actors": None, "threads": cores,
                             "seconds": time.perf_counter() - started})
                output = work / f"ray-{cores}"
                started = time.perf_counter()
                predict_ray.run(make_config(**settings, output=str(output), engine="ray", num_actors=cores,
                                            cpus_per_actor=1, batch_size=args.batch_size), checkpoint)
                rows.append({"engine": "ray", "actors": cores, "threads": 1, "seconds": time.perf_counter() - started,
                             "max_abs_diff": max_score_difference(output, pd.read_csv(single))})
        torch.set_num_threads(default_threads)
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
    """One line per run; each Ray run beside the single process on as many cores (its pair)."""
    print(f"\n{record['machine']['cpu']}, {record['machine']['cores']} cores; {record['rows']} rows of toxic; Ray "
          f"batch {record['ray_batch_size']} rows; Ray cluster start {record['cluster_start_s']:.1f} s "
          f"({'joined' if record['joined_cluster'] else 'local, once per --engine ray command'})\n")
    print("| engine | processes x threads | seconds | texts/s | x single, same cores | texts/s with cluster start |")
    print("|--------|---------------------|---------|---------|----------------------|----------------------------|")
    single = {}
    for run in record["runs"]:
        if run["actors"] is None:
            single[run["threads"]] = run
            shape, ratio, with_start = f"1 x {run['threads']}", 1.0, ""
        else:
            shape = f"{run['actors']} actor(s) x {run['threads']}"
            ratio = run["texts_per_s"] / single[run["actors"]]["texts_per_s"]
            with_start = f"{record['rows'] / (run['seconds'] + record['cluster_start_s']):.1f}"
        print(f"| {run['engine']:<6} | {shape:<19} | {run['seconds']:7.1f} | {run['texts_per_s']:7.1f} | "
              f"{ratio:20.2f} | {with_start:>26} |")


if __name__ == "__main__":
    main()
