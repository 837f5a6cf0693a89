"""A soak of the documented server on loopback, without and then with slow clients held open:

    python bench/soak.py --checkpoint outputs/bench_cls/checkpoint            # 2 x 300 s
    python bench/soak.py --checkpoint DIR --seconds 5 --clients 2 --slow 10     # the smallest run (tests)

Each phase starts the server afresh (`CHECKPOINT_PATH=... gunicorn -c gunicorn.conf.py "app:create_app()"`) and
runs `--clients` threads that POST one real toxic comment per request over keep-alive connections for
`--seconds`, while a probe asks GET /health once a second on a new connection. It records every answer's status
(and every connection error by name), requests/s and latency p50/p99 of the 200s, the slowest /health, and the
resident memory of all the server's processes at start, after `--warmup` seconds and at the end. The second
phase does the same while `--slow` connections are held open: half send their headers, half their body, one byte
a second, and each one the server closes is opened again. With `--explain-clients N`, both phases also run N
clients sending the costliest /explain the limits accept (bench/fairness.py builds it) in a loop, each waiting out
a 503's or 429's Retry-After; the goals of issue 25 are then checked: no answer but 200 and deliberate 429/503
with Retry-After, resident memory growing less than 10% after the warm-up. The load generator shares the cores
with the server. Prints a table, appends to docs/results/bench_soak.json and draws docs/bench_soak.png.

    python bench/soak.py --checkpoint outputs/run/checkpoint --explain-clients 4     # issue 25's soak
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import selectors
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so that `python bench/soak.py` finds the project's modules
    sys.path.insert(0, str(ROOT))

from bench.api import DATA, start_server  # noqa: E402
from bench.fairness import Answer, Load, unexpected, worst_case_explain  # noqa: E402
from bench.records import append_record, figure_path, machine, new_record, results_path, save_figure  # noqa: E402

RESULTS = results_path("bench_soak.json")
PLOT = figure_path("bench_soak.png")
SAMPLE_SECONDS = 2.0  # memory sampling period
WINDOW_SECONDS = 10.0  # latency percentiles over time, for the plot
RSS_GROWTH_GOAL = 0.10  # after the warm-up, to the end (issue 25)
EXPLAIN_TIMEOUT = 120.0  # an /explain client waits this long: past any deadline, so a late answer is counted


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--checkpoint", default="outputs/bench_cls/checkpoint")
    parser.add_argument("--seconds", type=float, default=300.0, help="Load time of each phase.")
    parser.add_argument("--clients", type=int, default=32, help="Concurrent clients sending /predict.")
    parser.add_argument("--slow", type=int, default=200, help="Slow connections held open in the second phase.")
    parser.add_argument("--warmup", type=float, default=60.0,
                        help="Memory growth is measured from this many seconds into the load to its end.")
    parser.add_argument("--explain-clients", type=int, default=0,
                        help="Clients sending the costliest legal /explain in a loop, in both phases.")
    parser.add_argument("--port", type=int, default=18941)
    return parser.parse_args(argv)


# --- what the server holds -------------------------------------------------------------------------------------


def process_tree(root: int) -> list[int]:
    """`root` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def resident_mib(root: int) -> float:
    """Resident memory of `root` and its descendants, in MiB."""
    total_kib = 0
    for pid in process_tree(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total_kib += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total_kib / 1024


# --- clients ---------------------------------------------------------------------------------------------------


class SlowClients:
    """`count` connections that each send one request a byte every `interval` seconds: half of them their headers
    (which never end), half a body of a declared 100 kB. A connection the server answers or closes is opened again,
    so that `count` stay open; `statuses` counts the server's answers to them (408 when it cuts one off)."""

    HEAD = b"POST /predict HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"

    def __init__(self, port: int, count: int, interval: float = 1.0) -> None:
        self.port, self.count, self.interval = port, count, interval
        self.statuses: Counter[str] = Counter()
        self.opened = 0
        self.selector = selectors.DefaultSelector()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)

    def __enter__(self) -> SlowClients:
        self.thread.start()
        deadline = time.monotonic() + 30
        while self.open_now() < self.count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(10)
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]

    def open_now(self) -> int:
        return len(self.selector.get_map())

    def _open(self, index: int) -> None:
        connection = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        if index % 2:  # slow headers: a header line that never ends
            connection.sendall(self.HEAD + b"X-Padding: ")
        else:  # slow body: complete headers, then the body
            connection.sendall(self.HEAD + b"Content-Length: 100000\r\n\r\n")
        connection.setblocking(False)
        self.selector.register(connection, selectors.EVENT_READ, index)
        self.opened += 1

    def _run(self) -> None:
        next_byte = time.monotonic()
        while not self.stopping.is_set():
            for _ in range(self.count - self.open_now()):
                try:
                    self._open(self.opened)
                except OSError as error:
                    self.statuses[type(error).__name__] += 1
            for key, _ in self.selector.select(timeout=0.1):  # the server answered or closed: open another
                self._closed_by_server(key.fileobj)  # type: ignore[arg-type]
            if time.monotonic() >= next_byte:
                next_byte += self.interval
                for key in list(self.selector.get_map().values()):
                    try:
                        key.fileobj.send(b"a")  # type: ignore[union-attr]
                    except OSError:
                        self._closed_by_server(key.fileobj)  # type: ignore[arg-type]

    def _closed_by_server(self, connection: socket.socket) -> None:
        try:
            answer = connection.recv(64)
            status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "closed"
        except OSError as error:
            status = type(error).__name__
        self.statuses[status] += 1
        self.selector.unregister(connection)
        connection.close()


