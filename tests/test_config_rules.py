"""A source's `category_rules` file is read and validated when the config loads.

Its problems — missing, unreadable, not YAML, wrong shape, unknown categories, bad patterns —
are listed in the one `ConfigError` with every other problem of the config, each naming the
source and the file. The parsed rules are kept on the source, so a run does not read the file
again; the daemon reloads when the file changes, and refuses a broken one (the running config
and its rules stay).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.config import AppConfig, build_config, load_config
from connector.daemon import service as daemon_module
from connector.daemon.service import Daemon
from connector.errors import ConfigError
from connector.pipeline.categories import categorizer_for
from connector.pipeline.wiring import build_categorizers
from connector.store import Store
from tests.conftest import write_config

ZUMBA_OPTICAL = "rules:\n  - category: optical\n    keywords: [zumba]\n"
ZUMBA_DENTAL = "rules:\n  - category: dental\n    keywords: [zumba]\n"


def source(name: str, **fields: Any) -> dict[str, Any]:
    # Splose: a type whose items are categorised by description rules.
    return {
        "type": "splose",
        "name": name,
        "base_url": "https://api.splose.example/v1/",
        "api_key": "k-123456",
        **fields,
    }


@pytest.fixture
def site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    (site / "rules").mkdir(parents=True)
    (site / "rules" / "extra.yaml").write_text(ZUMBA_OPTICAL, encoding="utf-8")
    return site


def rule_of(config: AppConfig, text: str = "Zumba class") -> str | None:
    return build_categorizers(config)[config.sources[0].name](None, text).rule


# ----------------------------------------------------------------------------- load time


def test_rules_file_problems_are_listed_with_every_other_problem(site: Path) -> None:
    rules = site / "rules"
    (rules / "syntax.yaml").write_text("rules: [\n", encoding="utf-8")
    (rules / "list.yaml").write_text("- 1\n- 2\n", encoding="utf-8")
    (rules / "unknown.yaml").write_text(
        "sources:\n  splose:\n    map:\n      Pathology: lab\n"
        "rules:\n  - category: dentistry\n    keywords: [tooth]\n",
        encoding="utf-8",
    )
    (rules / "latin1.yaml").write_bytes("rules: []  # radiografía\n".encode("latin-1"))
    config_file = write_config(
        site / "connector.yaml",
        {
            "sources": [
                source("missing", category_rules="rules/none.yaml"),
                source("syntax", category_rules="rules/syntax.yaml"),
                source("shape", category_rules="rules/list.yaml"),
                source("unknown", category_rules="rules/unknown.yaml"),
                source("a-dir", category_rules="rules"),
                source("latin1", category_rules="rules/latin1.yaml"),
                # A source with another problem still has its rules file checked.
                source("bad-lookback", lookback="soon", category_rules="rules/none.yaml"),
                {"type": "nope", "name": "no-type", "category_rules": "rules/syntax.yaml"},
                source("fine", category_rules="rules/extra.yaml"),
            ]
        },
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config_file, env={})
    problems = caught.value.problems
    expected = [
        f"sources[0] (missing).category_rules: {rules / 'none.yaml'}: cannot read the category "
        "rules file: No such file or directory",
        f"sources[1] (syntax).category_rules: {rules / 'syntax.yaml'}: not valid YAML",
        f"sources[2] (shape).category_rules: {rules / 'list.yaml'}: must be a mapping",
        f"sources[3] (unknown).category_rules: {rules / 'unknown.yaml'}: sources.splose.map."
        "Pathology: Input should be",
        f"sources[3] (unknown).category_rules: {rules / 'unknown.yaml'}: rules[0].category: "
        "Input should be",
        f"sources[4] (a-dir).category_rules: {rules}: cannot read the category rules file: "
        "Is a directory",
        f"sources[5] (latin1).category_rules: {rules / 'latin1.yaml'}: cannot read the category "
        "rules file: not UTF-8 text",
        "sources[6] (bad-lookback).lookback: not a duration",
        f"sources[6] (bad-lookback).category_rules: {rules / 'none.yaml'}: cannot read",
        "sources[7] (no-type).type: 'nope' is not one of",
        f"sources[7] (no-type).category_rules: {rules / 'syntax.yaml'}: not valid YAML",
    ]
    for needle in expected:
        assert any(p.startswith(needle) for p in problems), (needle, problems)
    assert len(problems) == len(expected), problems
    assert str(config_file) in str(caught.value)  # the ConfigError names the config file


@pytest.fixture
def rules_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """Every rules file read (the shipped defaults are read through importlib, not here)."""
    reads: list[Path] = []
    real = Path.read_text

    def counting(self: Path, *args: Any, **kwargs: Any) -> str:
        if self.suffix == ".yaml" and self.parent.name == "rules":
            reads.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counting)
    yield reads


def test_the_rules_file_is_read_once_when_the_config_loads(
    site: Path, rules_reads: list[Path]
) -> None:
    config_file = write_config(
        site / "connector.yaml", {"sources": [source("clinic", category_rules="rules/extra.yaml")]}
    )
    config = load_config(config_file, env={})
    assert rules_reads == [site / "rules" / "extra.yaml"]
    # Runs (the CLI's and the daemon's engines) use what was read then, and read nothing.
    (site / "rules" / "extra.yaml").unlink()
    assert rule_of(config) == "keyword:optical/zumba"
    assert rule_of(config) == "keyword:optical/zumba"
    assert len(rules_reads) == 1
    # A copy pointed at another file (`categories explain --rules`) reads that file.
    (site / "rules" / "other.yaml").write_text(ZUMBA_DENTAL, encoding="utf-8")
    other = config.sources[0].model_copy(
        update={"category_rules": str(site / "rules" / "other.yaml")}
    )
    assert categorizer_for(other)(None, "Zumba").rule == "keyword:dental/zumba"
    assert rules_reads[1:] == [site / "rules" / "other.yaml"]


def test_a_config_built_from_a_dict_reads_rules_from_the_working_directory(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = {"sources": [source("clinic", category_rules="rules/extra.yaml")]}
    monkeypatch.chdir(site)
    config = build_config(raw, env={})
    assert config.sources[0].category_rules == "rules/extra.yaml"
    assert rule_of(config) == "keyword:optical/zumba"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        build_config(raw, env={})
    assert caught.value.problems == [
        "sources[0] (clinic).category_rules: rules/extra.yaml: cannot read the category rules "
        "file: No such file or directory"
    ]
    # No rules file at all: nothing to read, as before.
    assert build_config({"sources": [source("clinic")]}, env={}).sources[0].category_rules is None


# ----------------------------------------------------------------------------- daemon reload


class RecordedLog:
    """Stands in for the daemon's structlog logger: (event, fields) of every call."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def _record(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    info = warning = error = _record

    def named(self, event: str) -> list[dict[str, Any]]:
        return [fields for name, fields in self.events if name == event]


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> RecordedLog:
    log = RecordedLog()
    monkeypatch.setattr(daemon_module, "log", log)
    return log


