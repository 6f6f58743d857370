"""The retry policy of every source request, on tenacity: which failures are retried, how long
to wait (the vendor's `Retry-After`, else full-jitter exponential backoff), when to give up.

The policy is entered only after a request's first attempt failed. Nearly every request
succeeds at once, and then no retry controller is built at all: one `AsyncRetrying` per
request cost ~28 µs of CPU (docs/performance.md). The failed first attempt is handed in and
replayed as tenacity's attempt 1, so attempts are numbered, waited for and budgeted exactly as
if tenacity had made it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt
from tenacity.stop import stop_base
from tenacity.wait import wait_base, wait_random_exponential

from connector.errors import RetriableError, RetriesExhausted, SourceError
from connector.settings import HttpSettings

T = TypeVar("T")

# What is worth another attempt: the classification's "retry" (429, 5xx, ...) and transport
# failures (timeouts, refused or dropped connections). A rejected certificate never gets here:
# the client turns it into `CertificateRejected`, a `SourceError`, before the policy sees it.
RETRIED: tuple[type[Exception], ...] = (RetriableError, httpx.TransportError)

# Told of each retry before its wait: (failed attempt number, its failure, seconds to wait).
RetryListener = Callable[[int, BaseException, float], None]


def _failure(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome is not None else None


def _retry_after(state: RetryCallState) -> float | None:
    failure = _failure(state)
    return failure.retry_after if isinstance(failure, RetriableError) else None


class wait_retry_after(wait_base):
    """The vendor's `Retry-After` when the failure carries one, else `fallback`. (This and
    the stop below are named in lower case, like the tenacity strategies they join.)"""

    def __init__(self, fallback: wait_base) -> None:
        self.fallback = fallback

    def __call__(self, retry_state: RetryCallState) -> float:
        retry_after = _retry_after(retry_state)
        return retry_after if retry_after is not None else self.fallback(retry_state)


class stop_if_retry_after_beyond(stop_base):
    """Stop when the vendor asks for a longer wait than `limit` seconds: it is down, and the
    run must not hang for an hour on one request."""

    def __init__(self, limit: float) -> None:
        self.limit = limit

    def __call__(self, retry_state: RetryCallState) -> bool:
        retry_after = _retry_after(retry_state)
        return retry_after is not None and retry_after > self.limit


class RetryPolicy:
    """One source's retry settings as tenacity strategies, built once per client; the
    `AsyncRetrying` controller itself is built per failing request (`after_failure`)."""

    def __init__(
        self,
        settings: HttpSettings,
        *,
        describe: Callable[[BaseException], str],
        on_retry: RetryListener,
    ) -> None:
        self.attempts = settings.max_retries + 1
        self.max_retry_after = settings.max_retry_after.total_seconds()
        self._describe = describe
        self._on_retry = on_retry
        self.retry = retry_if_exception_type(RETRIED)
        self.stop = stop_after_attempt(self.attempts) | stop_if_retry_after_beyond(
            self.max_retry_after
        )
        # Full jitter (uniform between 0 and the exponential step): spreads the retries of
        # concurrent requests instead of synchronising them.
        self.wait = wait_retry_after(
            wait_random_exponential(
                multiplier=settings.backoff_base.total_seconds(),
                max=settings.backoff_max.total_seconds(),
            )
        )

    async def after_failure(
        self, failure: BaseException, again: Callable[[], Awaitable[T]], what: str
    ) -> T:
        """The result of `again()` (a fresh attempt) retried under this policy, the first
        attempt having failed with `failure`. `what` ("GET invoices") names the request in the
        error that ends a hopeless retry: `RetriesExhausted`, or a `SourceError` at once when
        the vendor asks for a longer wait than `max_retry_after`."""
        replay = [failure]

        async def attempt() -> T:
            if replay:  # tenacity's attempt 1 is the one that already failed
                raise replay.pop()
            return await again()

        retrying = AsyncRetrying(
            sleep=asyncio.sleep,
            stop=self.stop,
            wait=self.wait,
            retry=self.retry,
            before_sleep=self._before_sleep,
            retry_error_callback=lambda state: self._give_up(state, what),
        )
        result: T = await retrying(attempt)
        return result

    def _before_sleep(self, state: RetryCallState) -> None:
        failure = _failure(state)
        assert failure is not None, "tenacity sleeps only after a failed attempt"
        self._on_retry(state.attempt_number, failure, state.upcoming_sleep)

    def _give_up(self, state: RetryCallState, what: str) -> NoReturn:
        failure = _failure(state)
        assert failure is not None, "tenacity gives up only after a failed attempt"
        retry_after = _retry_after(state)
        if retry_after is not None and retry_after > self.max_retry_after:
            raise SourceError(
                f"{failure} (Retry-After {retry_after:.0f}s exceeds {self.max_retry_after:.0f}s)"
            ) from None
        raise RetriesExhausted(
            f"{what} still failing after {state.attempt_number} attempts: "
            + self._describe(failure)
        ) from None
