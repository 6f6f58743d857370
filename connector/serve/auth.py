"""API keys of `connector serve`: one per consumer, kept only as SHA-256 digests in the config,
checked in constant time, each scoped to the sources its consumer may read.

A presented key is hashed once and compared with every consumer's digest by
`hmac.compare_digest`, without stopping at a match, so the time taken says nothing about
which digest (or how much of it) matched. Keys never reach a log line or an answer.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from connector.settings import ServeConsumer

ALL_SOURCES = "*"


def hash_key(key: str) -> str:
    """What the config keeps of a key (`key_sha256`)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A fresh random key (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Consumer:
    name: str
    # None: every source ("*" in the config).
    sources: frozenset[str] | None

    def may_read(self, source: str) -> bool:
        return self.sources is None or source in self.sources

    def scope(self, requested: str | None) -> tuple[str, ...] | None:
        """The sources a request may see: the one it names, or all of the consumer's."""
        if requested is not None:
            return (requested,)
        return None if self.sources is None else tuple(sorted(self.sources))


class KeyRing:
    def __init__(self, consumers: Sequence[ServeConsumer]) -> None:
        self._entries = [
            (
                c.key_sha256.encode("ascii"),
                Consumer(c.name, None if ALL_SOURCES in c.sources else frozenset(c.sources)),
            )
            for c in consumers
        ]

    def identify(self, presented: str) -> Consumer | None:
        digest = hash_key(presented).encode("ascii")
        found: Consumer | None = None
        for expected, consumer in self._entries:
            if hmac.compare_digest(digest, expected):
                found = consumer
        return found


def bearer_key(authorization: str | None) -> str | None:
    """The key of an `Authorization: Bearer <key>` header, or None."""
    if not authorization:
        return None
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None
