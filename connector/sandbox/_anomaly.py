"""Pagination anomalies, hostile bodies and overload: a list endpoint that misbehaves the way
real vendors' lists do, an answer built to exhaust a client's memory or patience, or a vendor
that slows down or refuses above K concurrent requests.

Armed per dialect on a running sandbox (`SandboxServer.set_anomaly`, `set_hostile_body`,
`set_overload` for a vendor that degrades above K concurrent requests); the
dialect's `list_shape` says where its list answers keep records, total and next link, so this
module needs no per-vendor knowledge.
"""

from __future__ import annotations

import asyncio
import json
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson
from aiohttp import web

from ._dialect import Dialect, ListShape, json_response

ANOMALIES: tuple[str, ...] = (
    "duplicate",
    "insert",
    "delete",
    "total_drift",
    "total_flapping",
    "empty_page",
    "next_loop",
)
# Which anomalies each list style can show.
_STYLE_ANOMALIES: dict[str, frozenset[str]] = {
    "page": frozenset(ANOMALIES) - {"next_loop"},
    "offset": frozenset(ANOMALIES) - {"next_loop"},
    "link": frozenset({"next_loop"}),
}


class ListAnomaly:
    """One misbehaviour of a list endpoint, applied to its 200 answers as they go out.

    duplicate       the second page starts with a copy of the first page's last record
    insert          after the first page, a new invoice appears at the front of the list
                    (every later record shifts one place back: one is served twice)
    delete          after the first page, its first invoice is deleted (every later record
                    shifts one place forward: one would be skipped)
    total_drift     after the first page, the total says one more than there is, from then on
    total_flapping  the total changes on every answer (no pass ever sees a stable total)
    empty_page      the second page comes back empty once, total unchanged
    next_loop       (next-link lists) every page after the first links back to the second page
    """

    def __init__(self, shape: ListShape, dialect: Dialect, mode: str) -> None:
        self.shape = shape
        self.dialect = dialect
        self.mode = mode
        self.answers = 0
        self.fired = False
        self.remembered: Any = None
        self.log: list[str] = []
        self._lock = threading.Lock()

    @classmethod
    def create(cls, dialect: Dialect, mode: str) -> ListAnomaly:
        name, shape = dialect.name, dialect.list_shape
        if shape is None:
            raise ValueError(f"dialect {name!r} has no list endpoint the sandbox can disturb")
        if mode not in _STYLE_ANOMALIES[shape.style]:
            allowed = ", ".join(sorted(_STYLE_ANOMALIES[shape.style]))
            raise ValueError(f"anomaly {mode!r} does not apply to {name} (use: {allowed})")
        return cls(shape, dialect, mode)

    def _page_index(self, request: web.Request) -> int | None:
        query = request.query
        try:
            if self.shape.style == "page":
                return int(query.get("page", "1")) - 1
            if self.shape.style == "offset":
                limit = int(query.get("limit", "100"))
                return int(query.get("offset", "0")) // max(1, limit)
        except ValueError:
            return None
        return None

    def apply(self, request: web.Request, response: web.Response) -> web.Response:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else request.path
        if request.method != "GET" or route != self.shape.route or response.status != 200:
            return response
        if not isinstance(response.body, bytes):
            return response
        # Floats kept as their exact text: re-rendering must not turn 1250.00 into 1250.0.
        body = json.loads(response.body, parse_float=orjson.Fragment)
        records = _dig(body, self.shape.records)
        if not isinstance(records, list):
            return response
        with self._lock:
            self.answers += 1
            changed = self._change(request, body, records)
        if not changed:
            return response
        return web.Response(
            body=orjson.dumps(body),
            status=response.status,
            content_type="application/json",
        )

    def _change(self, request: web.Request, body: Any, records: list[Any]) -> bool:
        mode, index = self.mode, self._page_index(request)
        if mode == "next_loop":
            link = _dig(body, self.shape.next_link or "")
            if self.remembered is None:
                self.remembered = link
                return False
            if link is None:
                return False
            _put(body, self.shape.next_link or "", self.remembered)
            self.log.append(f"next link looped back to {self.remembered}")
            return True
        if mode == "total_flapping" and self.shape.total:
            total = _dig(body, self.shape.total)
            if isinstance(total, int):
                _put(body, self.shape.total, total + self.answers % 3)
                return True
            return False
        if mode == "total_drift" and self.shape.total and self.fired:
            total = _dig(body, self.shape.total)
            if isinstance(total, int):
                _put(body, self.shape.total, total + 1)
                return True
            return False
        if index == 0 and not self.fired:
            if mode == "duplicate" and records:
                self.remembered = records[-1]
            elif mode == "insert":
                self._insert_front()
                self.fired = True
            elif mode == "delete" and records:
                self._delete(records[0])
                self.fired = True
            elif mode == "total_drift":
                self.fired = True
            return False
        if index == 1 and not self.fired:
            if mode == "duplicate" and self.remembered is not None:
                records.insert(0, self.remembered)
                self.log.append(f"duplicated {self.remembered.get(self.shape.id_key)}")
                self.fired = True
                return True
            if mode == "empty_page":
                records.clear()
                self.log.append("served page 2 empty")
                self.fired = True
                return True
        return False

    def _insert_front(self) -> None:
        dataset = self.dialect.dataset
        invoice = dataset.add()
        with dataset.lock:
            dataset.invoices.remove(invoice)
            invoice.invoice_date = dataset.invoices[0].invoice_date
            dataset.invoices.insert(0, invoice)
            dataset.version += 1
        self.log.append(f"inserted {invoice.id} at the front")

    def _delete(self, record: Any) -> None:
        dataset = self.dialect.dataset
        vendor_id = str(record.get(self.shape.id_key)) if isinstance(record, dict) else None
        with dataset.lock:
            truth = next(
                (inv.id for inv in dataset.invoices if self.dialect.vendor_id(inv) == vendor_id),
                None,
            )
        if truth is not None:
            dataset.delete(truth)
            self.log.append(f"deleted {truth}")


