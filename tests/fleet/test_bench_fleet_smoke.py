"""The fleet benchmark keeps working: ``benchmarks/bench_fleet.py --quick`` on SQLite.

It runs all three parts at their smallest (a hundred simulated devices with real keys
enrolling and reporting to a real fleet service, the dashboard and ``fleet devices`` pages
over a bulk-loaded fleet, a bad release that must halt itself) and checks what they did,
never how fast: the speeds are the benchmark's business, in benchmarks/results/fleet.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_quick_run_measures_all_three_parts(tmp_path: Path) -> None:
    out = tmp_path / "fleet.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_fleet.py"), "--quick",
         "--backends", "sqlite", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=280,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert len(result["load_average_before"]) == 3 and len(result["load_average_after"]) == 3

    ingest = result["ingest"]["sqlite"]
    assert ingest["accepted"] == ingest["reports"] == ingest["devices"] == ingest["stored"]
    assert ingest["reports_per_s"] > 0 and ingest["raw_inserts_per_s"] > 0
    assert ingest["latency_p50_ms"] <= ingest["latency_p99_ms"]
    assert ingest["server_cpu_ms_per_report"] > 0

    pages = result["pages"]["sqlite"]
    for page in ("overview", "devices_page", "cli_devices_page"):
        assert pages[page]["requests"] > 0
        assert 0 < pages[page]["p50_ms"] <= pages[page]["p95_ms"]
    assert pages["cli_devices_command"]["devices"] == pages["devices"]

    rollout = result["rollout"]["sqlite"]
    # one hardware class of four fails the release's health gate: it must halt itself
    assert rollout["state"] == "halted", rollout
    assert rollout["halt_rule"] == "failure-share"
    assert rollout["events"] == ["started", "halted"]
    assert 0 < rollout["ever_installed"] <= rollout["first_stage_devices"]
    assert rollout["crossing_to_halt_s"] is not None
