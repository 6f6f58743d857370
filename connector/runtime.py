"""Process-wide settings of an entry point: the garbage collector's tuning for long syncs, and
the handling of SIGINT / SIGTERM by commands that stop cleanly (`StopSignals`)."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import structlog

log = structlog.get_logger("connector.runtime")

# A sync allocates a few dozen short-lived containers per record (payload dicts, models,
# row tuples) that reference counting frees; almost none form cycles. At the default
# generation-0 threshold of 700 the collector ran every few records and cost 15-20% of a
# list-only sync's CPU (docs/performance.md). Cycles are still collected, just in larger
# steps; memory stays flat (scenario d of the benchmark).
GEN0_THRESHOLD = 50_000


def tune_garbage_collector() -> None:
    """Freeze what is alive now (imports, config: it lives as long as the process) out of
    the collector's sight, and let the collector run less often."""
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, GEN0_THRESHOLD), gen1, gen2)


# Conventional exit status of a command ended by a signal: 128 + its number (130 for SIGINT,
# 143 for SIGTERM), as a shell reports it.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_status(signum: int) -> int:
    return 128 + signum


class StopSignals:
    """SIGINT and SIGTERM for a command that stops cleanly: the first one calls `on_first`
    (which asks the work to end at its next safe point) and is remembered; a second one exits
    at once, without cleanup, with the signal's exit status.

    Plain `signal.signal` handlers, installed before any event loop exists: a Ctrl-C while
    the config loads must not raise KeyboardInterrupt with a traceback, and `asyncio.run`
    leaves a SIGINT handler it did not install alone.
    """

    def __init__(self, on_first: Callable[[int], None] | None = None) -> None:
        self._on_first = on_first
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def received(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return exit_status(self.signum or signal.SIGINT)

    def on_first(self, callback: Callable[[int], None]) -> None:
        """What the first signal does from now on (the work to stop may be built later); if
        a signal already came, `callback` runs now."""
        self._on_first = callback
        if self.signum is not None:
            callback(self.signum)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.signum is not None:
            # Stopping already: a second signal during the rest of the shutdown still means
            # "now", so the handler stays.
            return
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            # The operator insists: no more waiting. What is committed stays committed; the
            # run row left "running" is closed as interrupted by the next run of the source.
            _log_aside("process.stopped_at_once", signal=name).join(1.0)
            _flush_standard_streams()
            os._exit(exit_status(signum))
        self.signum = signum
        _log_aside(
            "process.stopping",
            signal=name,
            detail="finishing the batch being written; send the signal again to stop at once",
        )
        if self._on_first is not None:
            self._on_first(signum)


def _log_aside(event: str, **fields: Any) -> threading.Thread:
    """Log from another thread: the signal may have interrupted this one inside a log call,
    and writing to stderr again from here would be a reentrant call on its buffer."""
    writer = threading.Thread(target=log.warning, args=(event,), kwargs=fields)
    writer.start()
    return writer


def _flush_standard_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
