"""HTTP API throughput and latency: the default server (BACKEND=auto) against the torch backend, each per request
and with micro-batching, on loopback:

    python bench/api.py --checkpoint outputs/bench_cls/checkpoint

Starts the documented server (`CHECKPOINT_PATH=... gunicorn -c gunicorn.conf.py "app:create_app()"`) once per
mode (--modes: BACKEND=torch, then the default, each also with MICROBATCH=1), and for 1, 8 and 32 concurrent
clients (threads with keep-alive http.client connections, each POSTing one real toxic text per request)
measures req/s and latency p50/p99 over a bounded time and request count. The load generator shares the
machine's cores with the server: read the ratios. Prints a table and the goal of issue 16 (the default at least
1.8x torch's req/s at the most clients, p99 no worse), appends to docs/results/bench_api.json and draws
docs/bench_api.png.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so that `python bench/api.py` finds the project's modules
    sys.path.insert(0, str(ROOT))

from bench.records import append_record, figure_path, machine, new_record, results_path, save_figure  # noqa: E402

RESULTS = results_path("bench_api.json")
PLOT = figure_path("bench_api.png")
DATA = ROOT.parent / "shared" / "data" / "toxic" / "train.csv"
MODES = {  # name: the server's environment
    "torch": {"BACKEND": "torch"}, "torch-microbatch": {"BACKEND": "torch", "MICROBATCH": "1"},
    "auto": {}, "auto-microbatch": {"MICROBATCH": "1"},
}
BASELINE, DEFAULT = "torch", "auto"  # the goal compares the default server with the torch backend


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--checkpoint", default="outputs/bench_cls/checkpoint")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=20.0, help="Load time per concurrency level.")
    parser.add_argument("--max-requests", type=int, default=4000, help="Request cap per concurrency level.")
    parser.add_argument("--port", type=int, default=18931)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    return parser.parse_args()


def start_server(checkpoint: str, port: int, extra: dict[str, str]) -> subprocess.Popen:
    env = os.environ | {"CHECKPOINT_PATH": checkpoint, "PORT": str(port), "HOST": "127.0.0.1", **extra}
    gunicorn = Path(sys.executable).with_name("gunicorn")
    server = subprocess.Popen([str(gunicorn), "-c", "gunicorn.conf.py", "app:create_app()"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # every worker must answer /ready: ask as often as there are workers
        try:
            if all(get(port, "/ready") == 200 for _ in range(8)):
                return server
        except OSError:
            pass
        if server.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {server.returncode}")
        time.sleep(0.5)
    server.terminate()
    raise RuntimeError("the server did not become ready in 180 s")


def get(port: int, path: str) -> int:
    return fetch(port, path)[0]


def fetch(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def load(port: int, texts: list[str], clients: int, seconds: float, max_requests: int) -> dict[str, Any]:
    """`clients` threads sending one text per request until the time or the request budget runs out."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    issued = iter(range(max_requests))
    stop_at = time.monotonic() + seconds

    def client(offset: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for i in issued:
            if time.monotonic() >= stop_at:
                break
            body = json.dumps({"text": texts[(offset * 7919 + i) % len(texts)]})
            started = time.perf_counter()
            connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            elapsed = time.perf_counter() - started
            with lock:
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if response.status == 200:
                    latencies.append(elapsed)
        connection.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {"clients": clients, "requests": len(latencies), "seconds": elapsed, "req_per_s": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(latencies, 50) * 1000), "p99_ms": float(np.percentile(latencies, 99) * 1000),
            "statuses": {str(k): v for k, v in statuses.items()}}


def main() -> None:
    args = parse_args()
    texts = pd.read_csv(DATA).comment_text.str.slice(0, 1000).sample(2000, random_state=0).tolist()
    checkpoint = str(Path(args.checkpoint).resolve())
    rows = []
    for mode in args.modes:
        server = start_server(checkpoint, args.port, MODES[mode])
        try:
            backend = json.loads(fetch(args.port, "/metadata")[1])["backend"]
            load(args.port, texts, 4, 2.0, 50)  # warm-up
            for clients in args.clients:
                row = {"mode": mode, "backend": backend,
                       **load(args.port, texts, clients, args.seconds, args.max_requests)}
                print(f"  {mode} ({backend}), {clients} clients: {row['req_per_s']:.1f} req/s", file=sys.stderr)
                rows.append(row)
        finally:
            server.terminate()
            server.wait(60)
    record = new_record(machine=machine(), checkpoint=checkpoint, seconds_per_level=args.seconds,
                        server=server_shape(), rows=rows)
    record["goal"] = goal(record)
    print_table(record)
    append_record(RESULTS, record)
    plot(record)