def load(port: int, texts: list[str], clients: int, seconds: float) -> list[tuple[float, float, str]]:
    """(time since start, latency, status or error name) of every /predict request of `clients` threads."""
    answers: list[tuple[float, float, str]] = []
    lock = threading.Lock()
    started = time.monotonic()
    stop_at = started + seconds

    def client(offset: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = offset
        while time.monotonic() < stop_at:
            body = json.dumps({"text": texts[(i * 7919) % len(texts)]})
            sent = time.monotonic()
            try:
                connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                status = str(response.status)
                if response.status in (429, 503) and response.getheader("Retry-After") is None:
                    status = f"{response.status} without Retry-After"
            except (OSError, http.client.HTTPException) as error:
                status = type(error).__name__
                connection.close()
            with lock:
                answers.append((sent - started, time.monotonic() - sent, status))
            i += clients

        connection.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


class Sampler(threading.Thread):
    """Every `period` seconds, call `measure` and keep (time since start, value)."""

    def __init__(self, measure: Any, period: float) -> None:
        super().__init__(daemon=True)
        self.measure, self.period = measure, period
        self.samples: list[tuple[float, float]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while not self.stopping.is_set():
            self.samples.append((time.monotonic() - started, self.measure()))
            self.stopping.wait(self.period)

    def stop(self) -> list[tuple[float, float]]:
        self.stopping.set()
        self.join()
        return self.samples


def health_seconds(port: int) -> float:
    """How long GET /health takes on a new connection (60 when it does not answer 200 within 10 s)."""
    started = time.monotonic()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/health")
        ok = connection.getresponse().status == 200
        connection.close()
    except (OSError, http.client.HTTPException):
        ok = False
    return time.monotonic() - started if ok else 60.0


# --- one phase, the whole run ----------------------------------------------------------------------------------


def explain_clients(args: argparse.Namespace, body: dict[str, Any] | None) -> Load | None:
    """The --explain-clients threads, sending `body` for as long as the /predict load runs; None without them."""
    if body is None or not args.explain_clients:
        return None
    clients = Load(args.port, args.seconds, sys.maxsize, EXPLAIN_TIMEOUT)
    return clients.start(clients.explain_client, args.explain_clients, body)


def explain_body(checkpoint: str, texts: list[str]) -> dict[str, Any]:
    """The costliest /explain that the limits of this environment, which the server inherits, accept."""
    from inferer import ModelInferer
    from serving.settings import ServingSettings

    limits = ServingSettings().model_dump(include={"max_request_cost", "max_explain_texts", "max_chars",
                                                   "max_body_bytes"})
    return worst_case_explain(ModelInferer(checkpoint), limits, texts)[0]


def run_phase(name: str, args: argparse.Namespace, texts: list[str], slow: int,
              explain: dict[str, Any] | None) -> dict[str, Any]:
    server = start_server(str(Path(args.checkpoint).resolve()), args.port, {})
    slow_clients = SlowClients(args.port, slow)
    try:
        memory = Sampler(lambda: resident_mib(server.pid), SAMPLE_SECONDS)
        at_start = resident_mib(server.pid)
        with slow_clients if slow else contextlib.nullcontext():
            memory.start()
            health = Sampler(lambda: health_seconds(args.port), 1.0)
            health.start()
            explaining = explain_clients(args, explain)
            answers = load(args.port, texts, args.clients, args.seconds)
            explained = explaining.join() if explaining is not None else []
            health_samples = health.stop()
            memory_samples = memory.stop()
            held = slow_clients.open_now()
    finally:
        server.terminate()
        server.wait(60)
    record = phase_record(name, args, answers, at_start, memory_samples, health_samples, slow, held,
                          dict(slow_clients.statuses), slow_clients.opened)
    return record | explain_record(args, explained, record)


def phase_record(name: str, args: argparse.Namespace, answers: list[tuple[float, float, str]], at_start: float,
                 memory: list[tuple[float, float]], health: list[tuple[float, float]], slow: int, held: int,
                 slow_statuses: dict[str, int], slow_opened: int) -> dict[str, Any]:
    ok = np.array([latency for _, latency, status in answers if status == "200"])
    warmup = min(args.warmup, args.seconds / 2)
    after_warmup = min(memory, key=lambda sample: abs(sample[0] - warmup))[1]
    at_end = memory[-1][1]
    windows = []
    for start in np.arange(0, args.seconds, WINDOW_SECONDS):
        inside = [lat for t, lat, status in answers if start <= t < start + WINDOW_SECONDS and status == "200"]
        if inside:
            windows.append((float(start), float(np.percentile(inside, 50) * 1000),
                            float(np.percentile(inside, 99) * 1000)))
    return {
        "phase": name, "slow_connections": slow, "slow_connections_open_at_end": held,
        "slow_connections_opened": slow_opened, "slow_connection_answers": slow_statuses,
        "requests": len(answers), "statuses": dict(Counter(status for _, _, status in answers)),
        "req_per_s": len(ok) / args.seconds,
        "p50_ms": float(np.percentile(ok, 50) * 1000) if len(ok) else None,
        "p99_ms": float(np.percentile(ok, 99) * 1000) if len(ok) else None,
        "health_max_ms": max(seconds for _, seconds in health) * 1000 if health else None,
        "health_probes": len(health),
        "rss_mib": {"start": at_start, f"after_{warmup:g}s": after_warmup, "end": at_end},
        "rss_growth_after_warmup": (at_end - after_warmup) / after_warmup,
        "rss_series": memory, "latency_windows": windows,
    }


def explain_record(args: argparse.Namespace, explained: list[Answer], phase: dict[str, Any]) -> dict[str, Any]:
    """The /explain clients' answers, and issue 25's goals for the phase: no answer of either route but 200 and
    deliberate 429/503 with Retry-After, memory growing less than RSS_GROWTH_GOAL after the warm-up."""
    statuses = dict(Counter(status for *_, status in explained))
    surprises = Counter(unexpected(phase["statuses"])) + Counter(unexpected(statuses))
    return {"explain_clients": args.explain_clients, "explain_requests": len(explained),
            "explain_statuses": statuses,
            "explain_max_ms": max(latency for _, _, latency, _ in explained) * 1000 if explained else None,
            "unexpected": dict(surprises),
            "goals": {"no_unexpected_answers": not surprises,
                      "rss_growth_under_goal": phase["rss_growth_after_warmup"] < RSS_GROWTH_GOAL}}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    texts = pd.read_csv(DATA).comment_text.str.slice(0, 1000).sample(2000, random_state=0).tolist()
    explain = explain_body(str(Path(args.checkpoint).resolve()), texts) if args.explain_clients else None
    phases = [run_phase("plain", args, texts, 0, explain), run_phase("slow clients", args, texts, args.slow, explain)]
    from serving.settings import ServingSettings

    settings = ServingSettings()
    record = new_record(machine=machine(), checkpoint=str(Path(args.checkpoint).resolve()), seconds=args.seconds,
                        clients=args.clients, explain_clients=args.explain_clients,
                        warmup=min(args.warmup, args.seconds / 2),
                        server={"workers": settings.worker_count(), "threads": settings.thread_count(),
                                "torch_threads": settings.torch_threads, "header_timeout": settings.header_timeout,
                                "body_timeout": settings.body_timeout, "max_connections": settings.max_connections},
                        phases=phases)
    print_table(record)
    append_record(RESULTS, record)
    plot(record)


def print_table(record: dict[str, Any]) -> None:
    shape = record["server"]
    print(f"\n{record['machine']['cpu']}, {record['machine']['cores']} cores; gunicorn {shape['workers']} workers x "
          f"{shape['threads']} threads; {record['clients']} clients, {record['seconds']:.0f} s per phase\n")
    print("| phase | req/s | p50 ms | p99 ms | answers | slowest /health ms | RSS MiB start / "
          f"{record['warmup']:g} s / end | growth after {record['warmup']:g} s |")
    print("|---|---|---|---|---|---|---|---|")
    for phase in record["phases"]:
        rss = list(phase["rss_mib"].values())
        answers = ", ".join(f"{status}: {count}" for status, count in sorted(phase["statuses"].items()))
        print(f"| {phase['phase']} ({phase['slow_connections']} slow) | {phase['req_per_s']:.1f} | "
              f"{phase['p50_ms']:.0f} | {phase['p99_ms']:.0f} | {answers} | {phase['health_max_ms']:.0f} | "
              f"{rss[0]:.0f} / {rss[1]:.0f} / {rss[2]:.0f} | {phase['rss_growth_after_warmup']:+.1%} |")
    for phase in record["phases"]:
        if phase["explain_clients"]:
            answers = ", ".join(f"{status}: {count}" for status, count in sorted(phase["explain_statuses"].items()))
            print(f"\n{phase['phase']}: /explain of {phase['explain_clients']} clients: {answers}; slowest "
                  f"{phase['explain_max_ms'] or 0:.0f} ms")
        goals = ", ".join(f"{goal} {'met' if met else 'MISSED'}" for goal, met in phase["goals"].items())
        print(f"{phase['phase']}: unexpected answers {phase['unexpected'] or 'none'}; {goals}")


def plot(record: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for phase in record["phases"]:
        label = f"{phase['phase']} ({phase['slow_connections']} slow)"
        times, rss = zip(*phase["rss_series"], strict=True)
        left.plot(times, rss, label=label)
        if phase["latency_windows"]:
            starts, p50, p99 = zip(*phase["latency_windows"], strict=True)
            right.plot(starts, p50, marker="o", label=f"{label} p50")
            right.plot(starts, p99, marker="x", linestyle="--", label=f"{label} p99")
    left.set(xlabel="seconds into the load", ylabel="resident memory, all processes (MiB)")
    right.set(xlabel="seconds into the load", ylabel=f"/predict latency per {WINDOW_SECONDS:g} s (ms)")
    for axis in (left, right):
        axis.legend(fontsize=7)
    save_figure(fig, f"Soak, {record['clients']} clients ({record['when']})", PLOT)


if __name__ == "__main__":
    main()
