"""Errors that name the problem, from the installed `connector` executable: a read-only store
(named, and still readable by status / export / report without being migrated), a busy sandbox
port, a plain-http vendor that is down, an API answering truncated JSON, a sync whose every
record was quarantined, and config errors that never echo a secret."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest
from aiohttp import web

from connector.sandbox import SandboxOptions, SandboxServer
from connector.store.database import HEAD_REVISION, sqlite_url_for
from tests.conftest import FAST_HTTP, run_connector, seed_registry, sources_for, write_config
from tests.local_server import serve_app

Run = Callable[..., subprocess.CompletedProcess[str]]

SOURCE = "meditrak"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxOptions(invoices=30, seed=5, dialects=(SOURCE,))) as server:
        yield server


# ----------------------------------------------------------------------------- read-only store


class ReadOnlyFolder:
    """A folder that can be made read-only: as root, a tmpfs remounted read-only (what an
    operator meets on a read-only volume; root may write any file otherwise); unprivileged,
    the folder and its files lose their write permission."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="connector-ro-"))
        self.mounted = False
        if os.geteuid() == 0:
            made = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(self.path)],
                capture_output=True,
                check=False,
            )
            if made.returncode != 0:
                self.path.rmdir()
                pytest.skip("running as root without the right to mount a read-only tmpfs")
            self.mounted = True

    def _remount(self, mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.path)], check=True)

    def read_only(self) -> None:
        if self.mounted:
            self._remount("ro")
            return
        for child in self.path.iterdir():
            child.chmod(0o444)
        self.path.chmod(0o555)

    def writable(self) -> None:
        if self.mounted:
            self._remount("rw")
            return
        self.path.chmod(0o755)
        for child in self.path.iterdir():
            child.chmod(0o644)

    def remove(self) -> None:
        self.writable()
        if self.mounted:
            subprocess.run(["umount", str(self.path)], check=True)
        shutil.rmtree(self.path)


@pytest.fixture
def read_only_store(sandbox: SandboxServer, connector: Run) -> Iterator[ReadOnlyFolder]:
    """A folder holding a synced store and its config, then made read-only."""
    folder = ReadOnlyFolder()
    try:
        store = folder.path / "store.db"
        config = write_config(
            folder.path / "c.yaml",
            {
                "store": {"url": str(store)},
                "logging": {"format": "json"},
                "sources": sources_for(sandbox, (SOURCE,), http=FAST_HTTP),
            },
        )
        seed_registry(sandbox, sqlite_url_for(store))
        done = connector("-c", str(config), "sync")
        assert done.returncode == 0, done.stderr[-2000:]
        folder.read_only()
        yield folder
    finally:
        folder.remove()


def test_read_commands_work_on_a_read_only_store_without_changing_it(
    read_only_store: ReadOnlyFolder,
) -> None:
    folder = read_only_store.path
    store = folder / "store.db"
    before = store.read_bytes()
    with closing(sqlite3.connect(f"file:{store}?mode=ro&immutable=1", uri=True)) as db:
        stored = db.execute("select count(*) from invoice").fetchone()[0]
    assert stored > 0
    config = str(folder / "c.yaml")

    status = run_connector("-c", config, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)[0]["stored"] == stored

    export = run_connector("-c", config, "export", "--include-void")
    assert export.returncode == 0, export.stderr
    assert len(export.stdout.splitlines()) == stored

    report = run_connector("-c", config, "report", "--format", "json")
    assert report.returncode == 0, report.stderr

    assert store.read_bytes() == before


def test_a_sync_into_a_read_only_store_names_the_store_and_says_read_only(
    read_only_store: ReadOnlyFolder,
) -> None:
    folder = read_only_store.path
    done = run_connector("-c", str(folder / "c.yaml"), "sync")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f"the store {folder / 'store.db'} is read-only" in done.stderr


def test_a_read_only_store_that_needs_migrating_says_so(read_only_store: ReadOnlyFolder) -> None:
    store = read_only_store.path / "store.db"
    read_only_store.writable()
    with closing(sqlite3.connect(store)) as db, db:
        db.execute("update alembic_version set version_num = '0001'")
    read_only_store.read_only()
    done = run_connector("-c", str(read_only_store.path / "c.yaml"), "status")
    assert done.returncode == 2
    assert f"the store {store}: it is read-only and its schema is at revision 0001" in done.stderr
    assert f"older than this version's {HEAD_REVISION}" in done.stderr
    assert "run `connector sync`" in done.stderr


# ----------------------------------------------------------------------------- sandbox port