def server_shape() -> dict[str, Any]:
    from serving.settings import ServingSettings

    plain, batched = ServingSettings(), ServingSettings(microbatch=True)
    return {"workers": plain.worker_count(), "torch_threads": plain.torch_threads,
            "threads_per_worker": {"per-request": plain.thread_count(), "microbatch": batched.thread_count()},
            "microbatch_wait_ms": batched.microbatch_wait_ms, "microbatch_max_size": batched.microbatch_max_size}


def goal(record: dict[str, Any]) -> dict[str, Any] | None:
    """The default server against the torch backend at the most clients: >= 1.8x the req/s, p99 no worse."""
    most = max(r["clients"] for r in record["rows"])
    rows = {r["mode"]: r for r in record["rows"] if r["clients"] == most}
    if BASELINE not in rows or DEFAULT not in rows:
        return None
    ratio = rows[DEFAULT]["req_per_s"] / rows[BASELINE]["req_per_s"]
    p99_ratio = rows[DEFAULT]["p99_ms"] / rows[BASELINE]["p99_ms"]
    return {"clients": most, "backend": rows[DEFAULT]["backend"], "req_per_s_ratio": ratio,
            "p99_ratio": p99_ratio, "met": ratio >= 1.8 and p99_ratio <= 1.0}


def print_table(record: dict[str, Any]) -> None:
    shape = record["server"]
    print(f"\n{record['machine']['cpu']}, {record['machine']['cores']} cores; gunicorn {shape['workers']} workers x "
          f"{shape['torch_threads']} intra-op thread(s); {record['seconds_per_level']:.0f} s per level\n")
    print("| clients | mode             | backend          |  req/s | x torch | p50 ms | p99 ms | requests | non-200 |")
    print("|---------|------------------|------------------|--------|---------|--------|--------|----------|---------|")
    base = {r["clients"]: r for r in record["rows"] if r["mode"] == BASELINE}
    for r in sorted(record["rows"], key=lambda r: (r["clients"], list(MODES).index(r["mode"]))):
        ratio = f"{r['req_per_s'] / base[r['clients']]['req_per_s']:7.2f}" if r["clients"] in base else "      -"
        failed = sum(v for k, v in r["statuses"].items() if k != "200")
        print(f"| {r['clients']:7} | {r['mode']:<16} | {r['backend']:<16} | {r['req_per_s']:6.1f} | {ratio} | "
              f"{r['p50_ms']:6.0f} | {r['p99_ms']:6.0f} | {r['requests']:8} | {failed:7} |")
    found = record.get("goal")
    if found:
        print(f"\ngoal (default >= 1.8x torch req/s at {found['clients']} clients, p99 no worse): "
              f"{found['req_per_s_ratio']:.2f}x req/s, p99 {found['p99_ratio']:.2f}x, served by "
              f"{found['backend']}: {'met' if found['met'] else 'missed'}")


def plot(record: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for mode in dict.fromkeys(r["mode"] for r in record["rows"]):
        rows = [r for r in record["rows"] if r["mode"] == mode]
        clients = [r["clients"] for r in rows]
        left.plot(clients, [r["req_per_s"] for r in rows], marker="o", label=mode)
        right.plot(clients, [r["p50_ms"] for r in rows], marker="o", label=f"{mode} p50")
        right.plot(clients, [r["p99_ms"] for r in rows], marker="x", linestyle="--", label=f"{mode} p99")
    for axis, label in ((left, "requests/s"), (right, "latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel(label)
        axis.legend()
    save_figure(fig, f"/predict, one text per request ({record['when']})", PLOT)


if __name__ == "__main__":
    main()
