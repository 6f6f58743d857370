"""Schedule and duration grammar: `15m`, `every 2h`, `90` (seconds) or a 5-field crontab.

A leaf: the settings models validate schedules with it when the config loads (by building the
APScheduler trigger), and the daemon turns them into jobs. Crontabs are evaluated in UTC and
number the day of week as cron does (0 and 7 are Sunday).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import Any

_DURATION = re.compile(r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_EVERY = re.compile(r"^\s*every\s+", re.IGNORECASE)
_CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def parse_duration(value: Any) -> timedelta:
    """`90`, `90s`, `15m`, `2h`, `7d`, `1w` → timedelta (a bare number is seconds)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return timedelta(seconds=float(match["n"]) * _UNIT_SECONDS[match["unit"] or "s"])
    raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 15m, 2h, 7d)")


@dataclass(frozen=True)
class Schedule:
    """A validated schedule: either an interval or the five fields of a crontab line."""

    text: str
    interval: timedelta | None = None
    cron: tuple[str, str, str, str, str] | None = None

    def describe(self) -> str:
        if self.interval is not None:
            return f"every {short_span(self.interval)}"
        assert self.cron is not None
        return "cron " + " ".join(self.cron)

    def trigger(self, jitter: timedelta = timedelta(0)) -> Any:
        """The APScheduler trigger; raises ValueError when the schedule cannot be built."""
        # Imported here: a sync or a backfill that never meets a schedule does not load
        # APScheduler at all.
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger

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


def short_span(span: timedelta) -> str:
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
