"""bench/soak.py at its smallest size: two real servers on loopback, a few seconds of load each, the second with
slow connections held open; the record it appends and the plot it draws go to $BENCH_OUTPUT_DIR."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_server import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_soak_at_its_smallest_size_records_both_phases_and_the_explain_clients(multilabel_checkpoint, tmp_path):
    """One soak run: both phases, with an explain client whose answers are counted against issue 25's goals."""
    # one torch worker a server (as test_bench's API and fairness runs): two fewer model loads on a 2-core runner
    env = os.environ | {"BENCH_OUTPUT_DIR": str(tmp_path), "WORKERS": "1"}
    result = subprocess.run([sys.executable, "bench/soak.py", "--checkpoint", str(multilabel_checkpoint),
                             "--seconds", "4", "--clients", "2", "--slow", "10", "--warmup", "2",
                             "--explain-clients", "1", "--port", str(free_port())], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    (record,) = json.loads((tmp_path / "bench_soak.json").read_text())
    assert (tmp_path / "bench_soak.png").stat().st_size > 10_000
    assert record["clients"] == 2 and record["seconds"] == 4 and record["warmup"] == 2
    plain, slow = record["phases"]
    assert (plain["slow_connections"], slow["slow_connections"]) == (0, 10)
    assert slow["slow_connections_open_at_end"] == 10  # held open the whole time
    for phase in (plain, slow):
        assert set(phase["statuses"]) == {"200"} and phase["requests"] == phase["statuses"]["200"] > 0
        assert phase["req_per_s"] == phase["requests"] / 4
        assert 0 < phase["p50_ms"] <= phase["p99_ms"]
        assert phase["health_probes"] >= 3 and phase["health_max_ms"] < 1000
        assert set(phase["rss_mib"]) == {"start", "after_2s", "end"}
        assert all(value > 100 for value in phase["rss_mib"].values())  # a worker with torch: well over it
        assert len(phase["rss_series"]) >= 2
    assert "| plain (0 slow) |" in result.stdout and "| slow clients (10 slow) |" in result.stdout
    assert record["explain_clients"] == 1
    for phase in (plain, slow):
        assert phase["explain_clients"] == 1 and phase["explain_requests"] > 0
        assert phase["explain_statuses"].get("200", 0) > 0 and phase["explain_max_ms"] > 0
        assert phase["unexpected"] == {} and phase["goals"]["no_unexpected_answers"] is True
        assert isinstance(phase["goals"]["rss_growth_under_goal"], bool)  # a 4 s run is all warm-up: not judged
    assert "/explain of 1 clients: 200:" in result.stdout and "unexpected answers none" in result.stdout
