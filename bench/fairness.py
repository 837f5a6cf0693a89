"""Mixed load on the documented server, for issue 25 ("no request can starve the others"): /predict latency with
and without clients sending the costliest /explain that the server's limits accept, on loopback.

    python bench/fairness.py --checkpoint outputs/run/checkpoint     # 16 /predict + 4 /explain clients, 2 x 120 s
    python bench/fairness.py --checkpoint DIR --seconds 2 --predict-clients 2 --explain-clients 1 \\
        --max-requests 40 --solo-repeats 1                           # the smallest run (tests)

Starts the server once with the README's command (`CHECKPOINT_PATH=... gunicorn -c gunicorn.conf.py
"app:create_app()"`, settings from this environment) and builds, from its limits (/metadata) and the checkpoint's
own pricing (serving/costs.py `explain_cost`, `predict_cost`), the worst-case legal requests: /explain of
MAX_EXPLAIN_TEXTS texts made of real toxic comments, every label asked, filled up to MAX_REQUEST_COST; /predict of
as many long texts as MAX_TEXTS, MAX_TOKENS, MAX_BODY_BYTES and MAX_REQUEST_COST let in. Then, one after the other:
1. solo: each worst-case request alone, `--solo-repeats` times: its latency is its model time (goal: 10 s at most);
2. predict only: `--predict-clients` threads POSTing one real comment per request over keep-alive connections;
3. mixed: the same, plus `--explain-clients` threads sending the worst-case /explain in a loop, each on a new
   connection (so that they spread over the workers) and waiting out the Retry-After of a 503 or 429, as a client
   that reads the answer would (one that does not is what RATE_LIMIT is for).
Each phase lasts `--seconds` or `--max-requests` requests, whichever ends first, plus what is in flight then.
Reports /predict p50/p99 in phases 2 and 3 and the ratio of the p99s (goal: at most 2), every request's latency
against its deadline, REQUEST_TIMEOUT + 1 s (goal: none over), and the answers by status and error code per route.
The load generator shares the cores with the server. Prints a table, appends to docs/results/bench_fairness.json.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so that `python bench/fairness.py` finds the project's modules
    sys.path.insert(0, str(ROOT))

from bench.api import DATA, fetch, start_server  # noqa: E402
from bench.records import append_record, machine, new_record, results_path  # noqa: E402

RESULTS = results_path("bench_fairness.json")
P99_RATIO_GOAL = 2.0  # /predict p99 with the explain clients, over its p99 without
DEADLINE_SLACK = 1.0  # seconds past REQUEST_TIMEOUT that any answer may take
MODEL_SECONDS_GOAL = 10.0  # the longest an accepted request may hold the model
DELIBERATE = ("429", "503")  # refusals that carry Retry-After: the server shedding load on purpose
Answer = tuple[str, float, float, str]  # route, seconds since the phase began, latency, status (and error code)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--checkpoint", default="outputs/run/checkpoint")
    parser.add_argument("--predict-clients", type=int, default=16, help="Clients sending /predict.")
    parser.add_argument("--explain-clients", type=int, default=4, help="Clients sending the costliest /explain.")
    parser.add_argument("--seconds", type=float, default=120.0, help="Load time of each phase.")
    parser.add_argument("--max-requests", type=int, default=40_000, help="Request cap of each phase.")
    parser.add_argument("--solo-repeats", type=int, default=2, help="Times each worst-case request runs alone.")
    parser.add_argument("--port", type=int, default=18951)
    return parser.parse_args(argv)


# --- the worst-case legal requests -----------------------------------------------------------------------------


def comments(count: int = 2000) -> list[str]:
    """Real toxic comments (the first 1,000 characters of each), in a fixed random order."""
    return pd.read_csv(DATA).comment_text.str.slice(0, 1000).sample(count, random_state=0).tolist()


def long_text(source: list[str], start: int, chars: int) -> str:
    """Comments from `start` on, joined by spaces and cut to `chars` characters at a word's end."""
    parts: list[str] = []
    for comment in itertools.islice(itertools.cycle(source), start, None):
        if comment.split():  # one space between words: the words are what bisection counts
            parts.append(" ".join(comment.split()))
        if sum(len(part) + 1 for part in parts) > chars:
            break
    return " ".join(parts)[:chars].rsplit(" ", 1)[0]


