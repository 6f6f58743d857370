"""Contract tests of `connector serve`: schemathesis drives the server from its own published
OpenAPI document (bounded examples), and hypothesis checks the filters: for random stores and
random filter combinations, the union of the pages equals the filtered set exactly."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import positive_data_acceptance

from connector.model import Invoice, InvoiceStatus
from connector.store import Store
from connector.store.store import sqlite_url_for
from tests.test_serve_kit import ALL_KEY, Served, every_page, invoice, serve_config, serving, write

AUTH = {"Authorization": f"Bearer {ALL_KEY}"}


def test_the_server_keeps_to_its_openapi_document(tmp_path: Path) -> None:
    """Every operation of /openapi.json, a bounded number of generated requests each (valid
    and invalid), over loopback. (`schemathesis.pytest.from_fixture` does not run on this
    pytest, so the operations' strategies are driven by hypothesis directly.)"""
    url = sqlite_url_for(tmp_path / "store.db")
    with Store(url) as store:
        write(store, "clinic-a", [invoice("clinic-a", n) for n in range(12)], ["INV-00003"])
    with serving(serve_config(url)) as served:
        schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
        results = list(schema.get_all_operations())
        # An operation the document describes badly is an Err: a failure of this test.
        assert all(isinstance(result, Ok) for result in results), results
        operations = [result.ok() for result in results if isinstance(result, Ok)]
        assert {op.path for op in operations} >= {"/api/v1/invoices", "/healthz"}
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(max_examples=15, suppress_health_check=list(HealthCheck))
            def keeps_to_the_document(case: Any) -> None:
                # Schema-valid values can still be refused with a documented 400: a cursor
                # this server never gave out, date_from after date_to, 2025-02-30. Every
                # other check (documented status codes, bodies and headers, no 5xx) runs.
                case.call_and_validate(headers=AUTH, excluded_checks=[positive_data_acceptance])

            keeps_to_the_document()


# ----------------------------------------------------------------------------- filters

_sources = itertools.count()
STATUSES = list(InvoiceStatus)
DAYS = [date(2025, 1, d) for d in range(1, 6)]


@dataclass(frozen=True)
class Version:
    number: int
    day: date
    status: InvoiceStatus


versions = st.builds(
    Version,
    st.integers(0, 14),
    st.sampled_from(DAYS),
    st.sampled_from(STATUSES),
)


@pytest.fixture
def served_store(store_url: str) -> Iterator[tuple[Served, str]]:
    with Store(store_url):
        pass  # created and migrated
    with serving(serve_config(store_url)) as served:
        yield served, store_url


@given(
    first=st.lists(versions, max_size=14),
    second=st.lists(versions, max_size=8),
    quarantined=st.sets(st.integers(0, 14), max_size=3),
    status=st.none() | st.sampled_from([s.value for s in STATUSES]),
    include_void=st.booleans(),
    date_from=st.none() | st.sampled_from(DAYS),
    date_to=st.none() | st.sampled_from(DAYS),
    since_second=st.booleans(),
    limit=st.integers(2, 6),
    by_cursor=st.booleans(),
)
@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_paged_union_is_exactly_the_filtered_set(
    served_store: tuple[Served, str],
    first: list[Version],
    second: list[Version],
    quarantined: set[int],
    status: str | None,
    include_void: bool,
    date_from: date | None,
    date_to: date | None,
    since_second: bool,
    limit: int,
    by_cursor: bool,
) -> None:
    served, url = served_store
    source = f"h{next(_sources)}"  # every example is a store of its own

    def batch(found: list[Version]) -> list[Invoice]:
        latest = {v.number: v for v in found}  # the last copy of an id in a batch wins
        return [invoice(source, v.number, day=v.day, status=v.status) for v in latest.values()]

    with Store(url) as store:
        write(store, source, batch(first))
        between = datetime.now(UTC)
        write(store, source, batch(second), [f"INV-{n:05d}" for n in sorted(quarantined)])
    # Which batch last wrote each id: the second rewrites an id only if its content changed.
    current = {v.number: (v, 1) for v in first}
    for v in {v.number: v for v in second}.values():
        if current.get(v.number, (None, 0))[0] != v:
            current[v.number] = (v, 2)
    expected = {
        f"{source}:INV-{n:05d}"
        for n, (v, written_in) in current.items()
        if n not in quarantined
        and (v.status.value == status if status else include_void or v.status != "void")
        and (date_from is None or v.day >= date_from)
        and (date_to is None or v.day <= date_to)
        and (not since_second or written_in == 2)
    }
    params: dict[str, Any] = {"source": source, "limit": limit, "include_void": include_void}
    for name, value in (("status", status), ("date_from", date_from), ("date_to", date_to)):
        if value is not None:
            params[name] = str(value)
    if since_second:
        params["updated_since"] = between.isoformat()
    with served.client() as client:
        if date_from and date_to and date_from > date_to:
            assert client.get("/api/v1/invoices", params=params).status_code == 400
            return
        listed = every_page(client, params, cursor=by_cursor)
        total = client.get("/api/v1/invoices", params=params).json()["total"]
    assert len(listed) == len(set(listed))
    assert set(listed) == expected, (params, first, second, quarantined)
    assert total == len(expected)
