"""The two measured sides of the benchmark, each run in a process of its own.

`python bench/workers.py connector '<json spec>'` syncs the sandbox with the real engine;
`python bench/workers.py baseline '<json spec>'` does the same job the naive way (sequential
blocking requests, row-by-row upsert, one commit); `python bench/workers.py capacity '<json
spec>'` makes the same requests as fast as a lean client can (what the sandbox can serve). Each
prints one JSON line on stdout with its timings, counts and its own peak RSS, so the sides'
memory is never mixed.
"""

from __future__ import annotations

import contextlib
import json
import resource
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

# The sandbox's credential for the meditrak_import dialect (its default token).
SANDBOX_TOKEN = "sandbox-import-key"


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_connector(spec: dict[str, Any]) -> dict[str, Any]:
    """A full sync into a fresh SQLite file, then (optionally) a no-change incremental re-sync."""
    import asyncio

    from connector.config import build_config
    from connector.logging import configure_logging
    from connector.pipeline.engine import Engine
    from connector.runtime import tune_garbage_collector
    from connector.store import Store
    from connector.store.store import sqlite_url_for

    configure_logging("warning", "json")
    # As the `connector` command does at start-up.
    tune_garbage_collector()
    # The connector's defaults unless the spec overrides them: the defaults are the product.
    http: dict[str, Any] = {}
    if spec.get("concurrency"):
        http["concurrency"] = spec["concurrency"]
    if spec.get("requests_per_minute"):
        http["requests_per_minute"] = spec["requests_per_minute"]
    source = {
        "type": "meditrak_import",
        "name": "bench",
        "base_url": spec["url"],
        "api_key": SANDBOX_TOKEN,
        "fetch_detail": spec["fetch_detail"],
        "page_size": spec["page_size"],
        "http": http,
    }
    db = Path(spec["db"])
    config = build_config({"store": {"url": str(db)}, "sources": [source]}, env={})
    phases: dict[str, Any] = {}
    with Store(sqlite_url_for(db)) as store:
        # Built before any thread starts, as the `connector` command builds it: the writer
        # process is forked here (store.writer: auto).
        engine = Engine(config, store)
        writer_memory = WriterMemory(engine.writer.pid if engine.writer else None)
        names = ["full", "resync"] if spec.get("resync") else ["full"]
        for phase in names:
            started = time.perf_counter()
            result = asyncio.run(engine.sync_source(config.source("bench")))
            seconds = time.perf_counter() - started
            if not result.ok:
                raise SystemExit(f"connector {phase} sync failed: {result.error}")
            phases[phase] = {
                "seconds": seconds,
                "requests": result.requests,
                **result.counts.as_dict(),
            }
        stored = store.count_invoices()
        quarantined = store.count_quarantined()
        writer = writer_memory.stop()
        engine.close()
    rss = peak_rss_mb()
    return {
        "phases": phases,
        "stored": stored,
        "quarantined": quarantined,
        "rss_mb": rss,
        "writer": writer,
        # What the connector costs the machine: this process, plus the writer's own pages (a
        # forked writer shares the rest with this process, copy-on-write).
        "total_mb": rss + (writer["private_mb"] if writer else 0.0),
    }


class WriterMemory:
    """Samples the writer process's memory every 20 ms: its peak resident set and its peak
    private part (pages it does not share with this process)."""

    def __init__(self, pid: int | None) -> None:
        import threading

        self.pid = pid
        self.rss_mb = self.private_mb = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        if pid is not None:
            self._thread.start()

    def _read(self) -> None:
        fields: dict[str, int] = {}
        with open(f"/proc/{self.pid}/smaps_rollup") as rollup:
            for line in rollup:
                name, _, rest = line.partition(":")
                if rest.strip().endswith("kB"):
                    fields[name] = int(rest.split()[0])
        private = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
        self.rss_mb = max(self.rss_mb, fields.get("Rss", 0) / 1024)
        self.private_mb = max(self.private_mb, private / 1024)

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            try:
                self._read()
            except (OSError, ValueError):
                return

    def stop(self) -> dict[str, Any] | None:
        if self.pid is None:
            return None
        self._done.set()
        self._thread.join()
        with contextlib.suppress(OSError, ValueError):
            self._read()
        return {"rss_mb": self.rss_mb, "private_mb": self.private_mb}


_BASELINE_SCHEMA = """
CREATE TABLE invoice (
    id TEXT PRIMARY KEY, invoice_number TEXT, invoice_date TEXT, total_amount TEXT,
    status TEXT, facility TEXT, patient_name TEXT, policy_number TEXT, updated_at TEXT
);
CREATE TABLE invoice_item (
    invoice_id TEXT NOT NULL REFERENCES invoice(id), line_no INTEGER NOT NULL,
    category TEXT, description TEXT, quantity TEXT, unit_price TEXT, total TEXT,
    PRIMARY KEY (invoice_id, line_no)
);
"""