def longest_prefix(text: str, fits: Callable[[str], bool]) -> str:
    """The most words from the start of `text` that `fits` (a cost that grows with the words): bisection."""
    words = text.split(" ")
    low, high = 0, len(words)
    while low < high:
        middle = (low + high + 1) // 2
        if fits(" ".join(words[:middle])):
            low = middle
        else:
            high = middle - 1
    return " ".join(words[:low])


def worst_case_explain(inferer: Any, limits: dict[str, Any], source: list[str]) -> tuple[dict[str, Any], int]:
    """The costliest /explain under the limits: MAX_EXPLAIN_TEXTS texts, every label, each text the longest that
    fits what MAX_REQUEST_COST has left. Its body and its cost."""
    from serving.costs import explain_cost

    labels, costs, texts = list(inferer.label_names), [], []

    def fits(text: str, left: int) -> bool:
        body = {"texts": [*texts, text], "labels": labels}
        return (bool(text) and len(json.dumps(body).encode()) <= limits["max_body_bytes"]
                and explain_cost(inferer, text, len(labels)) <= left)

    for index in range(limits["max_explain_texts"]):
        left = limits["max_request_cost"] - sum(costs)
        text = longest_prefix(long_text(source, index * 101, limits["max_chars"]), lambda t, left=left: fits(t, left))
        if not text:
            break
        texts.append(text)
        costs.append(explain_cost(inferer, text, len(labels)))
    return {"texts": texts, "labels": labels}, sum(costs)


def worst_case_predict(inferer: Any, limits: dict[str, Any], source: list[str]) -> tuple[dict[str, Any], int]:
    """The costliest /predict under the limits: the most texts, each as long as the body limit lets them be."""
    from serving.costs import predict_cost, token_counts

    chars = min(limits["max_chars"], limits["max_body_bytes"] // limits["max_texts"] - 64)
    texts = [long_text(source, index * 101, chars) for index in range(limits["max_texts"])]
    while texts:
        body = {"texts": texts}
        if (len(json.dumps(body).encode()) <= limits["max_body_bytes"]
                and sum(token_counts(inferer, texts)) <= limits["max_tokens"]
                and predict_cost(inferer, texts) <= limits["max_request_cost"]):
            return body, predict_cost(inferer, texts)
        texts = texts[:-1]
    raise ValueError("no /predict fits these limits")


def worst_cases(checkpoint: str, limits: dict[str, Any], source: list[str]) -> dict[str, dict[str, Any]]:
    """Both worst-case requests, priced by the checkpoint the server serves (its tokenizer, its TF-IDF member)."""
    from inferer import ModelInferer

    inferer = ModelInferer(checkpoint)
    explain, explain_work = worst_case_explain(inferer, limits, source)
    predict, predict_work = worst_case_predict(inferer, limits, source)
    return {"/explain": {"body": explain, "cost": explain_work},
            "/predict": {"body": predict, "cost": predict_work}}


# --- clients ---------------------------------------------------------------------------------------------------


def send(connection: http.client.HTTPConnection, path: str, body: dict[str, Any]) -> tuple[str, int | None]:
    """POST one JSON body: ("200" or "STATUS code", its Retry-After); a connection error by its name."""
    try:
        connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException) as error:
        connection.close()
        return type(error).__name__, None
    if response.status == 200:
        return "200", None
    try:
        code = json.loads(data)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = "not JSON"
    retry_after = response.getheader("Retry-After")
    status = f"{response.status} {code}"
    if str(response.status) in DELIBERATE and retry_after is None:
        status += " without Retry-After"
    return status, int(retry_after) if retry_after and retry_after.isdigit() else None


class Load:
    """Client threads sharing a stop time and a request budget, each answer recorded."""

    def __init__(self, port: int, seconds: float, max_requests: int, timeout: float) -> None:
        self.port, self.timeout, self.max_requests = port, timeout, max_requests
        self.started = time.monotonic()
        self.stop_at = self.started + seconds
        self.issued = itertools.count()
        self.answers: list[Answer] = []
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def more(self) -> bool:
        return time.monotonic() < self.stop_at and next(self.issued) < self.max_requests

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)

    def timed(self, connection: http.client.HTTPConnection, path: str, body: dict[str, Any]) -> tuple[str, int | None]:
        sent = time.monotonic()
        status, retry_after = send(connection, path, body)
        with self.lock:
            self.answers.append((path, sent - self.started, time.monotonic() - sent, status))
        return status, retry_after

    def predict_client(self, bodies: Iterator[dict[str, Any]]) -> None:
        connection = self.connection()  # kept alive, as an application's client would
        while self.more():
            self.timed(connection, "/predict", next(bodies))
        connection.close()

    def explain_client(self, body: dict[str, Any]) -> None:
        while self.more():
            connection = self.connection()  # a new one each time, so that the clients spread over the workers
            _, retry_after = self.timed(connection, "/explain", body)
            connection.close()
            if retry_after is not None:
                time.sleep(max(0.0, min(retry_after, self.stop_at - time.monotonic())))

    def start(self, target: Callable[..., None], count: int, *args: Any) -> Load:
        for _ in range(count):
            self.threads.append(threading.Thread(target=target, args=args, daemon=True))
            self.threads[-1].start()
        return self

    def join(self) -> list[Answer]:
        for thread in self.threads:
            thread.join()
        return self.answers


