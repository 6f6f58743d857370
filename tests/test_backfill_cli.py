"""`connector backfill` as an operator runs it, a real process with stdout a pipe: SIGINT and
SIGTERM stop it with 130 and 143 and the line that says to run it again, the summary is plain
text off a terminal, and `--json` prints the documented shape."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from connector.sandbox import SandboxOptions, SandboxServer
from connector.store import Store
from connector.store.coordination import BackfillWindows
from connector.store.database import sqlite_url_for
from tests.daemon_helpers import connector_processes, seed_registry, wait_for, write_config

SOURCE = "meditrak"
SINCE, UNTIL = date(2025, 1, 1), date(2025, 12, 31)  # thirteen 30-day windows
KEY = f"{SOURCE}:{SINCE}:{UNTIL}"
BOX_DRAWING = set("─━│┃┏┓┗┛┡┩└┘├┤┬┴┼╇╈")
# Every request waits this long: a window takes about a second, so a signal sent once the
# first window is done lands with most of the backfill still to go.
SLOW_MS = 150


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    options = SandboxOptions(invoices=60, seed=41, latency_ms=SLOW_MS, dialects=(SOURCE,))
    with SandboxServer(options) as server:
        yield server


def _command(config: Path, *extra: str) -> tuple[str, ...]:
    return (
        *("-c", str(config), "backfill", "--source", SOURCE),
        *("--since", str(SINCE), "--until", str(UNTIL), "--window", "30d"),
        *("--progress-every", "0.5s", *extra),
    )


def _config(tmp_path: Path, server: SandboxServer) -> tuple[Path, str]:
    url = sqlite_url_for(tmp_path / "store.db")
    with Store(url) as store:
        seed_registry(server, store)
    return write_config(tmp_path / "c.yaml", server, url, (SOURCE,), source_fields={}), url


def _windows_done(url: str) -> int:
    with Store(url) as store:
        try:
            return BackfillWindows(store, KEY, SOURCE).summary().done
        except Exception:  # the tables may not exist before the process's first migration
            return 0


@pytest.mark.parametrize(
    ("signum", "code", "name"), [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")]
)
def test_a_signal_stops_the_backfill_with_its_exit_status_and_the_rerun_finishes(
    sandbox: SandboxServer, tmp_path: Path, signum: int, code: int, name: str
) -> None:
    config, url = _config(tmp_path, sandbox)
    with connector_processes(tmp_path) as start:
        first = start(*_command(config))
        wait_for(lambda: _windows_done(url) >= 1, timeout=60)
        first.signal(signum)
        assert first.wait(60) == code, first.stderr()[-2000:]
        stdout, stderr = first.stdout(), first.stderr()
        assert f"interrupted by {name}: run the same command again to continue" in stderr
        assert "Traceback" not in stderr
        stopping = first.events("backfill.stopping")
        assert [event["signal"] for event in stopping] == [name]
        # The summary table, off a terminal: a title, a header, one row; no box drawing.
        assert not BOX_DRAWING & set(stdout), stdout
        lines = stdout.splitlines()
        assert lines[0] == f"Backfill {KEY}"
        assert lines[1].split()[:4] == ["windows", "done", "failed", "left"]
        total, done, failed, left = (int(cell) for cell in lines[2].split()[:4])
        assert (total, failed) == (13, 0) and 1 <= done < total and done + left == total

        again = start(*_command(config, "--json"))
        assert again.wait(120) == 0, again.stderr()[-2000:]
        report = json.loads(again.stdout())
    assert set(report) == {
        "backfill",
        "complete",
        "interrupted",
        "message",
        "windows",
        "counts",
        "seconds",
        "failures",
    }
    assert (report["backfill"], report["complete"], report["interrupted"]) == (KEY, True, False)
    assert report["message"] is None and report["failures"] == []
    assert report["windows"] == {"total": 13, "done": 13, "failed": 0, "left": 0}
    assert report["counts"]["fetched"] >= 0


def test_an_interrupted_backfill_says_so_in_its_json(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    config, url = _config(tmp_path, sandbox)
    with connector_processes(tmp_path) as start:
        first = start(*_command(config, "--json"))
        wait_for(lambda: _windows_done(url) >= 1, timeout=60)
        first.signal(signal.SIGTERM)
        assert first.wait(60) == 143, first.stderr()[-2000:]
        report = json.loads(first.stdout())
    assert report["interrupted"] is True and report["complete"] is False
    assert report["message"] == "interrupted by SIGTERM: run the same command again to continue"
    windows = report["windows"]
    assert windows["total"] == 13 and 1 <= windows["done"] < 13
    assert windows["done"] + windows["left"] == 13
