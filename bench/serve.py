"""Benchmark of `connector serve`: requests/s and p50/p99 latency of get-by-id and of list pages
of 100 records, over a store of N invoices on SQLite and PostgreSQL, while a writer process
rewrites batches of invoices the whole time (as a sync does).

    .venv/bin/python bench/serve.py                          # 100k invoices, both backends
    .venv/bin/python bench/serve.py --invoices 5000 --seconds 3 --backends sqlite   # smoke

The server is the real `connector serve` process (one uvicorn worker), the writer another
process, the load client this one (aiohttp, `--concurrency` requests in flight). Stores are
kept between runs (SQLite under --store-dir, PostgreSQL in schema `serve_bench`) and filled
only when their size differs. Results go to bench/results/<date>-<HHMM>-serve.json and a table.
Targets are reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connector.model import Category, Invoice, InvoiceStatus, LineItem, Patient  # noqa: E402
from connector.serve.auth import hash_key  # noqa: E402
from connector.store import Accepted, Store  # noqa: E402

KEY = "serve-bench-key-0123456789abcdef"
SOURCES = ("clinic-0", "clinic-1", "clinic-2", "clinic-3")
PG_BASE = os.environ.get("CONNECTOR_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1/test")
PG_SCHEMA = "serve_bench"
TARGETS = {"get_by_id": 1000.0, "list_page_100": 100.0}


def bench_invoice(source: str, number: int, version: int = 0) -> Invoice:
    day = date(2024, 1, 1) + timedelta(days=number % 700)
    lines = tuple(
        LineItem(
            category=Category.CONSULTATION if n == 0 else Category.LABORATORY,
            description="General Consultation" if n == 0 else "Full Blood Count",
            quantity=Decimal(1 + n),
            unit_price=Decimal("100.00") + version,
            total=(Decimal("100.00") + version) * (1 + n),
        )
        for n in range(2)
    )
    return Invoice(
        source=source,
        id=f"INV-{number:07d}",
        invoice_number=f"N-{number}",
        invoice_date=day,
        total_amount=sum((line.total for line in lines), Decimal("0.00")),
        currency="USD",
        status=(InvoiceStatus.PAID, InvoiceStatus.UNPAID, InvoiceStatus.PENDING)[number % 3],
        source_status="paid",
        facility="Bench Clinic",
        patient=Patient(name=f"Bench Patient {number}", policy_number=f"POL-{number:07d}"),
        items=lines,
    )


def ids_of(count: int) -> list[tuple[str, int]]:
    return [(SOURCES[n % len(SOURCES)], n) for n in range(count)]


def write_invoices(store: Store, keyed: list[tuple[str, int]], version: int) -> None:
    by_source: dict[str, list[Accepted]] = {}
    for source, number in keyed:
        inv = bench_invoice(source, number, version)
        by_source.setdefault(source, []).append(Accepted(inv, inv.content_hash()))
    for source, accepted in by_source.items():
        run = store.start_run(source, "sync", None)
        store.write_batch(run, source, accepted, [], fetched=len(accepted), resume=None)
        store.finish_run(run, source, status="ok")


def store_url(backend: str, store_dir: Path) -> str:
    if backend == "sqlite":
        store_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{store_dir / 'serve-bench.db'}"
    engine = create_engine(PG_BASE)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{PG_SCHEMA}"'))
    engine.dispose()
    url = make_url(PG_BASE).update_query_dict({"options": f"-csearch_path={PG_SCHEMA}"})
    return url.render_as_string(hide_password=False)


def fill(url: str, invoices: int) -> None:
    with Store(url) as store:
        if store.count_invoices() == invoices:
            return
        print(f"filling {url.split('?')[0]} with {invoices} invoices ...", flush=True)
        started = time.monotonic()
        with store.transaction() as conn:
            conn.execute(text("DELETE FROM invoice_item"))
            conn.execute(text("DELETE FROM invoice"))
        keyed = ids_of(invoices)
        for start in range(0, invoices, 2000):
            write_invoices(store, keyed[start : start + 2000], 0)
        if store.dialect == "postgresql":
            # What autovacuum does soon after a bulk load; without it the planner guesses.
            with store.engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT")
                conn.execute(text("ANALYZE"))
        print(f"  filled in {time.monotonic() - started:.0f}s", flush=True)


def writer_loop(url: str, invoices: int, batch: int) -> None:
    """Rewrite `batch` random invoices (a new amount each time) until SIGTERM."""
    stop = False

    def _stop(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    keyed = ids_of(invoices)
    batches = 0
    with Store(url) as store:
        while not stop:
            write_invoices(store, random.sample(keyed, batch), 1 + batches % 50)
            batches += 1
    print(json.dumps({"batches": batches, "records": batches * batch}), flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(url: str, workdir: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    config = workdir / "serve-bench.yaml"
    consumer = {"name": "bench", "key_sha256": hash_key(KEY), "sources": ["*"]}
    document = {
        "store": {"url": url},
        "logging": {"level": "warning", "format": "json"},
        "serve": {"port": port, "access_log": False, "consumers": [consumer]},
    }
    config.write_text(yaml.safe_dump(document), encoding="utf-8")
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("connector")), "-c", str(config), "serve"],
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2) as answer:
                if answer.status == 200:
                    return server, base
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("connector serve did not start")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


async def measure(
    base: str, kind: str, invoices: int, seconds: float, concurrency: int
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    keyed = ids_of(invoices)
    headers = {"Authorization": f"Bearer {KEY}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base, headers=headers, connector=connector) as session:
        deadline = time.perf_counter() + seconds

        async def get_by_id() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                source, number = random.choice(keyed)
                started = time.perf_counter()
                async with session.get(f"/api/v1/invoices/{source}:INV-{number:07d}") as answer:
                    await answer.read()
                    errors += answer.status != 200
                latencies.append(time.perf_counter() - started)

        async def list_pages() -> None:
            # A client importing everything: a cursor pass, from a random source on.
            nonlocal errors
            cursor: str | None = None
            params: dict[str, Any] = {"limit": 100, "source": random.choice(SOURCES)}
            while time.perf_counter() < deadline:
                query = {**params, "cursor": cursor} if cursor else params
                started = time.perf_counter()
                async with session.get("/api/v1/invoices", params=query) as answer:
                    body = await answer.json()
                    errors += answer.status != 200
                latencies.append(time.perf_counter() - started)
                cursor = body.get("next_cursor")

        work = get_by_id if kind == "get_by_id" else list_pages
        started = time.perf_counter()
        await asyncio.gather(*(work() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "errors": errors,
        "per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
    }


def run_backend(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    url = store_url(backend, args.store_dir)
    fill(url, args.invoices)
    server, base = start_server(url, args.store_dir)
    writer = None
    if not args.no_writer:
        writer = subprocess.Popen(
            [sys.executable, __file__, "--writer", url, "--invoices", str(args.invoices)],
            stdout=subprocess.PIPE,
            text=True,
        )
    try:
        results: dict[str, Any] = {"backend": backend, "invoices": args.invoices}
        for kind in ("get_by_id", "list_page_100"):
            asyncio.run(measure(base, kind, args.invoices, 1.0, args.concurrency))  # warm-up
            results[kind] = asyncio.run(
                measure(base, kind, args.invoices, args.seconds, args.concurrency)
            )
    finally:
        if writer is not None:
            writer.send_signal(signal.SIGTERM)
            written, _ = writer.communicate(timeout=120)
            results["writer"] = json.loads(written.strip().splitlines()[-1]) if written else None
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invoices", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--store-dir", type=Path, default=Path("/tmp/serve-bench"))
    parser.add_argument("--no-writer", action="store_true", help="Measure without writes.")
    parser.add_argument("--writer", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=500, help="Records per writer batch.")
    args = parser.parse_args()
    if args.writer:
        writer_loop(args.writer, args.invoices, args.batch)
        return
    load_before = os.getloadavg()
    runs = [run_backend(backend, args) for backend in args.backends.split(",")]
    load_after = os.getloadavg()
    print(
        f"\nconnector serve, {args.invoices} invoices, concurrency {args.concurrency}, "
        f"{args.seconds:.0f}s per scenario, writer {'off' if args.no_writer else 'on'}"
    )
    print(f"{'backend':10} {'scenario':15} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'target':>8}")
    for run in runs:
        for kind, target in TARGETS.items():
            r = run[kind]
            print(
                f"{run['backend']:10} {kind:15} {r['per_second']:8.1f} {r['p50_ms']:8.2f} "
                f"{r['p99_ms']:8.2f} {target:8.0f}"
            )
        if run.get("writer"):
            print(f"{run['backend']:10} writer: {run['writer']['records']} records rewritten")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d-%H%M")
    out = ROOT / "bench" / "results" / f"{stamp}-serve.json"
    out.write_text(
        json.dumps(
            {
                "args": {k: str(v) for k, v in vars(args).items()},
                "load_before": load_before,
                "load_after": load_after,
                "runs": runs,
            },
            indent=2,
        )
    )
    print(f"load average before {load_before}, after {load_after}")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
