"""Connector configs for a running sandbox: what `connector demo` and the tests sync."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from connector.config import build_config
from connector.sandbox import SandboxServer
from connector.settings import AppConfig


def sandbox_sources(
    server: SandboxServer, names: Sequence[str] | None = None, **overrides: Any
) -> list[dict[str, Any]]:
    """One raw source config per running sandbox dialect (the dialect knows its credentials)."""
    sources = []
    for name in names or server.dialect_names:
        dialect = server.dialect(name)
        source = dialect.connector_source(server.api_url(name))
        source.update(overrides.get(name, {}))
        sources.append(source)
    return sources


def sandbox_config(
    server: SandboxServer,
    store_url: str,
    names: Sequence[str] | None = None,
    **overrides: Any,
) -> AppConfig:
    raw = {"store": {"url": store_url}, "sources": sandbox_sources(server, names, **overrides)}
    return build_config(raw, env={})
