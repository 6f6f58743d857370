"""The benchmark harness runs end to end at tiny sizes and reports every figure.

No timing is asserted here, ever: the figures depend on the machine and its load.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH = REPO_ROOT / "bench" / "run.py"

SIDE_FIGURES = {"rss_mb", "phases", "sandbox"}
PHASE_FIGURES = {"seconds", "fetched", "requests", "invoices_per_s", "requests_per_s"}
SANDBOX_FIGURES = {"requests", "max_in_flight", "max_requests_per_60s"}
TARGETS = {
    "a_vs_baseline",
    "a_resync_speedup",
    "a_resync_writes",
    "b_vs_baseline",
    "c_invoices_per_s",
    "d_peak_rss_mb",
    "d_rss_growth",
    "e_max_requests_per_60s",
}


def _check_side(report: dict[str, Any], phases: set[str]) -> None:
    assert set(report) >= SIDE_FIGURES
    assert report["rss_mb"] > 0
    assert set(report["phases"]) == phases
    for figures in report["phases"].values():
        assert set(figures) >= PHASE_FIGURES
    assert set(report["sandbox"]) >= SANDBOX_FIGURES


@pytest.mark.slow
def test_quick_benchmark_reports_every_figure(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "results:" in done.stdout
    (path,) = tmp_path.glob("*-quick.json")
    document = json.loads(path.read_text(encoding="utf-8"))

    assert {"nproc", "memory_mb", "cpu", "python"} <= set(document["machine"])
    assert len(document["load_average_before"]) == 3
    scenarios = document["scenarios"]
    assert set(scenarios) == {"a", "b", "c", "d_small", "d_large", "e"}
    for key in ("a", "b"):
        _check_side(scenarios[key]["connector"], {"full", "resync"})
        _check_side(scenarios[key]["baseline"], {"full"})
        assert set(scenarios[key]["ratios"]) == {"invoices_per_s", "requests_per_s", "rss"}
        assert scenarios[key]["resync_speedup"] > 0
    _check_side(scenarios["c"]["connector"], {"full"})
    _check_side(scenarios["c"]["baseline"], {"full"})
    for key in ("d_small", "d_large", "e"):
        _check_side(scenarios[key]["connector"], {"full"})
        assert "baseline" not in scenarios[key]
    # Every invoice the sandbox served was stored or quarantined by both sides.
    for key in ("a", "b", "c"):
        n = scenarios[key]["n"]
        assert scenarios[key]["connector"]["phases"]["full"]["fetched"] == n
        assert scenarios[key]["baseline"]["phases"]["full"]["fetched"] == n
        connector = scenarios[key]["connector"]
        assert connector["stored"] + connector["quarantined"] == n
    # The connector side forks its writer process, and its memory is counted with the rest.
    for key in ("a", "b", "c", "d_small", "d_large", "e"):
        connector = scenarios[key]["connector"]
        assert 0 < connector["writer"]["private_mb"] <= connector["writer"]["rss_mb"]
        assert connector["total_mb"] == connector["rss_mb"] + connector["writer"]["private_mb"]
    assert set(document["targets"]) >= TARGETS
    for found in document["targets"].values():
        assert {"value", "goal", "met"} <= set(found)
