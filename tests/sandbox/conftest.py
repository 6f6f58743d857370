"""Shared fixtures for the sandbox tests: one read-only server per module and a factory for
servers that a test is free to reconfigure (faults, latency, mutations)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from connector.sandbox import SandboxOptions, SandboxServer

# Enough invoices and defects that every defect kind appears at least once (kinds are handed out
# round-robin), while staying small enough to start in milliseconds.
READ_ONLY_OPTIONS = SandboxOptions(invoices=300, seed=7, defect_rate=0.2)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    """A shared server; tests using it must not change data, faults or latency."""
    with SandboxServer(READ_ONLY_OPTIONS) as server:
        yield server


@pytest.fixture
def make_sandbox() -> Iterator[Callable[..., SandboxServer]]:
    """Start a private server with the given option overrides; stopped after the test."""
    started: list[SandboxServer] = []

    def make(**overrides: Any) -> SandboxServer:
        server = SandboxServer(SandboxOptions(**{"invoices": 50, "seed": 3, **overrides}))
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
