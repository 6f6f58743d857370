"""Property tests: every vendor mapping, fed arbitrary JSON-like values and mutations of its own
fixture payloads through `engine.RecordProcessor`, only ever accepts or rejects with issues;
the JSON page parsing (`paginate.records_at` / `total_at`, `bodies.decode_json`) only ever
returns data or raises `ContractError`."""

from __future__ import annotations

import contextlib
import importlib
import json
import pkgutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mappings
from connector.errors import ContractError
from connector.mapping.kit import SourceMapping
from connector.pipeline.engine import RecordProcessor
from connector.sources.bodies import decode_json
from connector.sources.paginate import records_at, total_at

FIXTURES = Path(__file__).parents[1] / "fixtures"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def all_mappings() -> dict[str, SourceMapping]:
    found = {}
    for info in pkgutil.iter_modules(mappings.__path__):
        module = importlib.import_module(f"mappings.{info.name}")
        mapping = getattr(module, "MAPPING", None)
        if isinstance(mapping, SourceMapping):
            found[info.name] = mapping
    return found


MAPPINGS = all_mappings()


def fixture_payloads(vendor: str) -> list[Any]:
    folder = FIXTURES / vendor
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    paths += sorted(FIXTURES.glob(f"{vendor}_*.json"))
    payloads = []
    for path in paths:
        if path.name.endswith(".expected.json"):
            continue
        body = json.loads(path.read_text(encoding="utf-8"))
        payloads.extend(body if isinstance(body, list) else [body])
    return payloads


def processor(vendor: str) -> RecordProcessor:
    mapping = MAPPINGS[vendor]
    return RecordProcessor(mapping, mapping.context(f"fuzz-{vendor}", currency="USD"))


def check(proc: RecordProcessor, raw: Any) -> None:
    accepted, rejected, _ = proc.process(raw)
    assert (accepted is None) != (rejected is None), "exactly one outcome"
    if rejected is not None:
        assert rejected.issues, "a rejection names its reasons"
        assert rejected.record_key, "a rejection is filed under a key"


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["", "NaN", "1e400", "-0.001", "2025-02-30", "$1,000.00", "paid", "\x00"])
)
json_like = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=20,
)


def mutate(payload: Any, data: st.DataObject) -> Any:
    """Replace, delete or retype one value somewhere inside the payload."""
    if isinstance(payload, dict) and payload:
        key = data.draw(st.sampled_from(sorted(payload, key=str)))
        action = data.draw(st.sampled_from(["replace", "delete", "recurse"]))
        copy = dict(payload)
        if action == "delete":
            del copy[key]
        elif action == "replace":
            copy[key] = data.draw(json_like)
        else:
            copy[key] = mutate(copy[key], data)
        return copy
    if isinstance(payload, list) and payload:
        index = data.draw(st.integers(0, len(payload) - 1))
        elements = list(payload)
        elements[index] = mutate(elements[index], data)
        return elements
    return data.draw(json_like)


@pytest.mark.parametrize("vendor", sorted(MAPPINGS))
@FUZZ
@given(raw=json_like)
def test_any_json_value_is_accepted_or_rejected(vendor: str, raw: Any) -> None:
    check(processor(vendor), raw)


@pytest.mark.parametrize("vendor", sorted(MAPPINGS))
@FUZZ
@given(data=st.data())
def test_mutated_fixture_payloads_are_accepted_or_rejected(
    vendor: str, data: st.DataObject
) -> None:
    payloads = fixture_payloads(vendor)
    if not payloads:
        pytest.skip(f"no fixtures for {vendor}")
    base = data.draw(st.sampled_from(payloads))
    raw = base
    for _ in range(data.draw(st.integers(1, 3))):
        raw = mutate(raw, data)
    check(processor(vendor), raw)


@FUZZ
@given(body=json_like, path=st.sampled_from(["", "data", "meta.total", "a.b.c"]))
def test_page_parsing_returns_data_or_a_contract_error(body: Any, path: str) -> None:
    for parse in (
        lambda: records_at(body, path, "GET x"),
        lambda: total_at(body, path, "GET x"),
    ):
        with contextlib.suppress(ContractError):
            parse()


@FUZZ
@given(content=st.binary(max_size=200) | json_like.map(lambda v: json.dumps(v).encode()))
def test_decode_json_returns_data_or_a_contract_error(content: bytes) -> None:
    request = httpx.Request("GET", "https://vendor.example/api/invoices")
    response = httpx.Response(200, content=content, request=request)
    try:
        decode_json(response)
    except ContractError as exc:
        assert "answered non-JSON" in str(exc)