def test_a_busy_sandbox_port_is_named_in_one_line(connector: Run) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = connector("sandbox", "--port", str(port), "--vendor", SOURCE)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in lines[0]
    assert "--port 0" in lines[0]


# ----------------------------------------------------------------------------- vendors


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_plain_http_vendor_that_is_down_is_not_reported_as_tls(
    connector: Run, tmp_path: Path
) -> None:
    down = f"http://127.0.0.1:{_free_port()}/api/v1/"
    source = {"name": "down", "type": SOURCE, "base_url": down, "api_key": "k-12345678"}
    config = write_config(
        tmp_path / "c.yaml",
        {
            "store": {"url": str(tmp_path / "s.db")},
            "logging": {"format": "json"},
            "sources": [{**source, "http": FAST_HTTP}],
        },
    )
    done = connector("-c", str(config), "sync", "--json")
    assert done.returncode == 1
    error = json.loads(done.stdout)["sources"][0]["error"]
    assert "over plain HTTP" in error, error
    assert "ssl" not in error.lower(), error


def _truncated_json_api() -> web.Application:
    async def cut_off(_request: web.Request) -> web.Response:
        body = b'{"data": [{"id": "INV-1", "total": 12.5}, {"id": "INV-2", "tot'
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", cut_off)
    return app


def test_validate_reports_truncated_json_as_malformed(connector: Run, tmp_path: Path) -> None:
    with serve_app(_truncated_json_api()) as base:
        source = {
            "name": "cut",
            "type": SOURCE,
            "base_url": f"{base}/api/v1/",
            "api_key": "k-12345678",
            "http": FAST_HTTP,
        }
        config = write_config(
            tmp_path / "c.yaml",
            {"store": {"url": str(tmp_path / "s.db")}, "sources": [source]},
        )
        done = connector("-c", str(config), "validate", "--source", "cut", "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 1, done.stderr
    assert report["verdict"] == "not ready"
    listing = next(s for s in report["connection"]["steps"] if s["name"] == "list")
    assert listing["status"] == "fail"
    assert "malformed JSON" in listing["detail"]
    assert "web page" not in listing["detail"]


def test_a_sync_that_quarantines_everything_ends_with_the_top_reason_and_its_fix(
    sandbox: SandboxServer, connector: Run, tmp_path: Path
) -> None:
    # No policy registry imported: every invoice's policy is unknown to MediTrak.
    config = write_config(
        tmp_path / "c.yaml",
        {
            "store": {"url": str(tmp_path / "s.db")},
            "logging": {"format": "json"},
            "sources": sources_for(sandbox, (SOURCE,), http=FAST_HTTP),
        },
    )
    done = connector("-c", str(config), "sync")
    assert done.returncode == 0, done.stderr[-2000:]
    warnings = [line for line in done.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, done.stdout
    assert (
        f"warning: {SOURCE}: all 30 record(s) fetched were quarantined; top reason "
        in (warnings[0])
    )
    assert "policies import" in warnings[0]
    events = [json.loads(line) for line in done.stderr.splitlines()]
    assert [e for e in events if e["event"] == "sync.all_quarantined"]

    as_json = connector("-c", str(config), "sync", "--json")
    assert json.loads(as_json.stdout)["sources"][0]["warning"] == warnings[0].removeprefix(
        "warning: "
    )


# ----------------------------------------------------------------------------- config secrets


def test_a_yaml_syntax_error_gives_the_position_not_the_line(
    connector: Run, tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        'store:\n  url: ./s.db\nsources:\n  - name: x\n    api_key: "hunter2-secret\n    type: y\n'
        "  - [unbalanced\n",
        encoding="utf-8",
    )
    for command in (("config", "check"), ("status",)):
        done = connector("-c", str(config), *command)
        assert done.returncode == 2
        assert "hunter2" not in done.stdout + done.stderr
        assert "not valid YAML at line " in done.stderr


def test_a_base_url_with_user_info_is_masked_in_errors(connector: Run, tmp_path: Path) -> None:
    source = {
        "name": "x",
        "type": SOURCE,
        "base_url": "http://bob:hunter2-pw@vendor.example.com/api/",
        "api_key": "k-12345678",
    }
    config = write_config(tmp_path / "c.yaml", {"store": {"url": "s.db"}, "sources": [source]})
    done = connector("-c", str(config), "config", "check")
    assert done.returncode == 2
    assert "hunter2" not in done.stdout + done.stderr
    assert "http://***@vendor.example.com/api/" in done.stderr
