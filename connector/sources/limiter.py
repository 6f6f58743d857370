"""The adaptive bound on one source's requests in flight: it finds how much concurrency the
vendor serves well, from the latency of its answers and its 429/503/timeouts, between a floor and
the configured ceiling (`http.concurrency`). The rate limit (`http.requests_per_minute`) is a
separate, hard bound that this never loosens.

The rule is a latency gradient, like Netflix concurrency-limits' Gradient2: per window of about
one round trip (`limit` completed requests), the window's mean round trip is compared with the
fastest window seen without queueing (the baseline). A vendor that answers as fast as ever
(within `RTT_TOLERANCE`) gets `sqrt(limit)` more requests; one whose answers take `g` times
longer is asked for about `limit / g` (plus the same small queue), so a vendor that serves only
K at once holds the limit near K. Until the first cut the limit grows by one per answer that
comes as fast as the fastest yet (doubling every round trip), as TCP's slow start does: a short
sync must not spend itself climbing. A 429, 503, 504 or timeout in a
window cuts the limit by a quarter at once (once per round trip). Retries queue ahead. The
baseline is measured again every `PROBE_EVERY` windows at half the limit, so a vendor that
became slower for good (not from our load) is not mistaken for one we overload forever. When
our own event loop is the bottleneck, latency says nothing about the vendor: the limit then
holds twice the bandwidth-delay product, as BBR does (`SATURATED`).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import deque

# A window closes after this many samples at least, so that a limit of 1-2 does not react to
# every single answer.
MIN_WINDOW = 8
# The multiplicative cut on an overload signal (429/503/504/timeout): TCP's halving is too
# harsh for a vendor that refuses a few requests over its bound, a tenth (AIMD's usual) too slow.
OVERLOAD_BACKOFF = 0.75
# A latency gradient is never taken below this in one window: one window slowed by something
# else (our own event loop busy for a moment) must not throw away most of the limit.
MIN_GRADIENT = 0.5
# Round trips this much longer than the baseline still count as "as fast as ever": the client's
# own event loop (mapping, the store's writes, other processes on the machine) adds this much
# jitter without any queue at the vendor. Gradient2's default is 1.5; a vendor's queue shows
# earlier here, for a limit nearer its capacity.
RTT_TOLERANCE = 1.1
# In slow start, an answer this much slower than the fastest one yet no longer grows the
# limit (a single answer is noisier than a window's mean, hence Gradient2's default tolerance
# rather than `RTT_TOLERANCE`).
SLOW_START_TOLERANCE = 1.5
# Windows between two measurements of the baseline at half the limit.
PROBE_EVERY = 100
# The share of a window our event loop's thread ran or waited for a CPU, above which it is the
# bottleneck: its own queue, not the vendor's, made the round trips longer.
SATURATED = 0.8
# With our loop the bottleneck, no fewer than this in flight: below it the loop pays a wake-up
# for nearly every answer (measured at 0 ms latency: 16 in flight beat both 8 and 64).
SATURATED_FLOOR = 16
# The delivery rate is the best of this many recent windows (BBR's max filter): a window in
# which our loop stalled on other work says little about what the pipe can carry.
RATE_WINDOWS = 10
_SCHEDSTAT = "/proc/thread-self/schedstat"
_HAS_SCHEDSTAT = os.path.exists(_SCHEDSTAT)


def loop_time() -> float:
    """Seconds this thread has run or been ready to run but waited for a CPU (Linux's
    schedstat); elsewhere its CPU time alone."""
    if _HAS_SCHEDSTAT:
        try:
            with open(_SCHEDSTAT, "rb") as stat:
                ran, waited = stat.read().split()[:2]
            return (int(ran) + int(waited)) / 1e9
        except (OSError, ValueError):
            pass  # no /proc in this sandboxed process after all: the CPU time will do
    return time.thread_time()


class AdaptiveConcurrency:
    """A semaphore whose size (`limit`) follows the vendor. `acquire` before a request;
    `release` after it with its round-trip time (None: no sample, e.g. a streamed answer or
    one that failed for a reason that says nothing about load) and whether the vendor said
    it is overloaded. With `adaptive` false the limit stays at `ceiling`."""

    def __init__(
        self, ceiling: int, *, initial: int = 4, minimum: int = 1, adaptive: bool = True
    ) -> None:
        self.ceiling = ceiling
        self.minimum = min(minimum, ceiling)
        self.adaptive = adaptive
        start = max(self.minimum, min(initial, ceiling)) if adaptive else ceiling
        self._limit = float(start)
        self.limit = start  # the integer bound acquire() compares with
        self.in_flight = 0
        self.baseline_rtt = math.inf  # seconds: the fastest window's mean round trip
        self.windows = 0  # windows closed so far (how often the limit was reconsidered)
        # Windows in which our own loop was the bottleneck (the `SATURATED` rule held the limit).
        self.saturated_windows = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        # The current window.
        self._samples = 0
        self._timed = 0
        self._window_rtt = 0.0  # the sum of the window's round trips
        self._overloaded = False
        self._busy = False  # the limit was reached: the window says something about it
        self._window_started = time.monotonic()
        self._loop_started = loop_time()
        # Answers to requests sent before the last cut: they describe the old limit.
        self._ignore = 0
        self._probe_restore: float | None = None
        self._slow_start = adaptive
        self._fastest_rtt = math.inf  # the fastest single answer: slow start's yardstick
        self._rates: deque[float] = deque(maxlen=RATE_WINDOWS)  # answers per second
        # The limit at which the vendor last refused (429/503/...): the saturated rule below
        # never jumps past it, as only latency-led growth may probe above a refusal again.
        self._refused_at = math.inf

    async def acquire(self, first: bool = False) -> None:
        """A place under the limit; `first` queues ahead of every waiter (a retry)."""
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            if self.in_flight >= self.limit:
                self._busy = True
            return
        self._busy = True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if first:
            self._waiters.appendleft(waiter)
        else:
            self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # Handed a place just as it was cancelled: hand it on.
                self.in_flight -= 1
                self._wake()
            else:
                self._waiters.remove(waiter)
            raise

    def release(self, rtt: float | None, overloaded: bool = False) -> None:
        self.in_flight -= 1
        if self.adaptive and (rtt is not None or overloaded):
            if self._ignore:
                self._ignore -= 1
            else:
                if overloaded:
                    self._overloaded = True
                elif rtt is not None:
                    self._window_rtt += rtt
                    self._timed += 1
                    if self._slow_start:
                        self._grow_per_answer(rtt)
                self._samples += 1
                # An overload closes the window at once: the cut must not wait for `limit`
                # more answers (the answers still out are then ignored, one cut per round trip).
                if overloaded or self._samples >= max(MIN_WINDOW, self.limit):
                    self._close_window()
        if self._waiters:
            self._wake()

    def _grow_per_answer(self, rtt: float) -> None:
        """Slow start as TCP's: one more request in flight per answer as fast as the fastest
        yet, so the limit doubles every round trip without waiting for a window to close."""
        if rtt < self._fastest_rtt:
            self._fastest_rtt = rtt
        if self._busy and rtt <= SLOW_START_TOLERANCE * self._fastest_rtt:
            self._set(self._limit + 1)

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                self._busy = True  # someone was waiting: the limit is what holds the source
                waiter.set_result(None)

    def _close_window(self) -> None:
        rtt = self._window_rtt / self._timed if self._timed else math.inf
        overloaded, busy, answers = self._overloaded, self._busy, self._samples
        self._samples, self._timed, self._window_rtt, self._overloaded = 0, 0, 0.0, False
        wall, loop = self._window_started, self._loop_started
        self._window_started, self._loop_started = time.monotonic(), loop_time()
        # Our own event loop running (or waiting for a CPU) all the window: then the round trips
        # grew in our queue, not the vendor's (a vendor answering in no time, a busy machine).
        seconds = max(1e-9, self._window_started - wall)
        saturated = self._loop_started - loop >= SATURATED * seconds
        self._rates.append(answers / seconds)
        self._busy = self.in_flight >= self.limit
        self.windows += 1
        limit = self._limit
        if self._probe_restore is not None:
            # This window ran at half the limit: its round trip is the vendor's latency without
            # our queue, whatever it was before.
            if rtt < math.inf:
                self.baseline_rtt = rtt
            limit, self._probe_restore = self._probe_restore, None
            self._refused_at = math.inf  # a vendor that recovered gets found again
            if overloaded:
                self._refused_at = limit
                limit *= OVERLOAD_BACKOFF
            self._set(limit)
            return
        if overloaded:
            self._refused_at = limit
            self._cut(limit * OVERLOAD_BACKOFF)
            return
        if rtt == math.inf:
            return
        if rtt < self.baseline_rtt:
            self.baseline_rtt = rtt
        if self.windows % PROBE_EVERY == 0:
            self._probe_restore = limit
            self._cut(limit / 2)
            return
        if saturated:
            self.saturated_windows += 1
            # Latency says nothing now. Keep twice what the vendor needs to stay busy at the
            # rate we manage (BBR's bandwidth-delay product and gain): more only waits in our
            # own queue, fewer leaves the vendor idle.
            wanted = max(SATURATED_FLOOR, 2 * max(self._rates) * self.baseline_rtt)
            # A vendor that refused at some limit has said more than latency can.
            wanted = min(wanted, self._refused_at)
            if wanted < limit:
                self._cut(wanted)
            elif busy:
                self._set(wanted)
            return
        gradient = max(MIN_GRADIENT, min(1.0, RTT_TOLERANCE * self.baseline_rtt / rtt))
        wanted = limit * gradient + math.sqrt(limit)
        if wanted > limit and not busy:
            return  # the source did not use the limit it has: no evidence that more helps
        if self._slow_start and gradient == 1.0:
            return  # growing per answer (`_grow_per_answer`)
        elif wanted < limit:
            self._cut(wanted)
        else:
            self._set(wanted)

    def _cut(self, limit: float) -> None:
        self._slow_start = False
        self._set(limit)
        self._ignore = self.in_flight

    def _set(self, limit: float) -> None:
        self._limit = max(float(self.minimum), min(float(self.ceiling), limit))
        self.limit = max(self.minimum, int(self._limit))
        if self._waiters:
            self._wake()