def _dig(body: Any, path: str) -> Any:
    node = body
    for part in filter(None, path.split(".")):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _put(body: Any, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = body
    for part in parents:
        node = node[part]
    node[last] = value


BODY_MODES: tuple[str, ...] = ("oversized", "gzip_bomb", "slow_drip")
_BLOCK = 1 << 20
# JSON whitespace: padding in front of a page keeps the answer valid JSON, however long.
_SPACES = b" " * _BLOCK
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


@dataclass(frozen=True)
class HostileBody:
    """A 200 answer of the list endpoint (any GET, for a dialect without one), sent hostile:

    oversized  `size` bytes of whitespace in front of the page, streamed 1 MB at a time
    gzip_bomb  the same with `Content-Encoding: gzip`: about `size`/1000 bytes on the wire
               (1 GB: 1 MB), never holding the inflated bytes, on the server or in the making
    slow_drip  the page, one byte every `interval_s` seconds
    """

    mode: str
    size: int = 300 * _BLOCK
    interval_s: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in BODY_MODES:
            raise ValueError(f"body mode {self.mode!r} is not one of {', '.join(BODY_MODES)}")
        if self.size < 0 or not self.interval_s > 0:
            raise ValueError("size must not be negative, interval_s must be positive")

    def applies(self, request: web.Request, response: web.StreamResponse, dialect: Dialect) -> bool:
        if request.method != "GET" or response.status != 200:
            return False
        if not isinstance(response, web.Response) or not isinstance(response.body, bytes):
            return False
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else request.path
        return dialect.list_shape is None or route == dialect.list_shape.route

    async def send(self, request: web.Request, answer: web.Response) -> web.StreamResponse:
        body = answer.body
        assert isinstance(body, bytes), "applies() checked it"
        out = web.StreamResponse(status=200, headers={"Content-Type": answer.content_type})
        if self.mode == "gzip_bomb":
            out.headers["Content-Encoding"] = "gzip"
        await out.prepare(request)
        try:
            if self.mode == "slow_drip":
                for at in range(len(body)):
                    await out.write(body[at : at + 1])
                    await asyncio.sleep(self.interval_s)
            else:
                pieces = _padding(self.size) if self.mode == "oversized" else _gzip_bomb(self.size)
                for piece in pieces:
                    await out.write(piece)
                await out.write(body if self.mode == "oversized" else _gzip_tail(self.size, body))
            await out.write_eof()
        except ConnectionError:
            pass  # the client gave up reading: what a hostile body is for
        return out


def _padding(size: int) -> Iterator[bytes]:
    for _ in range(size // _BLOCK):
        yield _SPACES
    yield _SPACES[: size % _BLOCK]


@lru_cache(maxsize=4)
def _deflated_block(length: int) -> bytes:
    """`length` spaces as raw deflate ending in a full flush: no reference back, so the same
    bytes may follow each other and decode to the spaces again each time."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return deflater.compress(_SPACES[:length]) + deflater.flush(zlib.Z_FULL_FLUSH)


def _gzip_bomb(size: int) -> Iterator[bytes]:
    """A gzip stream's header and `size` spaces, in pieces of 64 MB inflated (64 KB sent)."""
    yield _GZIP_HEADER
    blocks = size // _BLOCK
    for first in range(0, blocks, 64):
        yield _deflated_block(_BLOCK) * min(64, blocks - first)
    if size % _BLOCK:
        yield _deflated_block(size % _BLOCK)


def _gzip_tail(size: int, body: bytes) -> bytes:
    """The page itself, the final deflate block and gzip's CRC-32 and length trailer (only
    reached by a client that read the whole bomb)."""
    crc = 0
    for piece in _padding(size):
        crc = zlib.crc32(piece, crc)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    final = deflater.compress(body) + deflater.flush()
    return final + struct.pack("<II", zlib.crc32(body, crc), (size + len(body)) & 0xFFFFFFFF)


OVERLOAD_MODES: tuple[str, ...] = ("queue", "503")


class Overload:
    """A vendor that serves `capacity` requests at once as usual and degrades above that:

    queue  a request over `capacity` waits for a place, then takes the usual latency: the
           latency grows with the queue, the throughput stays `capacity` / latency
    503    a request over `capacity` is answered 503 (no Retry-After) after the usual latency

    Counted on the server loop only (entered and left in the vendor middleware)."""

    def __init__(self, capacity: int, mode: str = "queue") -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError("capacity must be a positive integer")
        if mode not in OVERLOAD_MODES:
            raise ValueError(f"overload mode {mode!r} is not one of {', '.join(OVERLOAD_MODES)}")
        self.capacity = capacity
        self.mode = mode
        self.active = 0
        self.refused = 0
        self._places = asyncio.Semaphore(capacity)

    async def enter(self) -> bool:
        """Take a place (waiting for one in "queue" mode); False: refuse this request."""
        if self.mode == "queue":
            await self._places.acquire()
        elif self.active >= self.capacity:
            self.refused += 1
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        self.active -= 1
        if self.mode == "queue":
            self._places.release()


def overload_route(arm: Callable[[Overload | None], None]) -> Any:
    """POST /_sandbox/overload {"capacity": K, "mode": "queue"|"503"}; {"capacity": null}
    disarms. `arm` installs the new state on the dialect."""

    async def set_overload(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            capacity = body.get("capacity")
            overload = None if capacity is None else Overload(capacity, body.get("mode", "queue"))
        except ValueError as exc:
            return json_response({"error": str(exc)}, status=400)
        arm(overload)
        return json_response({"capacity": capacity, "mode": body.get("mode", "queue")})

    return set_overload
