"""One sync for `bench/ab.py`, with whichever connector this interpreter imports; prints one
JSON line: wall and process CPU seconds of the sync, peak RSS. Knows the module layout before
and after the packages of issue 13, so that it can measure either side of that change."""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

from connector.config import build_config
from connector.logging import configure_logging
from connector.runtime import tune_garbage_collector
from connector.store import Store
from connector.store.store import sqlite_url_for

try:
    from connector.pipeline.engine import Engine
except ImportError:  # a checkout from before the layer packages
    from connector.engine import Engine  # type: ignore[no-redef]


def main(url: str, detail: bool, page_size: int) -> None:
    configure_logging("warning", "json")
    tune_garbage_collector()
    source = {
        "type": "meditrak_import",
        "name": "ab",
        "base_url": url,
        "api_key": "sandbox-import-key",
        "fetch_detail": detail,
        "page_size": page_size,
        "http": {"concurrency": 32},
    }
    db = Path(tempfile.mkdtemp()) / "ab.db"
    config = build_config({"store": {"url": str(db)}, "sources": [source]}, env={})
    with Store(sqlite_url_for(db)) as store:
        engine = Engine(config, store)
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        result = asyncio.run(engine.sync_source(config.source("ab")))
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
    if not result.ok:
        raise SystemExit(f"sync failed: {result.error}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(
        json.dumps(
            {
                "wall_s": round(wall, 3),
                "cpu_s": round(cpu, 3),
                "rss_mb": round(after.ru_maxrss / 1024, 1),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] == "True", int(sys.argv[3]))
