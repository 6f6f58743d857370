"""Splose adapter tests: the shared contract over loopback, then what is Splose's own (relative
keyset links, documented parameters only, patient lookups, the 60/min rate limit, config)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar

import httpx
import pytest
from pydantic import ValidationError

from adapters.splose import Adapter as SploseAdapter
from adapters.splose import Config, splose_time
from connector.errors import ContractError
from connector.sandbox import SandboxOptions, SandboxServer
from connector.sandbox.splose import SploseDialect
from connector.sources.adapter import FetchRequest, SourcePage
from tests.contract import FAST_RETRIES, AdapterContract, collect

DIALECT = "splose"


def _dialect(server: SandboxServer) -> SploseDialect:
    dialect = server.dialect(DIALECT)
    assert isinstance(dialect, SploseDialect)
    return dialect


def _config(server: SandboxServer, **overrides: Any) -> Config:
    raw = _dialect(server).connector_source(server.api_url(DIALECT))
    return Config.model_validate({**raw, "http": dict(FAST_RETRIES), **overrides})


def _adapter(server: SandboxServer, **overrides: Any) -> SploseAdapter:
    adapter = SploseAdapter.create(_config(server, **overrides))
    assert isinstance(adapter, SploseAdapter)
    return adapter


def _records(pages: list[SourcePage]) -> list[dict[str, Any]]:
    return [raw for page in pages for raw in page.records]


class TestContract(AdapterContract):
    source_type = "splose"
    dialect = DIALECT
    # Small enough that the whole class stays under Splose's 60 requests per minute per key
    # (a walk is 3 pages + at most 7 patients), so the real limit stays enforced.
    invoices = 30
    # Splose has no page size parameter.
    page_size = None
    vendor_error_text = "Invalid or missing API key"
    # Several pages from few invoices, so that resuming from a page position is tested.
    dialect_settings: ClassVar[dict[str, Any]] = {"page_size": 10}


@pytest.fixture
def server() -> Iterator[SandboxServer]:
    options = SandboxOptions(invoices=30, seed=3, defect_rate=0.0, dialects=(DIALECT,))
    with SandboxServer(options) as server:
        yield server


def test_relative_links_are_followed_on_the_host_root(server: SandboxServer) -> None:
    _dialect(server).page_size = 7
    pages = collect(_adapter(server, fetch_patients=False))
    assert len(pages) == 5
    assert [p.position for p in pages[:-1]] == [
        {"next": f"/v1/invoices?id_lt={n}"} for n in (24, 17, 10, 3)
    ]
    stats = server.stats(DIALECT)
    assert stats["by_path"] == {"/v1/invoices": 5}
    assert stats["by_status"] == {"200": 5}


def test_only_documented_query_parameters_are_sent(server: SandboxServer) -> None:
    # The sandbox, like Splose, rejects anything else with a 400.
    with httpx.Client(base_url=server.api_url(DIALECT)) as client:
        headers = {"Authorization": f"Bearer {server.token(DIALECT)}"}
        refused = client.get("invoices", params={"limit": 10}, headers=headers)
    assert refused.status_code == 400
    assert "limit" in refused.json()["message"]
    since = datetime(2025, 6, 1, tzinfo=UTC)
    adapter = _adapter(server, include_archived=True)
    assert adapter.list_params(FetchRequest(since=since)) == {
        "include_archived": "true",
        "update_gt": "2025-05-31T23:59:59.000Z",
    }
    assert _adapter(server).list_params(FetchRequest()) == {}


def test_the_incremental_filter_keeps_records_updated_in_the_cursor_second(
    server: SandboxServer,
) -> None:
    newest = max(server.dataset(DIALECT).invoices, key=lambda inv: inv.updated_at)
    pages = collect(_adapter(server), FetchRequest(since=newest.updated_at))
    ids = {raw["id"] for raw in _records(pages)}
    assert _dialect(server).number(newest) in ids


def test_archived_invoices_only_with_include_archived(server: SandboxServer) -> None:
    dataset = server.dataset(DIALECT)
    hidden = dataset.invoices[4]
    _dialect(server).archived = {hidden.id}
    number = _dialect(server).number(hidden)
    default_ids = {raw["id"] for raw in _records(collect(_adapter(server, fetch_patients=False)))}
    assert number not in default_ids
    assert len(default_ids) == len(dataset) - 1
    with_archived = _records(collect(_adapter(server, include_archived=True, fetch_patients=False)))
    archived = [raw for raw in with_archived if raw["id"] == number]
    assert len(with_archived) == len(dataset)
    assert archived[0]["isArchived"] is True


def test_each_patient_is_fetched_once_per_run_and_attached(server: SandboxServer) -> None:
    records = _records(collect(_adapter(server)))
    patient_ids = {raw["patientId"] for raw in records}
    assert server.stats(DIALECT)["by_path"]["/v1/patients/{patient_id}"] == len(patient_ids)
    truth = {inv.id: inv for inv in server.dataset(DIALECT).invoices}
    for raw in records:
        patient = raw["_patient"]
        assert patient["id"] == raw["patientId"]
        invoice = truth[f"SPL-{raw['id']:06d}"]
        assert f"{patient['firstName']} {patient['lastName']}" == invoice.patient_name


def test_without_patient_fetches_no_patient_calls(server: SandboxServer) -> None:
    records = _records(collect(_adapter(server, fetch_patients=False)))
    assert records
    assert all("_patient" not in raw for raw in records)
    assert "/v1/patients/{patient_id}" not in server.stats(DIALECT)["by_path"]


def test_an_unknown_patient_is_attached_as_none(server: SandboxServer) -> None:
    dialect = _dialect(server)
    gone = server.dataset(DIALECT).invoices[0]
    gone_id = int(gone.patient_ref.removeprefix("PAT-"))
    del dialect._patients[gone_id]
    records = _records(collect(_adapter(server)))
    for raw in records:
        if raw["patientId"] == gone_id:
            assert raw["_patient"] is None
        else:
            assert raw["_patient"]["id"] == raw["patientId"]
    assert server.stats(DIALECT)["by_status"]["404"] == 1


def test_the_client_never_exceeds_a_small_rate_limit(server: SandboxServer) -> None:
    """20 requests per minute on both sides; the walk needs 22, so the 21st must wait."""
    dialect = _dialect(server)
    dialect.rate_limit = 20
    dialect.page_size = 2  # 15 list pages + 7 patients
    adapter = _adapter(server, http={**FAST_RETRIES, "requests_per_minute": 20})
    seen: list[SourcePage] = []

    async def walk() -> None:
        async with adapter:
            async for page in adapter.fetch_pages(FetchRequest()):
                seen.append(page)

    async def walk_briefly() -> None:
        task = asyncio.create_task(walk())
        try:
            # The first 20 requests go out at once; how long they take depends on the machine.
            deadline = time.monotonic() + 30
            while server.stats(DIALECT)["requests"] < 20:
                assert not task.done(), task.exception() or "the walk ended before the limit"
                assert time.monotonic() < deadline, "the first 20 requests never went out"
                await asyncio.sleep(0.01)
            # A client that did not wait would send the 21st within milliseconds; it must
            # instead wait out the 60 s window. 1 s is slack for a loaded machine.
            await asyncio.sleep(1.0)
            assert not task.done(), task.exception() or "the walk ended within the window"
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(walk_briefly())
    stats = server.stats(DIALECT)
    assert stats["requests"] == 20, "the 21st request did not wait for the window"
    assert stats["max_requests_per_60s"] <= 20
    assert "429" not in stats["by_status"]
    assert seen, "nothing arrived before the limit"


def test_a_429_from_splose_is_honoured(server: SandboxServer) -> None:
    dialect = _dialect(server)
    dialect.rate_limit = 3
    dialect.rate_window_s = 1.0
    dialect.page_size = 5  # six list pages: the fourth is refused until the window moves
    started = time.monotonic()
    pages = collect(_adapter(server, fetch_patients=False, http={**FAST_RETRIES}))
    assert len(_records(pages)) == 30
    stats = server.stats(DIALECT)
    assert stats["by_status"].get("429", 0) >= 1
    assert time.monotonic() - started >= 0.9, "Retry-After was not waited for"


def test_the_sandbox_answers_429_with_retry_after_beyond_the_limit(server: SandboxServer) -> None:
    _dialect(server).rate_limit = 2
    headers = {"Authorization": f"Bearer {server.token(DIALECT)}"}
    with httpx.Client(base_url=server.api_url(DIALECT), headers=headers) as client:
        answers = [client.get("patients/1") for _ in range(3)]
        other_key = client.get("patients/1", headers={"Authorization": "Bearer other"})
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert 1 <= int(answers[2].headers["Retry-After"]) <= 60
    assert other_key.status_code == 401  # counted per key: another key is not limited


def test_a_link_to_another_origin_is_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {"data": [], "links": {"nextPage": "https://evil.example/v1/invoices?id_lt=3"}}
        return httpx.Response(200, json=body)

    config = Config(type="splose", name="splose", api_key="k", fetch_patients=False)
    adapter = SploseAdapter.create(config, transport=httpx.MockTransport(handler))
    with pytest.raises(ContractError, match="another host"):
        collect(adapter)


def test_config_defaults_and_refusals() -> None:
    config = Config.model_validate({"name": "splose", "api_key": "secret-key"})
    assert config.base_url == "https://api.splose.com/v1/"
    assert config.currency == "AUD"
    assert config.http.requests_per_minute == 60
    assert config.include_archived is False
    assert config.fetch_patients is True
    # Medicare/DVA provider numbers are not insurance policies (issue 14); still configurable.
    assert config.mapping_options == {"policy_reference_prefixes": ["Policy", "Insurance"]}
    old_default = ["Medicare", "Policy", "Insurance"]
    configured = Config.model_validate(
        {"name": "s", "api_key": "k", "policy_reference_prefixes": old_default}
    )
    assert configured.mapping_options == {"policy_reference_prefixes": old_default}
    assert "secret-key" not in repr(config)
    # Overriding other http settings keeps Splose's rate limit.
    tuned = Config.model_validate({"name": "s", "api_key": "k", "http": {"max_retries": 2}})
    assert tuned.http.requests_per_minute == 60
    with pytest.raises(ValidationError, match="page_size"):
        Config.model_validate({"name": "s", "api_key": "k", "page_size": 100})
    with pytest.raises(ValidationError):
        Config.model_validate({"name": "s", "api_key": "k", "base_url": "http://splose.example"})


def test_splose_time_is_utc_with_milliseconds() -> None:
    moment = datetime.fromisoformat("2025-03-01T10:00:00.123456+10:00")
    assert splose_time(moment) == "2025-03-01T00:00:00.123Z"
