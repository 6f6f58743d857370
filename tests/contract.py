"""The adapter contract suite: every adapter's tests subclass `AdapterContract`.

It runs the adapter over real loopback HTTP against its sandbox dialect and checks what every
source must do: pagination ends with every record exactly once, auth is sent (and refreshed
where tokens expire), wrong credentials and vendor error bodies become clear errors,
transient faults are retried within bounds, the incremental filter narrows the list, and a
run can resume from any page's position.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime
from typing import Any, ClassVar

import pytest

from connector.config import SourceConfig
from connector.errors import AuthError, SourceError
from connector.sandbox import SandboxOptions, SandboxServer
from connector.sources.adapter import Adapter, FetchRequest, SourcePage
from connector.sources.discovery import source_type

FAST_RETRIES = {"max_retries": 3, "backoff_base": 0.01, "backoff_max": 0.05}


def collect(adapter: Adapter, request: FetchRequest | None = None) -> list[SourcePage]:
    async def run() -> list[SourcePage]:
        async with adapter:
            return [page async for page in adapter.fetch_pages(request or FetchRequest())]

    return asyncio.run(run())


class AdapterContract:
    """Subclass in tests/adapters/test_<vendor>.py and set the class attributes."""

    source_type: ClassVar[str]
    dialect: ClassVar[str]
    invoices: ClassVar[int] = 120
    page_size: ClassVar[int | None] = 25
    # The dialect issues tokens that expire (OAuth2, login); the adapter must refresh them.
    token_auth: ClassVar[bool] = False
    # Text of the vendor's own error body that a wrong credential's error must carry.
    vendor_error_text: ClassVar[str] = ""
    # Instance settings of the dialect (e.g. {"page_size": 10}) set once the server runs.
    dialect_settings: ClassVar[dict[str, Any]] = {}

    # A classmethod: pytest 9 refuses class-scoped fixtures defined as instance methods.
    @pytest.fixture(scope="class")
    @classmethod
    def server(cls) -> Iterator[SandboxServer]:
        options = SandboxOptions(
            invoices=cls.invoices,
            seed=11,
            defect_rate=0.1,
            dialects=(cls.dialect,),
            retry_after_s=0,
        )
        with SandboxServer(options) as server:
            dialect = server.dialect(cls.dialect)
            for name, value in cls.dialect_settings.items():
                assert hasattr(dialect, name), f"the {cls.dialect} dialect has no {name!r}"
                setattr(dialect, name, value)
            yield server

    # -- helpers a subclass may override

    def raw_source(self, server: SandboxServer) -> dict[str, Any]:
        dialect = server.dialect(self.dialect)
        raw = dialect.connector_source(server.api_url(self.dialect))
        if self.page_size is not None:
            raw["page_size"] = self.page_size
        raw["http"] = dict(FAST_RETRIES)
        return raw

    def wrong_credentials(self) -> dict[str, Any]:
        return {"api_key": "not-the-key"}

    def config(self, server: SandboxServer, **overrides: Any) -> SourceConfig:
        raw = {**self.raw_source(server), **overrides}
        return source_type(self.source_type).config_model().model_validate(raw)

    def adapter(self, server: SandboxServer, **overrides: Any) -> Adapter:
        return (
            source_type(self.source_type).adapter_class().create(self.config(server, **overrides))
        )

    def record_ids(self, pages: list[SourcePage]) -> list[str]:
        mapping = source_type(self.source_type).mapping()
        ids = [mapping.record_id(raw) for page in pages for raw in page.records]
        ids += [f.record_key for page in pages for f in page.failures]
        assert None not in ids
        return [str(i) for i in ids]

    def served_ids(self, server: SandboxServer, since: datetime | None = None) -> set[str]:
        dialect = server.dialect(self.dialect)
        dataset = server.dataset(self.dialect)
        return {
            dialect.vendor_id(inv)
            for inv in dataset.invoices
            if since is None or inv.updated_at >= since
        }

    # -- the contract

    def test_pagination_ends_with_every_record_exactly_once(self, server: SandboxServer) -> None:
        pages = collect(self.adapter(server))
        ids = self.record_ids(pages)
        assert len(ids) == len(set(ids)), "a record came twice"
        assert set(ids) == self.served_ids(server)
        assert pages[-1].position is None
        assert all(p.position is not None for p in pages[:-1])

    def test_wrong_credentials_fail_clearly(self, server: SandboxServer) -> None:
        adapter = self.adapter(server, **self.wrong_credentials())
        with pytest.raises(AuthError) as caught:
            collect(adapter)
        message = str(caught.value)
        assert "401" in message or "403" in message or "rejected" in message
        if self.vendor_error_text:
            assert self.vendor_error_text in message
        for secret in self.wrong_credentials().values():
            if isinstance(secret, str):
                assert secret not in message

    def test_expired_token_is_refreshed_once(self, server: SandboxServer) -> None:
        if not self.token_auth:
            pytest.skip("this source authenticates with a static key")
        adapter = self.adapter(server)
        dialect = server.dialect(self.dialect)

        async def run() -> tuple[int, int]:
            async with adapter:
                count = 0
                async for page in adapter.fetch_pages(FetchRequest()):
                    # Once: detail calls of the next page may be in flight, and a token
                    # expiring again before a replayed request is answered is a second 401
                    # (an AuthError by design), not something a vendor does in milliseconds.
                    if count == 0:
                        dialect.expire_tokens()
                    count += len(page.records) + len(page.failures)
                auth = adapter.client._client.auth
                return count, getattr(auth, "token_requests", -1)

        count, token_requests = asyncio.run(run())
        assert count == len(self.served_ids(server))
        assert token_requests >= 2, "the token was never refreshed after it expired"

    def test_incremental_filter_narrows_the_list(self, server: SandboxServer) -> None:
        adapter = self.adapter(server)
        if not adapter.filters_since():
            pytest.skip("this source cannot filter by update time")
        moments = sorted(inv.updated_at for inv in server.dataset(self.dialect).invoices)
        since = moments[len(moments) * 3 // 4]
        ids = set(self.record_ids(collect(adapter, FetchRequest(since=since))))
        expected = self.served_ids(server, since)
        assert expected <= ids, "records updated after the cursor were missed"
        assert len(ids) < len(self.served_ids(server)), "the filter was not applied"

    def test_resume_from_a_page_position_finishes_the_list(self, server: SandboxServer) -> None:
        first = collect(self.adapter(server))
        if len(first) < 2:
            pytest.skip("one page only")
        position = first[0].position
        rest = collect(self.adapter(server), FetchRequest(resume=position))
        ids = set(self.record_ids(first[:1])) | set(self.record_ids(rest))
        assert ids == self.served_ids(server)

    def test_transient_faults_are_retried_to_completion(self) -> None:
        options = SandboxOptions(
            invoices=60, seed=5, dialects=(self.dialect,), fault_rate=0.2, retry_after_s=0
        )
        with SandboxServer(options) as server:
            adapter = self.adapter(server, http={**FAST_RETRIES, "max_retries": 8})
            ids = self.record_ids(collect(adapter))
            assert set(ids) == self.served_ids(server)
            assert server.stats(self.dialect)["faults_injected"] > 0

    def test_a_vendor_that_stays_down_fails_the_source_in_bounded_time(self) -> None:
        options = SandboxOptions(
            invoices=10, seed=5, dialects=(self.dialect,), fault_rate=1.0, retry_after_s=0
        )
        with SandboxServer(options) as server:
            adapter = self.adapter(server, http={**FAST_RETRIES, "max_retries": 2})
            with pytest.raises(SourceError) as caught:
                collect(adapter)
            assert (
                "attempts" in str(caught.value)
                or "429" in str(caught.value)
                or "503" in str(caught.value)
            )
            # One logical request, three attempts: never an endless retry loop.
            assert server.stats(self.dialect)["requests"] <= 3 * 2