def predict_bodies(texts: list[str], offset: int) -> Iterator[dict[str, Any]]:
    """One real comment per request, each client from its own place in the list."""
    for index in itertools.count(offset * 7919):
        yield {"text": texts[index % len(texts)]}


# --- phases, summary, the whole run ----------------------------------------------------------------------------


def run_load(args: argparse.Namespace, texts: list[str], explain_body: dict[str, Any] | None,
             timeout: float) -> list[Answer]:
    """One phase: the /predict clients, and the /explain clients when there is a body for them."""
    load = Load(args.port, args.seconds, args.max_requests, timeout)
    if explain_body is not None:  # first, so that a small request budget cannot be spent before they start
        load.start(load.explain_client, args.explain_clients, explain_body)
    for client in range(args.predict_clients):
        load.start(load.predict_client, 1, predict_bodies(texts, client))
    return load.join()


def warm_up(port: int, texts: list[str]) -> None:
    """A few /predict before measuring: a worker's first passes of a new shape allocate."""
    load = Load(port, 2.0, 50, 30.0)
    for client in range(4):
        load.start(load.predict_client, 1, predict_bodies(texts, client))
    load.join()


def solo(args: argparse.Namespace, worst: dict[str, dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
    """Each worst-case request alone on the server, one at a time: its latency is its model time."""
    rows = []
    for path, request in worst.items():
        for _ in range(args.solo_repeats):
            load = Load(args.port, float("inf"), 1, timeout)
            connection = load.connection()
            status, _ = load.timed(connection, path, request["body"])
            connection.close()
            rows.append({"route": path, "cost": request["cost"], "status": status, "seconds": load.answers[0][2]})
    return rows


def summarize(answers: list[Answer], deadline: float) -> dict[str, Any]:
    """Per route: answers by status, latency of the 200s, the slowest answer and those past the deadline; the rate
    over the phase as it ran (to its last answer: the request cap may end it before --seconds)."""
    routes: dict[str, Any] = {}
    seconds = max((sent + latency for _, sent, latency, _ in answers), default=1.0)
    for path in sorted({answer[0] for answer in answers}):
        mine = [answer for answer in answers if answer[0] == path]
        ok = np.array([latency for _, _, latency, status in mine if status == "200"])
        routes[path] = {
            "requests": len(mine), "statuses": dict(Counter(status for *_, status in mine)),
            "ok_per_s": len(ok) / seconds,
            "p50_ms": float(np.percentile(ok, 50) * 1000) if len(ok) else None,
            "p99_ms": float(np.percentile(ok, 99) * 1000) if len(ok) else None,
            "max_ms": max(latency for _, _, latency, _ in mine) * 1000,
            "past_deadline": sum(latency > deadline for _, _, latency, _ in mine),
        }
    return routes


def unexpected(statuses: dict[str, int]) -> dict[str, int]:
    """The answers other than 200 and deliberate refusals (429 or 503 with Retry-After): other errors, 5xx,
    connection errors."""
    return {status: count for status, count in statuses.items()
            if status != "200" and not (status.split()[0] in DELIBERATE and not status.endswith("Retry-After"))}


def goals(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 25's goals, each with the measured figure."""
    alone, mixed = (record["phases"][name].get("/predict", {}).get("p99_ms") for name in ("predict only", "mixed"))
    ratio = mixed / alone if alone and mixed else None
    latencies = [row["seconds"] for row in record["solo"]] + [
        route["max_ms"] / 1000 for phase in record["phases"].values() for route in phase.values()]
    # None when a worst-case request was refused: the pricing here and the server's disagree
    model = max(row["seconds"] for row in record["solo"]) if all(r["status"] == "200" for r in record["solo"]) else None
    surprises: Counter[str] = Counter()
    for phase in record["phases"].values():
        for route in phase.values():
            surprises.update(unexpected(route["statuses"]))
    return [
        {"goal": f"/predict p99 with the explain clients within {P99_RATIO_GOAL:g}x of without", "measured": ratio,
         "met": ratio is not None and ratio <= P99_RATIO_GOAL},
        {"goal": f"no request past its deadline + {DEADLINE_SLACK:g} s ({record['deadline_s']:g} s)",
         "measured": max(latencies), "met": max(latencies) <= record["deadline_s"]},
        {"goal": f"a worst-case request alone within {MODEL_SECONDS_GOAL:g} s of model time", "measured": model,
         "met": model is not None and model <= MODEL_SECONDS_GOAL},
        {"goal": "no answer but 200 and deliberate 429/503 with Retry-After", "measured": dict(surprises),
         "met": not surprises},
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    texts = comments()
    checkpoint = str(Path(args.checkpoint).resolve())
    server = start_server(checkpoint, args.port, {})
    try:
        limits = json.loads(fetch(args.port, "/metadata")[1])["limits"]
        deadline = limits["request_timeout"] + DEADLINE_SLACK
        worst = worst_cases(checkpoint, limits, texts)
        timeout = deadline + 30  # the client waits past the deadline, so that a late answer is measured, not lost
        warm_up(args.port, texts)
        solo_rows = solo(args, worst, timeout)
        phases = {name: summarize(run_load(args, texts, body, timeout), deadline)
                  for name, body in (("predict only", None), ("mixed", worst["/explain"]["body"]))}
    finally:
        server.terminate()
        server.wait(60)
    record = new_record(machine=machine(), checkpoint=checkpoint, limits=limits, deadline_s=deadline,
                        predict_clients=args.predict_clients, explain_clients=args.explain_clients,
                        seconds=args.seconds, max_requests=args.max_requests, server=server_shape(),
                        worst_case={path: describe(request) for path, request in worst.items()},
                        solo=solo_rows, phases=phases)
    record["goals"] = goals(record)
    print_table(record)
    append_record(RESULTS, record)
    return record


def describe(request: dict[str, Any]) -> dict[str, Any]:
    """A worst-case request in figures (its texts themselves are not kept: up to a MiB of them)."""
    texts = request["body"]["texts"]
    return {"cost": request["cost"], "texts": len(texts), "longest_text_chars": max(map(len, texts)),
            "words": sum(len(text.split()) for text in texts), "labels": len(request["body"].get("labels") or [])}


def server_shape() -> dict[str, Any]:
    from serving.settings import ServingSettings

    settings = ServingSettings()  # the server's: it was started with this environment
    return {"workers": settings.worker_count(), "threads": settings.thread_count(),
            "torch_threads": settings.torch_threads, "explain_places": settings.explain_places(),
            "rate_limit": settings.rate_limit, "backend": settings.backend}


def print_table(record: dict[str, Any]) -> None:
    shape = record["server"]
    print(f"\n{record['machine']['cpu']}, {record['machine']['cores']} cores; gunicorn {shape['workers']} workers x "
          f"{shape['threads']} threads; {record['predict_clients']} /predict + {record['explain_clients']} /explain "
          f"clients, {record['seconds']:g} s per phase; deadline + slack {record['deadline_s']:g} s\n")
    for row in record["solo"]:
        print(f"alone: {row['route']} of cost {row['cost']}: {row['seconds']:.2f} s ({row['status']})")
    print("\n| phase | route | answers | ok/s | p50 ms | p99 ms | max ms | past deadline |")
    print("|---|---|---|---|---|---|---|---|")
    for name, phase in record["phases"].items():
        for path, route in phase.items():
            answers = ", ".join(f"{status}: {count}" for status, count in sorted(route["statuses"].items()))
            p50, p99 = (f"{route[key]:.0f}" if route[key] is not None else "-" for key in ("p50_ms", "p99_ms"))
            print(f"| {name} | {path} | {answers} | {route['ok_per_s']:.1f} | {p50} | {p99} | "
                  f"{route['max_ms']:.0f} | {route['past_deadline']} |")
    print("\n| goal | measured | met |\n|---|---|---|")
    for goal in record["goals"]:
        measured = goal["measured"]
        shown = f"{measured:.2f}" if isinstance(measured, float) else str(measured)
        print(f"| {goal['goal']} | {shown} | {'yes' if goal['met'] else 'no'} |")


if __name__ == "__main__":
    main()
