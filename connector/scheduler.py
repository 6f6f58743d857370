"""Daemon schedules: parsed and validated, and turned into exactly one APScheduler job a source.

A schedule is an interval (`15m`, `every 2h`) or a 5-field crontab (`*/5 * * * *`, evaluated in
UTC, day-of-week numbered as in cron: 0 and 7 are Sunday). Schedules are checked when the config
loads by building their trigger, so a bad one is a `ConfigError` naming it. Job ids derive from
source names: applying a changed config again reschedules, adds or removes jobs and never
duplicates one. Every job runs with `max_instances=1` and `coalesce=True`, so a slow source
never piles up runs. APScheduler stays on 3.x (4 is a pre-release); only this module imports it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from connector.config import parse_duration

if TYPE_CHECKING:
    from connector.config import AppConfig, DaemonSettings, SourceConfig

JOB_PREFIX = "sync:"
_EVERY = re.compile(r"^\s*every\s+", re.IGNORECASE)
_CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


@dataclass(frozen=True)
class Schedule:
    """A validated schedule: either an interval or the five fields of a crontab line."""

    text: str
    interval: timedelta | None = None
    cron: tuple[str, str, str, str, str] | None = None

    def describe(self) -> str:
        if self.interval is not None:
            return f"every {_short(self.interval)}"
        assert self.cron is not None
        return "cron " + " ".join(self.cron)

    def trigger(self, jitter: timedelta = timedelta(0)) -> Any:
        """The APScheduler trigger; raises ValueError when the schedule cannot be built."""
        if self.interval is not None:
            # Jitter spreads replicas and sources apart; more than half the interval would
            # turn "every 1m" into "whenever", so it is capped there.
            spread = min(jitter, self.interval / 2).total_seconds()
            return IntervalTrigger(
                seconds=self.interval.total_seconds(), jitter=spread or None, timezone=UTC
            )
        assert self.cron is not None
        minute, hour, day, month, weekday = self.cron
        return CronTrigger(
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=_cron_weekdays(weekday),
            timezone=UTC,
            jitter=jitter.total_seconds() or None,
        )


def parse_schedule(text: str) -> Schedule:
    """`15m`, `every 15m`, `90` (seconds) or a 5-field crontab; ValueError says what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a schedule must be an interval such as 15m or a 5-field cron line")
    fields = text.split()
    if len(fields) == 5:
        schedule = Schedule(text, cron=(fields[0], fields[1], fields[2], fields[3], fields[4]))
    else:
        try:
            interval = parse_duration(_EVERY.sub("", text))
        except ValueError:
            raise ValueError(
                f"invalid schedule {text!r}: expected an interval (15m, every 2h) or a "
                f"5-field cron line (*/5 * * * *), got {len(fields)} field(s)"
            ) from None
        if interval < timedelta(seconds=1):
            raise ValueError(f"invalid schedule {text!r}: the interval must be at least 1s")
        schedule = Schedule(text, interval=interval)
    try:
        schedule.trigger()
    except ValueError as exc:
        raise ValueError(f"invalid schedule {text!r}: {exc}") from None
    return schedule


def source_schedule(source: SourceConfig, daemon: DaemonSettings) -> Schedule:
    return parse_schedule(source.schedule or daemon.default_schedule)


def job_id(source_name: str) -> str:
    return JOB_PREFIX + source_name


def new_scheduler() -> AsyncIOScheduler:
    """An asyncio scheduler whose jobs never overlap themselves and collapse missed runs."""
    return AsyncIOScheduler(
        timezone=UTC,
        job_defaults={
            "max_instances": 1,
            "coalesce": True,
            # A late sync beats a skipped one: run however late, once (coalesced).
            "misfire_grace_time": None,
        },
    )


@dataclass
class JobChanges:
    added: list[str] = field(default_factory=list)
    rescheduled: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return {
            "added": self.added,
            "rescheduled": self.rescheduled,
            "removed": self.removed,
            "unchanged": self.unchanged,
        }


def apply_schedules(
    scheduler: BaseScheduler,
    config: AppConfig,
    run_source: Callable[[str], Any],
    *,
    now: datetime | None = None,
) -> JobChanges:
    """Make the scheduler hold one job per enabled source, as `config` says; idempotent.

    The job's name records its schedule, so a reload can tell an unchanged job (left alone,
    keeping its next run time) from a changed one (rescheduled in place, same id).
    Interval jobs added here run once right away; cron jobs wait for their first slot.
    """
    settings = config.daemon
    wanted = {
        job_id(s.name): (s.name, source_schedule(s, settings)) for s in config.sources if s.enabled
    }
    changes = JobChanges()
    for job in scheduler.get_jobs():
        if job.id.startswith(JOB_PREFIX) and job.id not in wanted:
            scheduler.remove_job(job.id)
            changes.removed.append(job.id)
    for ident, (name, schedule) in wanted.items():
        label = f"{name}: {schedule.describe()}, jitter {_short(settings.jitter)}"
        trigger = schedule.trigger(settings.jitter)
        existing = scheduler.get_job(ident)
        if existing is None:
            first_run = (now or datetime.now(UTC)) if schedule.interval is not None else None
            options: dict[str, Any] = {"next_run_time": first_run} if first_run else {}
            scheduler.add_job(
                run_source,
                trigger,
                args=(name,),
                id=ident,
                name=label,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
                **options,
            )
            changes.added.append(ident)
        elif existing.name != label:
            scheduler.modify_job(ident, name=label)
            scheduler.reschedule_job(ident, trigger=trigger)
            changes.rescheduled.append(ident)
        else:
            changes.unchanged.append(ident)
    return changes


def _short(span: timedelta) -> str:
    seconds = span.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _cron_weekday(token: str) -> int:
    lowered = token.lower()
    if lowered in _CRON_DAYS:
        return _CRON_DAYS.index(lowered)
    if lowered.isdigit() and 0 <= int(lowered) <= 7:
        return int(lowered)
    raise ValueError(f"day of week {token!r} is not 0-7 or sun..sat")


def _cron_weekdays(text: str) -> str:
    """Cron's day-of-week field as APScheduler 3 names (which counts 0 as Monday, not Sunday)."""
    if text == "*":
        return "*"
    days: set[int] = set()
    for part in text.split(","):
        base, slash, step_text = part.partition("/")
        if slash and not step_text.isdigit():
            raise ValueError(f"day-of-week step in {part!r} is not a number")
        step = int(step_text) if slash else 1
        if step < 1:
            raise ValueError(f"day-of-week step in {part!r} must be at least 1")
        if base == "*":
            first, last = 0, 6
        elif "-" in base:
            low, _, high = base.partition("-")
            first, last = _cron_weekday(low), _cron_weekday(high)
        else:
            first = _cron_weekday(base)
            last = 6 if slash else first
        if first > last:
            raise ValueError(f"day-of-week range {base!r} runs backwards")
        days.update(day % 7 for day in range(first, last + 1, step))
    return ",".join(_CRON_DAYS[day] for day in sorted(days))
