"""Schedules: parsed and validated when the config loads, one job per source, reloads that
never duplicate jobs (unit tests of `connector.daemon.scheduler` and `Daemon.reload`)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from apscheduler.schedulers.background import BackgroundScheduler

from connector.config import AppConfig, build_config, load_config
from connector.daemon.scheduler import apply_schedules, job_id
from connector.daemon.service import Daemon
from connector.errors import ConfigError
from connector.schedule import parse_schedule
from connector.store import Store


def source(name: str, schedule: str | None = None, **extra: Any) -> dict[str, Any]:
    raw = {
        "type": "meditrak",
        "name": name,
        "base_url": "http://127.0.0.1:9/api/v1/",
        "api_key": "k-123456",
        **extra,
    }
    if schedule is not None:
        raw["schedule"] = schedule
    return raw


def config(*sources: dict[str, Any], **daemon: Any) -> AppConfig:
    return build_config({"daemon": daemon, "sources": list(sources)}, env={})


@pytest.mark.parametrize(
    ("text", "described"),
    [
        ("15m", "every 15m"),
        ("every 15m", "every 15m"),
        ("Every 2h", "every 2h"),
        ("90", "every 90s"),
        ("*/5 * * * *", "cron */5 * * * *"),
        ("0 3 * * mon-fri", "cron 0 3 * * mon-fri"),
    ],
)
def test_schedules_parse(text: str, described: str) -> None:
    assert parse_schedule(text).describe() == described


def test_every_bad_schedule_is_listed_when_the_config_loads() -> None:
    with pytest.raises(ConfigError) as caught:
        config(
            source("a", "every banana"),
            source("b", "*/5 * * *"),
            source("c", "61 * * * *"),
            source("d", "0s"),
            source("e", "15m"),
            default_schedule="* * * * 9",
        )
    problems = caught.value.problems
    assert len(problems) == 5, problems
    assert any(
        p.startswith("sources[0] (a).schedule: invalid schedule 'every banana'") for p in problems
    )
    assert any("sources[1] (b).schedule" in p and "4 field(s)" in p for p in problems)
    assert any("sources[2] (c).schedule" in p for p in problems)
    assert any("sources[3] (d).schedule" in p and "at least 1s" in p for p in problems)
    assert any(
        p.startswith("daemon.default_schedule: invalid schedule '* * * * 9'") for p in problems
    )


def test_cron_weekdays_count_from_sunday_as_in_crontab() -> None:
    saturday_noon = datetime(2025, 1, 4, 12, tzinfo=UTC)
    sunday = parse_schedule("0 3 * * 0").trigger().get_next_fire_time(None, saturday_noon)
    assert sunday == datetime(2025, 1, 5, 3, tzinfo=UTC)
    seven = parse_schedule("0 3 * * 7").trigger().get_next_fire_time(None, saturday_noon)
    assert seven == sunday
    weekdays = parse_schedule("30 6 * * 1-5").trigger().get_next_fire_time(None, saturday_noon)
    assert weekdays == datetime(2025, 1, 6, 6, 30, tzinfo=UTC)  # Monday


def test_jitter_is_capped_at_half_the_interval() -> None:
    assert parse_schedule("10s").trigger(timedelta(minutes=5)).jitter == 5
    assert parse_schedule("1h").trigger(timedelta(seconds=30)).jitter == 30
    assert parse_schedule("1h").trigger(timedelta(0)).jitter is None


@pytest.fixture
def scheduler() -> Any:
    scheduler = BackgroundScheduler(timezone=UTC)
    scheduler.start(paused=True)
    yield scheduler
    scheduler.shutdown(wait=False)


def noop(name: str) -> None:
    pass


def test_one_job_per_source_and_reapplying_changes_nothing(scheduler: Any) -> None:
    first = config(source("a"), source("b", "*/10 * * * *"), source("c", enabled=False))
    changes = apply_schedules(scheduler, first, noop)
    assert sorted(changes.added) == [job_id("a"), job_id("b")]
    next_runs = {job.id: job.next_run_time for job in scheduler.get_jobs()}
    for _ in range(3):
        again = apply_schedules(scheduler, first, noop)
        assert again.added == again.rescheduled == again.removed == []
    jobs = scheduler.get_jobs()
    assert sorted(job.id for job in jobs) == ["sync:a", "sync:b"]
    # Left alone means not even re-timed.
    assert {job.id: job.next_run_time for job in jobs} == next_runs
    for job in jobs:
        assert job.max_instances == 1
        assert job.coalesce is True
    assert str(scheduler.get_job("sync:a").trigger).startswith("interval[0:15:00]")


def test_changed_schedules_are_rescheduled_in_place_and_removed_sources_dropped(
    scheduler: Any,
) -> None:
    apply_schedules(scheduler, config(source("a"), source("b")), noop)
    changed = config(source("a", "30s"), source("d"), default_schedule="1h")
    changes = apply_schedules(scheduler, changed, noop)
    assert changes.rescheduled == ["sync:a"]
    assert changes.added == ["sync:d"]
    assert changes.removed == ["sync:b"]
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert sorted(jobs) == ["sync:a", "sync:d"]
    assert str(jobs["sync:a"].trigger).startswith("interval[0:00:30]")
    assert str(jobs["sync:d"].trigger).startswith("interval[1:00:00]")


def test_daemon_reload_updates_jobs_without_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "connector.yaml"

    def write(*sources: dict[str, Any]) -> None:
        document = {"store": {"url": "store.db"}, "sources": list(sources)}
        path.write_text(yaml.safe_dump(document), encoding="utf-8")

    write(source("a"), source("b", "5m"))
    loaded = load_config(path)

    async def scenario() -> list[list[str]]:
        with Store(loaded.store.sqlalchemy_url()) as store:
            daemon = Daemon(path, loaded, store)
            daemon.scheduler.start(paused=True)
            try:
                apply_schedules(daemon.scheduler, daemon.config, daemon.run_source)
                seen = [sorted(job.name for job in daemon.scheduler.get_jobs())]
                await daemon.reload("test")  # unchanged file
                seen.append(sorted(job.name for job in daemon.scheduler.get_jobs()))
                write(source("a", "2m"), source("b", "5m"), source("c"))
                await daemon.reload("test")
                seen.append(sorted(job.name for job in daemon.scheduler.get_jobs()))
                path.write_text("sources: [", encoding="utf-8")  # broken: keep the old jobs
                await daemon.reload("test")
                seen.append(sorted(job.name for job in daemon.scheduler.get_jobs()))
            finally:
                daemon.scheduler.shutdown(wait=False)
                await asyncio.sleep(0)
        return seen

    first, unchanged, changed, kept = asyncio.run(scenario())
    assert first == unchanged == ["a: every 15m, jitter 30s", "b: every 5m, jitter 30s"]
    assert changed == [
        "a: every 2m, jitter 30s",
        "b: every 5m, jitter 30s",
        "c: every 15m, jitter 30s",
    ]
    assert kept == changed
