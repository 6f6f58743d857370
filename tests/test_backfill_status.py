"""`connector backfill-status`: per stored backfill, windows done / pending / leased (holder and
lease end) / expired / failed, the range, invoices fetched, whether it is finished; as a table
and as JSON; window errors shown without secrets or policy numbers. On SQLite and PostgreSQL,
with the window rows written by the real lease protocol."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from connector.store import Store
from connector.store.coordination import BackfillWindows, backfill_key, backfill_statuses
from tests.conftest import write_config

Run = Callable[..., subprocess.CompletedProcess[str]]

API_KEY = "sk-live-9f8e7d6c5b4a"
ENV = {"BFS_TEST_API_KEY": API_KEY}  # the config reads the key from here
POLICY = "POL-456789"
LEASE = timedelta(minutes=10)
SINCE, UNTIL = date(2025, 1, 1), date(2025, 2, 4)  # five 7-day windows
OPEN_KEY = backfill_key("meditrak", SINCE, UNTIL)
DONE_KEY = backfill_key("citabox", date(2025, 3, 1), date(2025, 3, 14))


def slices(since: date, count: int) -> list[tuple[date, date]]:
    return [
        (since + timedelta(days=7 * i), since + timedelta(days=7 * i + 6)) for i in range(count)
    ]


def seed(store: Store) -> None:
    """An open backfill with a window in every state, and a finished one of another source."""
    windows = BackfillWindows(store, OPEN_KEY, "meditrak")
    assert windows.ensure(slices(SINCE, 5)) == 5
    first = windows.claim("host-a:101:w0", LEASE)
    assert first is not None
    assert windows.finish(first.id, "host-a:101:w0", {"fetched": 40, "inserted": 38}, None)
    failed = windows.claim("host-a:101:w1", LEASE)
    assert failed is not None
    error = f"HTTP 401 with Authorization: Bearer {API_KEY} for policy {POLICY}\nsecond line"
    assert windows.fail(failed.id, "host-a:101:w1", error, None)
    assert windows.claim("host-b:202:w0", LEASE) is not None  # live
    # A worker that died holding a lease: its lease is already over.
    assert windows.claim("host-c:303:w0", -timedelta(seconds=5)) is not None
    # The fifth window stays pending.

    finished = BackfillWindows(store, DONE_KEY, "citabox")
    assert finished.ensure(slices(date(2025, 3, 1), 2)) == 2
    for owner in ("host-a:101:w0", "host-a:101:w1"):
        window = finished.claim(owner, LEASE)
        assert window is not None
        assert finished.finish(window.id, owner, {"fetched": 5}, None)


def config_for(tmp_path: Path, url: str) -> Path:
    source = {
        "type": "meditrak",
        "name": "meditrak",
        "base_url": "http://127.0.0.1:9/api/v1/",
        "api_key": "${BFS_TEST_API_KEY}",
    }
    return write_config(tmp_path / "connector.yaml", {"store": {"url": url}, "sources": [source]})


def test_statuses_count_every_window_state(store: Store) -> None:
    seed(store)
    statuses = {status.key: status for status in backfill_statuses(store)}
    assert list(statuses) == [DONE_KEY, OPEN_KEY]  # by source, then range

    open_one = statuses[OPEN_KEY]
    assert (open_one.date_from, open_one.date_to) == (SINCE, UNTIL)
    assert (open_one.total, open_one.done, open_one.pending) == (5, 1, 1)
    assert (open_one.leased, open_one.expired, open_one.failed) == (1, 1, 1)
    assert open_one.counts["fetched"] == 40 and open_one.counts["inserted"] == 38
    assert open_one.state == "running" and not open_one.finished
    live, stale = open_one.leases
    assert (live.owner, live.live, live.date_from) == ("host-b:202:w0", True, date(2025, 1, 15))
    assert live.expires_at is not None
    assert timedelta(minutes=9) < live.expires_at - open_one.as_of <= LEASE
    assert (stale.owner, stale.live) == ("host-c:303:w0", False)
    (failure,) = open_one.failures
    assert failure.date_from == date(2025, 1, 8) and failure.attempts == 1

    done = statuses[DONE_KEY]
    assert done.finished and done.state == "complete"
    assert (done.total, done.done, done.counts["fetched"]) == (2, 2, 10)
    assert done.leases == () and done.failures == ()

    assert [s.key for s in backfill_statuses(store, "citabox")] == [DONE_KEY]
    assert backfill_statuses(store, "nope") == []


def test_state_follows_the_windows(store: Store) -> None:
    windows = BackfillWindows(store, OPEN_KEY, "meditrak")
    windows.ensure(slices(SINCE, 2))

    def state() -> str:
        (status,) = backfill_statuses(store)
        return status.state

    assert state() == "stopped"  # planned, nobody working on it
    first = windows.claim("w:1:w0", LEASE)
    assert first is not None and state() == "running"
    assert windows.release(first.id, "w:1:w0") and state() == "stopped"
    for _ in range(2):
        window = windows.claim("w:1:w0", LEASE)
        assert window is not None
        assert windows.fail(window.id, "w:1:w0", "boom", None)
    assert state() == "failed"  # nothing left to run but failures: a re-run retries them
    assert windows.reset_failed() == 2
    for _ in range(2):
        window = windows.claim("w:1:w0", LEASE)
        assert window is not None
        assert windows.finish(window.id, "w:1:w0", {}, None)
    assert state() == "complete"


def test_the_command_prints_json_and_tables_without_secrets(
    connector: Run, store_url: str, tmp_path: Path
) -> None:
    with Store(store_url) as store:
        seed(store)
    cfg = str(config_for(tmp_path, store_url))

    shown = connector("--config", cfg, "backfill-status", "--json", env=ENV)
    assert shown.returncode == 0, shown.stderr
    assert API_KEY not in shown.stdout + shown.stderr
    assert POLICY not in shown.stdout + shown.stderr
    rows: list[dict[str, Any]] = json.loads(shown.stdout)
    assert [row["backfill"] for row in rows] == [DONE_KEY, OPEN_KEY]
    open_row = rows[1]
    assert open_row["source"] == "meditrak"
    assert (open_row["since"], open_row["until"]) == ("2025-01-01", "2025-02-04")
    assert (open_row["state"], open_row["finished"]) == ("running", False)
    assert open_row["windows"] == {
        "total": 5,
        "done": 1,
        "pending": 1,
        "leased": 1,
        "expired": 1,
        "failed": 1,
    }
    assert open_row["counts"]["fetched"] == 40
    assert [(lease["owner"], lease["live"]) for lease in open_row["leases"]] == [
        ("host-b:202:w0", True),
        ("host-c:303:w0", False),
    ]
    assert open_row["leases"][0]["expires_at"].endswith("Z")
    (failure,) = open_row["failures"]
    assert failure["window_from"] == "2025-01-08"
    # First line only, the bearer token scrubbed, the policy number masked.
    assert failure["error"].startswith("HTTP 401 with Authorization: Bearer ****")
    assert "POL-****89" in failure["error"] and "second line" not in failure["error"]
    assert (rows[0]["state"], rows[0]["finished"]) == ("complete", True)

    only = connector("--config", cfg, "backfill-status", "--source", "citabox", "--json", env=ENV)
    assert only.returncode == 0, only.stderr
    assert [row["backfill"] for row in json.loads(only.stdout)] == [DONE_KEY]

    table = connector("--config", cfg, "backfill-status", env=ENV)
    assert table.returncode == 0, table.stderr
    text = table.stdout
    # stdout is a pipe here: plain aligned columns, no box drawing.
    assert not set("─━│┃┏┓┗┛┡┩└┘├┤┬┴┼╇╈") & set(text), text
    assert API_KEY not in text + table.stderr and POLICY not in text + table.stderr
    for title in ("Backfills", "Leased windows", "Failed windows"):
        assert title in text
    (open_line,) = [line for line in text.splitlines() if "2025-01-01..2025-02-04" in line]
    assert "meditrak" in open_line and "running" in open_line
    # windows, done, pending, leased, expired, failed, fetched
    assert open_line.split()[3:10] == [
        "5",
        "1",
        "1",
        "1",
        "1",
        "1",
        "40",
    ]
    (holder,) = [line for line in text.splitlines() if "host-b:202:w0" in line]
    assert "in " in holder and "claimable" not in holder
    (stale,) = [line for line in text.splitlines() if "host-c:303:w0" in line]
    assert "ago, claimable" in stale
    assert "POL-****89" in text


def test_the_command_on_an_empty_store(connector: Run, tmp_path: Path) -> None:
    cfg = str(config_for(tmp_path, str(tmp_path / "store.db")))
    empty = connector("--config", cfg, "backfill-status", env=ENV)
    assert empty.returncode == 0, empty.stderr
    assert "no backfills stored" in empty.stderr and empty.stdout == ""
    as_json = connector(
        "--config", cfg, "backfill-status", "--json", "--source", "meditrak", env=ENV
    )
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == []


def test_backfill_keeps_its_usage_beside_the_status_command(connector: Run) -> None:
    helped = connector("backfill", "--help")
    assert helped.returncode == 0, helped.stderr
    for option in ("--source", "--since", "--until", "--window", "--workers"):
        assert option in helped.stdout
    assert "backfill-status" in connector("--help").stdout