def bump_mtime(path: Path) -> None:
    """A later mtime even on a file system with coarse timestamps."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))


def daemon_site(site: Path) -> Path:
    return write_config(
        site / "connector.yaml",
        {
            "store": {"url": "store.db"},
            "sources": [source("clinic", category_rules="rules/extra.yaml")],
        },
    )


def test_a_reload_with_a_broken_rules_file_is_refused_and_the_old_config_kept(
    site: Path, recorded: RecordedLog
) -> None:
    config_file = daemon_site(site)
    rules = site / "rules" / "extra.yaml"
    loaded = load_config(config_file, env={})

    async def scenario() -> None:
        with Store(loaded.store.sqlalchemy_url()) as store:
            daemon = Daemon(config_file, loaded, store)
            daemon.scheduler.start(paused=True)
            try:
                rules.write_text("rules:\n  - category: dentistry\n    keywords: [x]\n")
                await daemon.reload("SIGHUP")
                assert daemon.config is loaded
                assert rule_of(daemon.config) == "keyword:optical/zumba"
                (rejected,) = recorded.named("daemon.reload_rejected")
                (problem,) = rejected["problems"]
                assert problem.startswith(
                    f"sources[0] (clinic).category_rules: {rules}: rules[0].category"
                )
                rules.write_text(ZUMBA_DENTAL, encoding="utf-8")
                await daemon.reload("SIGHUP")
                assert rule_of(daemon.config) == "keyword:dental/zumba"
                assert len(recorded.named("daemon.reloaded")) == 1
            finally:
                daemon.scheduler.shutdown(wait=False)
                await asyncio.sleep(0)

    asyncio.run(scenario())


def test_the_daemon_reloads_when_a_rules_file_changes(
    site: Path, recorded: RecordedLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rules are read when the config loads, so an edit must reload the config (as before
    this change, when every run read the file, an edit was seen without a restart)."""
    monkeypatch.setattr(daemon_module, "CONFIG_POLL_SECONDS", 0.02)
    config_file = daemon_site(site)
    rules = site / "rules" / "extra.yaml"
    loaded = load_config(config_file, env={})

    async def until(predicate: Any) -> None:
        for _ in range(500):
            if predicate():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"timed out; events: {recorded.events}")

    async def scenario() -> None:
        with Store(loaded.store.sqlalchemy_url()) as store:
            daemon = Daemon(config_file, loaded, store)
            daemon.scheduler.start(paused=True)
            watcher = asyncio.create_task(daemon._watch_config())
            try:
                await asyncio.sleep(0.1)
                assert recorded.events == []  # nothing changed: no reload
                rules.write_text(ZUMBA_DENTAL, encoding="utf-8")
                bump_mtime(rules)
                await until(lambda: recorded.named("daemon.reloaded"))
                (reloaded,) = recorded.named("daemon.reloaded")
                assert reloaded["reason"] == "category rules file changed"
                assert rule_of(daemon.config) == "keyword:dental/zumba"
                good = daemon.config
                rules.write_text("rules: [\n", encoding="utf-8")
                bump_mtime(rules)
                await until(lambda: recorded.named("daemon.reload_rejected"))
                await asyncio.sleep(0.2)  # ten polls: the same broken file is not retried
                assert len(recorded.named("daemon.reload_rejected")) == 1
                assert daemon.config is good
                assert rule_of(daemon.config) == "keyword:dental/zumba"
                rules.write_text(ZUMBA_OPTICAL, encoding="utf-8")
                bump_mtime(rules)
                await until(lambda: len(recorded.named("daemon.reloaded")) == 2)
                assert rule_of(daemon.config) == "keyword:optical/zumba"
            finally:
                watcher.cancel()
                daemon.scheduler.shutdown(wait=False)
                await asyncio.sleep(0)

    asyncio.run(scenario())
