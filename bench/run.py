"""Benchmark: the connector against a naive baseline, on the local sandbox, in one run.

    .venv/bin/python bench/run.py            # every scenario, full sizes (a few minutes)
    .venv/bin/python bench/run.py --quick    # tiny sizes: a smoke test of the harness

The sandbox runs as a subprocess (its own GIL); each measured side runs in a process of its own
(`bench/workers.py`) and reports its own peak RSS. The connector runs with its default settings
(the defaults are the product); the detail scenarios also measure the sandbox's own capacity
with a raw concurrent client in the same run. Results go to
bench/results/<date>-<HHMM>-<machine>.json plus a table on stdout. Targets are reported, never
asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
WORKERS = BENCH_DIR / "workers.py"
DIALECT = "meditrak_import"
# The raw client's requests in flight when it measures the sandbox's capacity: far more than
# the sandbox can serve at once at any latency the scenarios use.
CAPACITY_CONCURRENCY = 128
SANDBOX_START_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    n: int
    latency_ms: float
    fetch_detail: bool
    page_size: int
    with_baseline: bool = True
    with_capacity: bool = False
    resync: bool = False
    requests_per_minute: int | None = None


def scenarios(quick: bool) -> list[Scenario]:
    def size(full: int, small: int) -> int:
        return small if quick else full

    return [
        # Quick sizes repeat so that scenarios share the few sandboxes they need.
        Scenario(
            "a",
            "detail per invoice, 0 ms",
            size(20_000, 300),
            0,
            True,
            100,
            resync=True,
            with_capacity=True,
        ),
        Scenario(
            "b",
            "detail per invoice, 20 ms",
            size(2_000, 40),
            20,
            True,
            100,
            resync=True,
            with_capacity=True,
        ),
        Scenario("c", "list only", size(100_000, 1_000), 0, False, 500),
        Scenario(
            "d_small", "memory, list only", size(10_000, 300), 0, False, 500, with_baseline=False
        ),
        Scenario(
            "d_large", "memory, list only", size(100_000, 1_000), 0, False, 500, with_baseline=False
        ),
        # A rate limit that binds: the second half of the requests must wait for the window.
        Scenario(
            "e",
            "rate limit, detail per invoice",
            size(500, 300),
            0,
            True,
            100,
            with_baseline=False,
            requests_per_minute=400 if not quick else 1_000,
        ),
    ]


# ----------------------------------------------------------------------------- the sandbox


def _admin(url: str, path: str, *, post: bool = False) -> dict[str, Any]:
    root = url.rsplit("/api/", 1)[0]
    request = urllib.request.Request(f"{root}/_sandbox/{path}", method="POST" if post else "GET")
    with urllib.request.urlopen(request, timeout=30) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def connector_command() -> list[str]:
    executable = Path(sys.executable).with_name("connector")
    return [str(executable)] if executable.exists() else [sys.executable, "-m", "connector"]


@contextmanager
def sandbox(n: int, latency_ms: float) -> Iterator[str]:
    """A sandbox subprocess serving `n` meditrak_import invoices; yields the API URL."""
    command = [
        *connector_command(),
        "sandbox",
        "--port",
        "0",
        "--json",
        "-n",
        str(n),
        "--latency-ms",
        str(latency_ms),
        "--vendor",
        DIALECT,
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + SANDBOX_START_TIMEOUT_S
        line = ""
        while time.monotonic() < deadline and not line.startswith("{"):
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                raise RuntimeError(f"sandbox exited with {proc.returncode} before it was ready")
        ready = json.loads(line)
        yield str(ready["urls"][DIALECT])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ----------------------------------------------------------------------------- one side


def run_side(side: str, scenario: Scenario, url: str, scratch: Path) -> dict[str, Any]:
    db = scratch / f"{scenario.key}-{side}.db"
    spec = {
        "url": url,
        "db": str(db),
        "fetch_detail": scenario.fetch_detail,
        "page_size": scenario.page_size,
        "concurrency": None,  # the connector's default
        "capacity_concurrency": CAPACITY_CONCURRENCY,
        "resync": scenario.resync,
        "requests_per_minute": scenario.requests_per_minute,
    }
    _admin(url, "stats/reset", post=True)
    done = subprocess.run(
        [sys.executable, str(WORKERS), side, json.dumps(spec)],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    stats = _admin(url, "stats")
    report["sandbox"] = {
        "requests": stats["requests"],
        "max_in_flight": stats["max_in_flight"],
        "max_requests_per_60s": stats["max_requests_per_60s"],
    }
    for phase in report["phases"].values():
        seconds = max(phase["seconds"], 1e-9)
        phase["invoices_per_s"] = phase["fetched"] / seconds
        phase["requests_per_s"] = phase["requests"] / seconds
    return report


def measure(scenario: Scenario, url: str, scratch: Path) -> dict[str, Any]:
    result: dict[str, Any] = {**asdict(scenario), "concurrency": default_concurrency()}
    result["connector"] = run_side("connector", scenario, url, scratch)
    if scenario.with_capacity:
        result["capacity"] = run_side("capacity", scenario, url, scratch)
        mine = result["connector"]["phases"]["full"]["invoices_per_s"]
        most = result["capacity"]["phases"]["full"]["invoices_per_s"]
        result["share_of_capacity"] = mine / max(most, 1e-9)
    if scenario.with_baseline:
        result["baseline"] = run_side("baseline", scenario, url, scratch)
        mine = result["connector"]["phases"]["full"]
        theirs = result["baseline"]["phases"]["full"]
        result["ratios"] = {
            "invoices_per_s": mine["invoices_per_s"] / max(theirs["invoices_per_s"], 1e-9),
            "requests_per_s": mine["requests_per_s"] / max(theirs["requests_per_s"], 1e-9),
            "rss": result["connector"]["rss_mb"] / result["baseline"]["rss_mb"],
        }
    phases = result["connector"]["phases"]
    if "resync" in phases:
        result["resync_speedup"] = phases["full"]["seconds"] / max(
            phases["resync"]["seconds"], 1e-9
        )
    return result


# ----------------------------------------------------------------------------- report


def default_concurrency() -> int:
    """The connector's default ceiling of concurrent requests per source (http.concurrency)."""
    from connector.settings import HttpSettings

    return HttpSettings().concurrency


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = found.group(1) if found else cpu
    except OSError:
        pass
    memory_mb = None
    try:
        found = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        memory_mb = int(found.group(1)) // 1024 if found else None
    except OSError:
        pass
    return {
        "hostname": socket.gethostname(),
        "nproc": os.cpu_count(),
        "memory_mb": memory_mb,
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it was met."""
    found: dict[str, dict[str, Any]] = {}

    def target(name: str, value: float, goal: str, met: bool) -> None:
        found[name] = {"value": round(value, 3), "goal": goal, "met": met}

    if "a" in results:
        ratio = results["a"]["ratios"]["invoices_per_s"]
        target("a_vs_baseline", ratio, ">= 2x", ratio >= 2)
        speedup = results["a"]["resync_speedup"]
        target("a_resync_speedup", speedup, ">= 3x", speedup >= 3)
        resync = results["a"]["connector"]["phases"]["resync"]
        writes = resync["inserted"] + resync["updated"]
        target("a_resync_writes", writes, "== 0", writes == 0)
    if "b" in results:
        ratio = results["b"]["ratios"]["invoices_per_s"]
        target("b_vs_baseline", ratio, ">= 15x", ratio >= 15)
        share = results["b"]["share_of_capacity"]
        target("b_share_of_capacity", share, ">= 0.5", share >= 0.5)
    if "c" in results:
        rate = results["c"]["connector"]["phases"]["full"]["invoices_per_s"]
        target("c_invoices_per_s", rate, ">= 10000", rate >= 10_000)
    if "d_small" in results and "d_large" in results:
        # The connector's process plus its writer process's own pages.
        small = results["d_small"]["connector"]["total_mb"]
        large = results["d_large"]["connector"]["total_mb"]
        target("d_peak_rss_mb", large, "< 150", max(small, large) < 150)
        growth = (large - small) / small
        target("d_rss_growth", growth, "<= 0.15", abs(growth) <= 0.15)
    for key, result in results.items():
        stats = result["connector"]["sandbox"]
        ceiling = result["concurrency"]
        target(f"{key}_max_in_flight", stats["max_in_flight"], f"<= {ceiling}", True)
        found[f"{key}_max_in_flight"]["met"] = stats["max_in_flight"] <= ceiling
        limit = result.get("requests_per_minute")
        if limit:
            peak = stats["max_requests_per_60s"]
            target(f"{key}_max_requests_per_60s", peak, f"<= {limit}", peak <= limit)
    return found


def table(results: dict[str, Any]) -> str:
    header = (
        f"{'scenario':<10} {'side':<16} {'N':>7} {'seconds':>8} {'inv/s':>9} {'req/s':>8} "
        f"{'RSS MB':>7} {'in flight':>9} {'req/60s':>8}"
    )
    lines = [header, "-" * len(header)]
    for key, result in results.items():
        for side in ("connector", "baseline", "capacity"):
            report = result.get(side)
            if report is None:
                continue
            for phase, figures in report["phases"].items():
                label = side if phase == "full" else f"{side} {phase}"
                first = phase == "full"
                lines.append(
                    f"{key:<10} {label:<16} {figures['fetched']:>7} {figures['seconds']:>8.2f} "
                    f"{figures['invoices_per_s']:>9.0f} {figures['requests_per_s']:>8.0f} "
                    + (
                        f"{report['rss_mb']:>7.1f} {report['sandbox']['max_in_flight']:>9} "
                        f"{report['sandbox']['max_requests_per_60s']:>8}"
                        if first
                        else ""
                    )
                )
        writer = result["connector"].get("writer")
        if writer:
            lines.append(
                f"{key:<10} {'writer process':<16} peak RSS {writer['rss_mb']:.1f} MB, of it "
                f"its own {writer['private_mb']:.1f} MB; connector in all "
                f"{result['connector']['total_mb']:.1f} MB"
            )
        if "ratios" in result:
            ratios = result["ratios"]
            lines.append(
                f"{key:<10} {'ratio':<16} invoices/s {ratios['invoices_per_s']:.1f}x, "
                f"requests/s {ratios['requests_per_s']:.1f}x, RSS {ratios['rss']:.2f}x"
            )
        if "share_of_capacity" in result:
            lines.append(
                f"{key:<10} {'of capacity':<16} {result['share_of_capacity']:.0%} of the "
                "sandbox's own capacity (raw client)"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--only", nargs="*", help="scenario keys to run (default: all)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="results dir")
    args = parser.parse_args(argv)

    chosen = [s for s in scenarios(args.quick) if not args.only or s.key in args.only]
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="connector-bench-") as scratch:
        # Scenarios sharing a dataset size and latency share one sandbox process.
        groups: dict[tuple[int, float], list[Scenario]] = {}
        for scenario in chosen:
            groups.setdefault((scenario.n, scenario.latency_ms), []).append(scenario)
        for (n, latency_ms), group in groups.items():
            with sandbox(n, latency_ms) as url:
                for scenario in group:
                    print(f"scenario {scenario.key}: {scenario.title}, N={n}", file=sys.stderr)
                    results[scenario.key] = measure(scenario, url, Path(scratch))
    results = {s.key: results[s.key] for s in chosen}
    document = {
        "date": started.isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "scenarios": results,
        "targets": targets(results),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    # The time of day keeps two runs of one day apart: a results file is never overwritten.
    stamp = f"{started:%Y-%m-%d-%H%M}"
    path = args.out / f"{stamp}-{document['machine']['hostname']}{suffix}.json"
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(table(results))
    print()
    for name, found in document["targets"].items():
        mark = "met" if found["met"] else "NOT MET"
        print(f"{name:<28} {found['value']:>12} {found['goal']:<10} {mark}")
    print(f"\nload average before {load_before}, after {document['load_average_after']}")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