def _upsert_row_by_row(db: sqlite3.Connection, record: dict[str, Any]) -> str:
    """SELECT, then INSERT or UPDATE the invoice; items deleted and re-inserted one by one."""
    patient = record.get("patient") or {}
    values = (
        record.get("invoice_number"),
        record.get("invoice_date"),
        str(record.get("total_amount")),
        record.get("status"),
        record.get("facility"),
        patient.get("name"),
        patient.get("policy_number"),
        record.get("updated_at"),
    )
    invoice_id = str(record["id"])
    found = db.execute("SELECT id FROM invoice WHERE id = ?", (invoice_id,)).fetchone()
    if found is None:
        db.execute("INSERT INTO invoice VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (invoice_id, *values))
        outcome = "inserted"
    else:
        db.execute(
            "UPDATE invoice SET invoice_number = ?, invoice_date = ?, total_amount = ?,"
            " status = ?, facility = ?, patient_name = ?, policy_number = ?, updated_at = ?"
            " WHERE id = ?",
            (*values, invoice_id),
        )
        db.execute("DELETE FROM invoice_item WHERE invoice_id = ?", (invoice_id,))
        outcome = "updated"
    for line_no, item in enumerate(record.get("items") or [], start=1):
        db.execute(
            "INSERT INTO invoice_item VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                invoice_id,
                line_no,
                item.get("category"),
                item.get("description"),
                str(item.get("quantity")),
                str(item.get("unit_price")),
                str(item.get("total")),
            ),
        )
    return outcome


def run_baseline(spec: dict[str, Any]) -> dict[str, Any]:
    """Sequential list (+ one detail call per row), row-by-row upsert, one commit at the end."""
    import requests

    db = sqlite3.connect(spec["db"])
    db.executescript(_BASELINE_SCHEMA)
    base = spec["url"]
    page_size = spec["page_size"]
    counts = {"fetched": 0, "inserted": 0, "updated": 0, "requests": 0}
    started = time.perf_counter()
    with requests.Session() as http:
        http.headers["Authorization"] = f"Bearer {SANDBOX_TOKEN}"
        page = 1
        while True:
            response = http.get(f"{base}invoices", params={"page": page, "limit": page_size})
            counts["requests"] += 1
            response.raise_for_status()
            rows = response.json()["data"]
            for row in rows:
                if spec["fetch_detail"]:
                    detail = http.get(f"{base}invoices/{row['id']}")
                    counts["requests"] += 1
                    detail.raise_for_status()
                    row = detail.json()
                counts[_upsert_row_by_row(db, row)] += 1
                counts["fetched"] += 1
            if len(rows) < page_size:
                break
            page += 1
    db.commit()
    seconds = time.perf_counter() - started
    db.close()
    return {"phases": {"full": {"seconds": seconds, **counts}}, "rss_mb": peak_rss_mb()}


def run_capacity(spec: dict[str, Any]) -> dict[str, Any]:
    """The same list pages (and detail calls) as the other sides, from a raw aiohttp client
    with `capacity_concurrency` requests in flight and nothing done with the answers beyond
    reading the ids: the rate the sandbox itself can serve, the ceiling of any client."""
    import asyncio

    import aiohttp
    import orjson

    base, page_size = spec["url"], spec["page_size"]
    counts = {"fetched": 0, "requests": 0}

    async def go() -> None:
        bound = asyncio.Semaphore(spec["capacity_concurrency"])
        connector = aiohttp.TCPConnector(limit=spec["capacity_concurrency"])
        headers = {"Authorization": f"Bearer {SANDBOX_TOKEN}"}
        async with aiohttp.ClientSession(connector=connector, headers=headers) as http:

            async def fetch(path: str, params: dict[str, Any] | None = None) -> bytes:
                async with bound, http.get(base + path, params=params) as response:
                    response.raise_for_status()
                    counts["requests"] += 1
                    return await response.read()

            async def detail(invoice_id: str) -> None:
                await fetch(f"invoices/{invoice_id}")
                counts["fetched"] += 1

            async def page(number: int) -> Any:
                body = orjson.loads(await fetch("invoices", {"page": number, "limit": page_size}))
                rows = body["data"]
                if spec["fetch_detail"]:
                    await asyncio.gather(*(detail(str(row["id"])) for row in rows))
                else:
                    counts["fetched"] += len(rows)
                return body

            first = await page(1)
            pages = -(-int(first["total"]) // page_size)
            await asyncio.gather(*(page(number) for number in range(2, pages + 1)))

    started = time.perf_counter()
    asyncio.run(go())
    seconds = time.perf_counter() - started
    return {"phases": {"full": {"seconds": seconds, **counts}}, "rss_mb": peak_rss_mb()}


def main(argv: list[str]) -> None:
    side, spec = argv[0], json.loads(argv[1])
    runner = {"connector": run_connector, "baseline": run_baseline, "capacity": run_capacity}[side]
    print(json.dumps(runner(spec)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
