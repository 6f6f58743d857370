"""Pagination anomalies: a list endpoint that misbehaves the way real vendors' lists do.

Armed per dialect on a running sandbox (`SandboxServer.set_anomaly`); the dialect's `list_shape`
says where its list answers keep records, total and next link, so this module needs no
per-vendor knowledge.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import orjson
from aiohttp import web

from ._dialect import Dialect, ListShape

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
