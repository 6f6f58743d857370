"""Daemon schedules turned into exactly one APScheduler job a source.

The grammar (intervals and crontabs) is `connector.schedule`; schedules are checked when the
config loads by building their trigger, so a bad one is a `ConfigError` naming it. Job ids
derive from source names: applying a changed config again reschedules, adds or removes jobs and
never duplicates one. Every job runs with `max_instances=1` and `coalesce=True`, so a slow source
never piles up runs. APScheduler stays on 3.x (4 is a pre-release).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.base import BaseScheduler

from connector.schedule import Schedule, parse_schedule, short_span
from connector.settings import AppConfig, DaemonSettings, SourceConfig

JOB_PREFIX = "sync:"


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
        label = f"{name}: {schedule.describe()}, jitter {short_span(settings.jitter)}"
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
