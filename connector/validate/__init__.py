"""`connector validate`: a dry run that tells a vendor whether its API is ready for MediTrak.

For one configured source it checks the connection step by step (DNS, TCP, TLS, login and
refresh, list and detail endpoints), reads a sample of records through the source's own
adapter, maps and validates each record exactly as a sync would (`RecordProcessor`), and
measures contract compliance per canonical field, mapping coverage (statuses, category rules,
policies) and the fixes that would unblock the most records. Nothing is written to the store:
it is only read for the policy registry, and only when it already exists.

The result is a plain JSON-ready dict following the documented schema
`connector.validation-report/1` (docs/validation-report.md); `connector.reports` renders it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import ssl
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from httpx_aiohttp import AiohttpTransport

from connector.errors import (
    AuthError,
    ConnectorError,
    ContractError,
    RetriesExhausted,
    SourceError,
)
from connector.issues import REASON_HELP, Issue, Reason
from connector.logging import scrub_text
from connector.mapping.kit import CategoryRules
from connector.masking import mask_name, mask_policy
from connector.model import Invoice
from connector.pipeline import wiring
from connector.pipeline.categories import fallback_warnings
from connector.pipeline.engine import RecordProcessor, mapping_options, payload_key
from connector.pipeline.validation import PolicyCheck, validate_invoice
from connector.policies import PolicyChecker, RegistrySnapshot
from connector.settings import AppConfig, SourceConfig
from connector.sources.adapter import Adapter, FetchRequest, ListDetailAdapter
from connector.sources.auth import BearerKey, TokenAuth
from connector.sources.discovery import source_type
from connector.sources.http import (
    SourceClient,
    VendorHttpError,
    describe_certificate_error,
    describe_transport_error,
    verified_tls_context,
)
from connector.sources.paginate import IndexedPaginator, dig
from connector.store import Store

SCHEMA = "connector.validation-report/1"
DEFAULT_SAMPLE = 500
# A dry run should diagnose quickly: transient failures are retried this often at most.
MAX_VALIDATE_RETRIES = 2
EXIT_READY, EXIT_NOT_READY, EXIT_UNREACHABLE = 0, 1, 2

# The canonical record's fields, in contract order, as the report lists them.
FIELDS: tuple[str, ...] = (
    "id",
    "invoice_number",
    "invoice_date",
    "total_amount",
    "status",
    "facility",
    "patient.name",
    "patient.policy_number",
    "items",
    "items[].category",
    "items[].description",
    "items[].quantity",
    "items[].unit_price",
    "items[].total",
)
ITEM_FIELDS = tuple(f for f in FIELDS if f.startswith("items[]."))
# Arithmetic and registry findings are reported in their own sections, not as field format.
_NOT_FIELD_FORMAT = frozenset(
    {
        Reason.ITEM_TOTAL_MISMATCH,
        Reason.INVOICE_TOTAL_MISMATCH,
        Reason.POLICY_UNKNOWN,
        Reason.POLICY_INACTIVE,
        Reason.DETAIL_UNAVAILABLE,
        Reason.DUPLICATE_IN_RUN,
    }
)
_MISSING_CODES = frozenset({Reason.FIELD_MISSING, Reason.POLICY_MISSING, Reason.NO_ITEMS})
# Vendor payload keys (from mapping errors) → the canonical field they feed; first match wins.
_VENDOR_KEY_HINTS: tuple[tuple[str, str], ...] = (
    ("policy", "patient.policy_number"),
    ("reference", "patient.policy_number"),
    ("patient", "patient.name"),
    ("date", "invoice_date"),
    ("number", "invoice_number"),
    ("consecutive", "invoice_number"),
    ("status", "status"),
    ("facility", "facility"),
    ("clinic", "facility"),
    ("branch", "facility"),
    ("total", "total_amount"),
    ("amount", "total_amount"),
)
_ITEM_KEY_HINTS: tuple[tuple[str, str], ...] = (
    ("categor", "items[].category"),
    ("department", "items[].category"),
    ("code", "items[].category"),
    ("type", "items[].category"),
    ("description", "items[].description"),
    ("name", "items[].description"),
    ("service", "items[].description"),
    ("quantity", "items[].quantity"),
    ("qty", "items[].quantity"),
    ("price", "items[].unit_price"),
    ("rate", "items[].unit_price"),
    ("total", "items[].total"),
    ("amount", "items[].total"),
)
_ITEM_CONTAINERS = ("items", "lines", "line_items", "lineitems", "invoiceitems", "services")


# ----------------------------------------------------------------------------- HTTP recording


@dataclass
class Exchange:
    """One request as the validator saw it: never a body, a query string or a header value."""

    method: str
    path: str
    status: int | None
    content_type: str = ""
    error: str | None = None
    page: str | None = None
    records: int | None = None
    total: int | None = None


@dataclass
class ListInspector:
    """Where the list's records and total sit, to check pages against the promised total."""

    path: str
    paginator: IndexedPaginator


class RecordingTransport(httpx.AsyncBaseTransport):
    """Wraps the real transport and notes every exchange, so that connection steps are
    derived from what actually happened during the fetch instead of from extra probes."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner
        self.exchanges: list[Exchange] = []
        self.inspector: ListInspector | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        method, path = request.method, request.url.path
        try:
            response = await self._inner.handle_async_request(request)
        except httpx.TransportError as exc:
            self.exchanges.append(Exchange(method, path, None, error=describe_transport_error(exc)))
            raise
        exchange = Exchange(method, path, response.status_code)
        exchange.content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        self.exchanges.append(exchange)
        inspector = self.inspector
        if (
            inspector is not None
            and method == "GET"
            and path == inspector.path
            and 200 <= response.status_code < 300
        ):
            response = await self._inspect(request, response, exchange, inspector.paginator)
        return response

    async def _inspect(
        self,
        request: httpx.Request,
        response: httpx.Response,
        exchange: Exchange,
        paginator: IndexedPaginator,
    ) -> httpx.Response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
        await response.aclose()
        copy = httpx.Response(
            response.status_code,
            headers=response.headers,
            content=raw,
            extensions=response.extensions,
            request=request,
        )
        content = await copy.aread()
        param = paginator.page_param if paginator.style == "page" else paginator.offset_param
        exchange.page = request.url.params.get(param)
        with contextlib.suppress(orjson.JSONDecodeError):
            body = orjson.loads(content)
            records = dig(body, paginator.records_path)
            if isinstance(records, list):
                exchange.records = len(records)
            total = dig(body, paginator.total_path) if paginator.total_path else None
            if isinstance(total, int) and not isinstance(total, bool):
                exchange.total = total
        return copy

    async def aclose(self) -> None:
        await self._inner.aclose()


# ----------------------------------------------------------------------------- results


@dataclass
class Step:
    name: str
    status: str = "skip"  # pass | fail | warn | skip
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail}


@dataclass
class RecordResult:
    """One record's outcome: the canonical invoice when mapping succeeded, and every issue."""

    key: str
    invoice: Invoice | None
    issues: list[Issue]
    raw_digest: str

    @property
    def blocking(self) -> bool:
        return any(i.severity == "error" for i in self.issues)


@dataclass
class Sample:
    records: list[RecordResult] = field(default_factory=list)
    pages: int = 0
    page_sizes: list[int] = field(default_factory=list)
    complete: bool = False
    duplicates: Counter[str] = field(default_factory=Counter)
    skipped_before_since: int = 0


@dataclass
class Checks:
    """What validation plugs into the record processor, and how the registry was found."""

    categorize: CategoryRules | None
    policy_check: PolicyCheck | None
    resolve_policy: Callable[[Invoice], Invoice] | None
    registry_policies: int
    registry_links: int
    registry_checked: bool
    notes: list[str] = field(default_factory=list)


TransportFactory = Callable[[SourceConfig], httpx.AsyncBaseTransport | None]


# ----------------------------------------------------------------------------- wiring


def build_checks(config: AppConfig, source: SourceConfig, store: Store | None) -> Checks:
    """Category rules and policy checks as `connector sync` wires them
    (`connector.pipeline.wiring`), read from the store without writing.

    With an empty (or absent) registry, policy numbers are checked for presence and format
    only: a vendor running this in its own CI has no copy of MediTrak's registry, and "every
    policy unknown" would hide every real finding."""
    notes: list[str] = []
    categorizers = wiring.build_categorizers(config)
    snapshot = RegistrySnapshot()
    readable = store is not None
    if store is not None:
        try:
            snapshot = wiring.policy_checker(config, store).snapshot
        except Exception as exc:  # an old or foreign store must not stop a dry run
            readable = False
            notes.append(
                f"policy registry unreadable ({type(exc).__name__}): policy numbers checked "
                "for presence and format only"
            )
    else:
        notes.append("no store yet: policy numbers checked for presence and format only")
    checker = PolicyChecker(snapshot, config.policies.pattern)
    checked = bool(snapshot.policies)
    if readable and not checked:
        notes.append(
            "the policy registry is empty: policy numbers checked for presence and format only "
            "(import it with `connector policies import` to check them against MediTrak's)"
        )

    def policy_check(invoice: Invoice) -> list[Issue]:
        issues = checker.check(invoice)
        if not checked:
            issues = [i for i in issues if i.code is not Reason.POLICY_UNKNOWN]
        return issues + fallback_warnings(invoice)

    return Checks(
        categorizers.get(source.name),
        policy_check,
        checker.resolve,
        len(snapshot.policies),
        len(snapshot.links),
        checked,
        notes,
    )


def record_processor(source: SourceConfig, checks: Checks) -> RecordProcessor:
    mapping = source_type(source.type).mapping()
    context = mapping.context(
        source.name,
        currency=source.currency,
        status_overrides=source.status_map,
        timezone=source.timezone,
        categorize=checks.categorize,
        options=mapping_options(source),
    )
    return RecordProcessor(mapping, context, checks.policy_check, checks.resolve_policy)


# ----------------------------------------------------------------------------- connection


def _host_port(base_url: str) -> tuple[str, int, bool]:
    parts = urlsplit(base_url)
    tls = parts.scheme == "https"
    return parts.hostname or "", parts.port or (443 if tls else 80), tls


async def precheck(base_url: str, wait_s: float, *, ca_bundle: str | None = None) -> list[Step]:
    """DNS, TCP and TLS to the base URL's host, before any HTTP request. The handshake trusts
    exactly what a sync trusts: the default store plus the source's `http.ca_bundle`."""
    host, port, tls = _host_port(base_url)
    resolve, connect, handshake = Step("resolve"), Step("connect"), Step("tls")
    steps = [resolve, connect, handshake]
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), wait_s
        )
    except (OSError, TimeoutError) as exc:
        resolve.status = "fail"
        resolve.detail = f"cannot resolve {host}: {exc} - check the host name in base_url"
        connect.detail = handshake.detail = "not tried: the host did not resolve"
        return steps
    addresses = sorted({str(info[4][0]) for info in infos})
    resolve.status, resolve.detail = "pass", f"{host} resolves to {', '.join(addresses[:4])}"
    started = time.monotonic()
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), wait_s)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        connect.status = "fail"
        connect.detail = f"cannot connect to {host}:{port}: {_socket_reason(exc)}"
        handshake.detail = "not tried: no connection"
        return steps
    elapsed = (time.monotonic() - started) * 1000
    connect.status, connect.detail = "pass", f"TCP connection to {host}:{port} in {elapsed:.0f} ms"
    if not tls:
        handshake.detail = "plain http: no TLS to negotiate"
        return steps
    try:
        context = verified_tls_context(ca_bundle)
    except SourceError as exc:
        handshake.status, handshake.detail = "fail", str(exc)
        return steps
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context, server_hostname=host), wait_s
        )
        peer = writer.get_extra_info("ssl_object")
        version = peer.version() if peer is not None else "TLS"
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    except ssl.SSLCertVerificationError as exc:
        handshake.status = "fail"
        handshake.detail = describe_certificate_error(exc, host, ca_bundle)
        return steps
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        handshake.status = "fail"
        handshake.detail = f"TLS handshake with {host}:{port} failed: {_socket_reason(exc)}"
        return steps
    trusted = f" (trusted through http.ca_bundle {ca_bundle})" if ca_bundle else ""
    handshake.status, handshake.detail = "pass", f"{version}, certificate valid for {host}{trusted}"
    return steps


def _socket_reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the service running and the port right?)"
    if isinstance(exc, TimeoutError):
        return "timed out (a firewall, or the wrong host)"
    return str(exc) or type(exc).__name__


def _credential_kind(auth: httpx.Auth | None) -> str:
    if isinstance(auth, BearerKey):
        return "the API key"
    if isinstance(auth, TokenAuth):
        return "the access token"
    return "the credentials"


def _last_failure(exchanges: list[Exchange]) -> Exchange | None:
    for exchange in reversed(exchanges):
        if exchange.status is None or not 200 <= exchange.status < 300:
            return exchange
    return None


def connection_steps(
    error: BaseException | None,
    exchanges: list[Exchange],
    auth: httpx.Auth | None,
    list_path: str | None,
    refresh: Step | None,
    sample: Sample,
    inspector: ListInspector | None,
) -> list[Step]:
    """authenticate, list, detail: pass/fail with an actionable diagnosis, derived from the
    exchanges of the fetch and the error (if any) the adapter raised."""
    auth_step, list_step, detail_step = Step("authenticate"), Step("list"), Step("detail")
    logins = [e for e in exchanges if e.method == "POST"]
    gets = [e for e in exchanges if e.method == "GET"]
    if list_path is None and gets:
        list_path = gets[0].path
    lists = [e for e in gets if e.path == list_path]
    details = [e for e in gets if e.path != list_path]
    failed = _last_failure(exchanges)
    if isinstance(error, ContractError) and "non-JSON" in str(error):
        # A 200 with a web page: the culprit is the last answer that was not JSON.
        failed = next(
            (e for e in reversed(exchanges) if e.status and "json" not in e.content_type), failed
        )
    said = scrub_text(str(error)) if error is not None else ""

    # -- authenticate
    if isinstance(error, AuthError):
        auth_step.status = "fail"
        if failed is not None and failed.method == "POST":
            auth_step.detail = (
                f"{failed.status} from POST {failed.path}: the login was refused - check the "
                f"client id / user name and the secret ({said})"
            )
        elif failed is not None and failed.status is not None:
            auth_step.detail = (
                f"{failed.status} from {failed.method} {failed.path}: "
                f"{_credential_kind(auth)} was rejected ({said})"
            )
        else:
            auth_step.detail = f"authentication failed: {said}"
    elif lists and any(e.status is not None and 200 <= e.status < 300 for e in lists):
        auth_step.status = "pass"
        if isinstance(auth, TokenAuth):
            ok_logins = [e for e in logins if e.status is not None and 200 <= e.status < 300]
            where = f"POST {ok_logins[0].path}" if ok_logins else "the login"
            auth_step.detail = f"token obtained from {where}; requests accepted"
        elif auth is None:
            auth_step.detail = "no authentication configured; requests accepted"
        else:
            auth_step.detail = f"{_credential_kind(auth)} was accepted by GET {list_path}"
        if refresh is not None:
            auth_step.detail += f"; {refresh.detail}"
            if refresh.status == "fail":
                auth_step.status = "warn"
    else:
        auth_step.detail = "not confirmed: no request was answered"

    # -- list
    list_error = error is not None and not isinstance(error, AuthError)
    failed_on_detail = failed is not None and failed.method == "GET" and failed.path != list_path
    whole_list = sample.complete or list_error
    findings = page_findings(lists, inspector, whole_list)
    if list_error and not failed_on_detail:
        list_step.status = "fail"
        list_step.detail = "; ".join([*findings, _diagnose(error, failed, "list", said)])
    elif isinstance(error, AuthError):
        list_step.detail = "not reached: authentication failed"
    elif lists:
        list_step.status = "pass"
        kinds = sorted({e.content_type for e in lists if e.content_type}) or ["no content type"]
        list_step.detail = (
            f"GET {list_path}: {len(lists)} request(s), {sample.pages} page(s), "
            f"{sum(sample.page_sizes)} record(s) listed, {', '.join(kinds)}"
        )
        for note in findings:
            list_step.status = "warn"
            list_step.detail += f"; {note}"
    else:
        list_step.detail = "not reached"

    # -- detail
    if list_error and failed_on_detail:
        detail_step.status = "fail"
        detail_step.detail = _diagnose(error, failed, "detail", said)
    elif details:
        paths = sorted({_templated(e.path) for e in details})
        statuses = Counter(str(e.status) for e in details)
        missing = statuses.get("404", 0) + statuses.get("410", 0)
        shown = ", ".join(f"{n}x {s}" for s, n in statuses.most_common())
        detail_step.status = "warn" if missing else "pass"
        example = paths[0] if len(paths) == 1 else f"{paths[0]} and {len(paths) - 1} more"
        detail_step.detail = f"GET {example}: {len(details)} call(s), {shown}"
        if missing:
            detail_step.detail += f"; {missing} listed record(s) had no detail (DETAIL_UNAVAILABLE)"
    elif lists and error is None:
        detail_step.detail = "not used: the list rows carry the whole record"
    else:
        detail_step.detail = "not reached"
    return [auth_step, list_step, detail_step]


def _templated(path: str) -> str:
    """A detail path with its ids as "{id}": one line per endpoint, and no patient ids."""
    return "/".join("{id}" if _looks_like_id(part) else part for part in path.split("/"))


def _looks_like_id(segment: str) -> bool:
    # "v1" and "api2" are versions, "42", "INV-000042" and UUIDs are ids.
    digits = sum(c.isdigit() for c in segment)
    return segment.isdigit() or (digits > 0 and len(segment) > 4)


def _diagnose(error: BaseException | None, failed: Exchange | None, what: str, said: str) -> str:
    """An actionable sentence for a failed list or detail endpoint."""
    where = f"{failed.method} {failed.path}" if failed is not None else f"the {what} endpoint"
    if failed is not None and failed.status is None:
        return f"{where}: {failed.error or said} - is the service up and the port right?"
    if isinstance(error, VendorHttpError):
        if error.status == 404:
            return (
                f"404 from {where}: the {what} endpoint does not exist - check base_url and the "
                f"{what} path ({said})"
            )
        return f"{error.status} from {where}: {said}"
    if isinstance(error, ContractError):
        text = str(error)
        if "non-JSON" in text:
            kind = failed.content_type if failed is not None else ""
            lowered = text.lower()
            is_html = "html" in kind or "<html" in lowered or "<!doc" in lowered
            shape = "HTML" if is_html else (kind or "something else")
            return (
                f"{what} answered {shape} instead of JSON ({where}) - base_url probably points "
                f"at a web page or proxy, not the API ({said})"
            )
        if "redirected" in text:
            return f"{where} answered a redirect - check base_url and paths ({said})"
        return f"{where}: the answer does not have the documented shape: {said}"
    if isinstance(error, RetriesExhausted):
        return f"{where} kept failing: {said}"
    return f"{where}: {said}"


def page_findings(
    lists: list[Exchange], inspector: ListInspector | None, whole_list: bool
) -> list[str]:
    """Pages that broke their own promise: short pages before the last one, or fewer records
    than the announced total. Rescans read a page again: its last answer counts."""
    if inspector is None or not whole_list:
        return []
    size = inspector.paginator.page_size
    by_offset = inspector.paginator.style == "offset"
    pages: dict[int, Exchange] = {}
    for exchange in lists:
        if exchange.records is not None and exchange.page and exchange.page.isdigit():
            value = int(exchange.page)
            pages[value // size + 1 if by_offset else value] = exchange
    if not pages:
        return []
    notes: list[str] = []
    totals = [e.total for e in lists if e.total is not None]
    first = 1 if by_offset else inspector.paginator.first_page
    # The page the total says is the last one (the paginator may stop before reaching it).
    last = first + max(0, math.ceil(totals[-1] / size) - 1) if totals else max(pages)
    for number in sorted(pages):
        records = pages[number].records or 0
        if number != last and records < size:
            notes.append(
                f"page {number} returned {records} record(s), fewer than its page size {size}, "
                "before the last page"
            )
    delivered = sum(e.records or 0 for e in pages.values())
    if totals and delivered < totals[-1]:
        notes.append(
            f"the list's total promised {totals[-1]} record(s) but its pages delivered {delivered}"
        )
    return notes


class _Borrowed(httpx.AsyncBaseTransport):
    """Another client's transport, used without closing it."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        pass


async def check_refresh(auth: httpx.Auth | None, transport: httpx.AsyncBaseTransport) -> Step:
    """A second, independent login: proves the credentials can renew the token."""
    step = Step("refresh")
    if not isinstance(auth, TokenAuth):
        step.detail = "no token to refresh (static key)"
        return step
    async with httpx.AsyncClient(transport=_Borrowed(transport), timeout=30.0) as client:
        try:
            response = await client.send(auth.build_token_request())
            body = orjson.loads(response.content) if response.is_success else None
            token = auth.read_token(body) if isinstance(body, dict) else None
        except (httpx.HTTPError, orjson.JSONDecodeError, ConnectorError, KeyError, ValueError):
            token = None
            response = None
    if token is None:
        step.status = "fail"
        answered = f"answered {response.status_code}" if response is not None else "failed"
        step.detail = f"a second login (token refresh) {answered}"
        return step
    step.status = "pass"
    lifetime = token.extra.get("expires_in")
    step.detail = "a second login (token refresh) succeeded" + (
        f"; tokens last {lifetime} s" if lifetime else ""
    )
    return step


# ----------------------------------------------------------------------------- fetching


def build_adapter(
    source: SourceConfig, transport: RecordingTransport
) -> tuple[Adapter, httpx.Auth | None]:
    """The source's adapter over the recording transport, with validate's retry budget."""
    adapter_cls = source_type(source.type).adapter_class()
    settings = source.http.model_copy(
        update={"max_retries": min(source.http.max_retries, MAX_VALIDATE_RETRIES)}
    )
    quick = source.model_copy(update={"http": settings})
    auth = adapter_cls.build_auth(quick)
    client = SourceClient(
        quick.base_url,
        quick.http,
        auth=auth,
        headers=adapter_cls.default_headers(quick),
        describe_error=adapter_cls.describe_error,
        transport=transport,
        source=quick.name,
    )
    return adapter_cls(quick, client), auth


def _inner_transport(source: SourceConfig) -> httpx.AsyncBaseTransport:
    tls = verified_tls_context(source.http.ca_bundle)
    if source.http.transport == "aiohttp":
        return AiohttpTransport(verify=tls)
    return httpx.AsyncHTTPTransport(verify=tls)


async def fetch_sample(
    adapter: Adapter,
    processor: RecordProcessor,
    request: FetchRequest,
    limit: int | None,
    since: datetime | None,
) -> tuple[Sample, BaseException | None]:
    """Map and validate records page by page until `limit` (None: the whole list)."""
    sample = Sample()
    seen: dict[str, str] = {}
    error: BaseException | None = None
    try:
        async with contextlib.aclosing(adapter.fetch_pages(request)) as pages:  # type: ignore[type-var]
            async for page in pages:
                sample.pages += 1
                sample.page_sizes.append(len(page.records) + len(page.failures))
                for raw in page.records:
                    result = _process(processor, raw)
                    invoice = result.invoice
                    if (
                        since is not None
                        and invoice is not None
                        and invoice.source_updated_at is not None
                        and invoice.source_updated_at < since
                    ):
                        sample.skipped_before_since += 1
                        continue
                    _note_duplicate(sample, seen, result)
                    sample.records.append(result)
                for failure in page.failures:
                    key = failure.record_key or payload_key(failure.raw)
                    sample.records.append(
                        RecordResult(key, None, [failure.issue], payload_key(failure.raw))
                    )
                if limit is not None and len(sample.records) >= limit:
                    del sample.records[limit:]
                    return sample, None
        sample.complete = True
    except (SourceError, httpx.HTTPError) as exc:
        error = exc
    return sample, error


def _process(processor: RecordProcessor, raw: Any) -> RecordResult:
    accepted, rejected, _updated = processor.process(raw)
    if accepted is not None:
        invoice = accepted.invoice
        # The sync keeps only the verdict; the report also wants the warnings of accepted ones.
        warnings = [
            i for i in validate_invoice(invoice, processor.policy_check) if i.severity != "error"
        ]
        return RecordResult(invoice.id, invoice, warnings, payload_key(raw))
    assert rejected is not None
    return RecordResult(
        rejected.record_key, rejected.canonical, list(rejected.issues), payload_key(raw)
    )


def _note_duplicate(sample: Sample, seen: dict[str, str], result: RecordResult) -> None:
    earlier = seen.get(result.key)
    if earlier is None:
        seen[result.key] = result.raw_digest
        return
    sample.duplicates[result.key] += 1
    if earlier != result.raw_digest:
        result.issues.append(
            Issue(
                Reason.DUPLICATE_IN_RUN,
                "id",
                "the same id was listed again with different content",
            )
        )


# ----------------------------------------------------------------------------- analysis


def field_of(issue: Issue) -> str | None:
    """The canonical field an issue is about, from its path (canonical or vendor spelling)."""
    path = issue.path.strip()
    if path in ("", "$"):
        return None
    if path.startswith("items[") and "]." in path:
        tail = path.split("].", 1)[1]
        return f"items[].{tail}" if f"items[].{tail}" in FIELDS else None
    if path in FIELDS:
        return path
    parts = [p for p in path.replace("[", ".").replace("]", "").split(".") if p]
    lowered = [p.lower().replace("_", "") for p in parts]
    if any(p in _ITEM_CONTAINERS for p in lowered):
        leaf = lowered[-1]
        if leaf.isdigit() or leaf in _ITEM_CONTAINERS:
            return "items"
        for hint, name in _ITEM_KEY_HINTS:
            if hint in leaf:
                return name
        return "items"
    leaf = lowered[-1] if lowered else ""
    if leaf == "id":
        return "id"
    for hint, name in _VENDOR_KEY_HINTS:
        if hint in leaf or any(hint in p for p in lowered[:-1]):
            return name
    return None


def _present(invoice: Invoice, name: str) -> bool | None:
    """Whether the canonical invoice carries the field (None: not applicable)."""
    if name == "id":
        return bool(invoice.id)
    if name == "invoice_number":
        return bool(invoice.invoice_number)
    if name == "invoice_date":
        return invoice.invoice_date is not None
    if name == "total_amount":
        return True
    if name == "status":
        return bool(invoice.source_status) or invoice.status is not None
    if name == "facility":
        return bool(invoice.facility)
    if name == "patient.name":
        return bool(invoice.patient.name)
    if name == "patient.policy_number":
        return bool(invoice.patient.policy_number)
    if name == "items":
        return bool(invoice.items)
    if not invoice.items:
        return None
    attribute = name.removeprefix("items[].")
    if attribute == "category":
        return all(i.category is not None or i.source_category for i in invoice.items)
    if attribute == "description":
        return all(bool(i.description) for i in invoice.items)
    return True


def field_compliance(records: list[RecordResult]) -> list[dict[str, Any]]:
    checked: Counter[str] = Counter()
    present: Counter[str] = Counter()
    valid: Counter[str] = Counter()
    problems: dict[str, Counter[str]] = defaultdict(Counter)
    for record in records:
        bad: dict[str, set[str]] = defaultdict(set)
        for issue in record.issues:
            if issue.severity != "error" or issue.code in _NOT_FIELD_FORMAT:
                continue
            name = field_of(issue)
            if name is not None:
                bad[name].add(issue.code.value)
        for name in FIELDS:
            invoice = record.invoice
            if invoice is None and name == "id":
                here: bool | None = not record.key.startswith("sha256:")
            elif invoice is None:
                # The mapping could not build the record: only what its errors name is judged.
                if name not in bad:
                    continue
                here = not any(c in {r.value for r in _MISSING_CODES} for c in bad[name])
            else:
                here = _present(invoice, name)
                if here is None:
                    continue
                if any(c in {r.value for r in _MISSING_CODES} for c in bad[name]):
                    here = False
            checked[name] += 1
            if here:
                present[name] += 1
            if here and not bad[name]:
                valid[name] += 1
            for code in bad[name]:
                problems[name][code] += 1
    rows = []
    for name in FIELDS:
        n = checked[name]
        rows.append(
            {
                "field": name,
                "required": name != "facility",
                "checked": n,
                "present": present[name],
                "valid": valid[name],
                "pass_rate": round(valid[name] / n, 4) if n else None,
                "problems": dict(problems[name].most_common()),
            }
        )
    return rows


def _codes(record: RecordResult, severity: str = "error") -> set[str]:
    return {i.code.value for i in record.issues if i.severity == severity}


def contract_section(sample: Sample) -> dict[str, Any]:
    records = sample.records
    items_checked = mismatched_items = invoices_checked = mismatched_totals = 0
    without_items = 0
    dates: list[date] = []
    updated: list[datetime] = []
    for record in records:
        invoice = record.invoice
        codes = _codes(record)
        if "NO_ITEMS" in codes:
            without_items += 1
        if invoice is None:
            continue
        if invoice.invoice_date is not None:
            dates.append(invoice.invoice_date)
        if invoice.source_updated_at is not None:
            updated.append(invoice.source_updated_at)
        items_checked += len(invoice.items)
        mismatched_items += sum(1 for i in record.issues if i.code is Reason.ITEM_TOTAL_MISMATCH)
        if invoice.items:
            invoices_checked += 1
            mismatched_totals += "INVOICE_TOTAL_MISMATCH" in codes
    return {
        "fields": field_compliance(records),
        "item_arithmetic": {"items": items_checked, "mismatched": mismatched_items},
        "invoice_totals": {"invoices": invoices_checked, "mismatched": mismatched_totals},
        "without_items": without_items,
        "duplicate_ids": [
            {"id": key, "extra_copies": n} for key, n in sorted(sample.duplicates.items())
        ],
        "date_range": {
            "invoice_date_from": min(dates).isoformat() if dates else None,
            "invoice_date_to": max(dates).isoformat() if dates else None,
            "updated_from": min(updated).isoformat() if updated else None,
            "updated_to": max(updated).isoformat() if updated else None,
        },
        "pages": sample.pages,
    }


def _placed_by(rule: str | None) -> str:
    if not rule:
        return "none"
    return rule.split(":", 1)[0] if ":" in rule else rule


def mapping_section(
    sample: Sample, processor: RecordProcessor, checks: Checks
) -> tuple[dict[str, Any], dict[str, list[Issue]]]:
    """Status words, category rules and policies; plus vocabulary warnings per record key."""
    words: Counter[str] = Counter()
    mapped: dict[str, str | None] = {}
    by_rule: Counter[str] = Counter()
    by_category: Counter[str] = Counter()
    unmapped: Counter[str] = Counter()
    vocabulary: Counter[str] = Counter()
    word_rules: dict[str, Counter[str]] = defaultdict(Counter)
    policies = Counter({"matched": 0, "unknown": 0, "inactive": 0, "bad_format": 0, "missing": 0})
    for record in sample.records:
        invoice = record.invoice
        if invoice is None:
            continue
        word = invoice.source_status if invoice.source_status is not None else "(none)"
        words[word] += 1
        mapped[word] = invoice.status.value if invoice.status is not None else None
        for item in invoice.items:
            by_rule[item.category_rule or "(unmapped)"] += 1
            by_category[item.category.value if item.category else "(unmapped)"] += 1
            if item.category is None:
                unmapped[item.description or "(no description)"] += 1
            if item.source_category:
                vocabulary[item.source_category] += 1
                word_rules[item.source_category][_placed_by(item.category_rule)] += 1
        codes = _codes(record)
        if "POLICY_MISSING" in codes:
            policies["missing"] += 1
        elif "POLICY_FORMAT" in codes:
            policies["bad_format"] += 1
        elif "POLICY_UNKNOWN" in codes:
            policies["unknown"] += 1
        elif "POLICY_INACTIVE" in codes:
            policies["inactive"] += 1
        elif invoice.patient.policy_number:
            policies["matched"] += 1
    unrecognised, warnings = _vocabulary_gaps(sample, vocabulary, word_rules)
    status_rows = [
        {"word": w, "count": n, "maps_to": mapped.get(w)} for w, n in words.most_common()
    ]
    known = sorted(processor.context.status_map)
    section = {
        "statuses": status_rows,
        "status_map_words": known,
        "categories": {
            "by_rule": [{"rule": r, "count": n} for r, n in by_rule.most_common()],
            "by_category": [{"category": c, "count": n} for c, n in by_category.most_common()],
            "unmapped_descriptions": [
                {"description": d, "count": n} for d, n in unmapped.most_common(10)
            ],
            "unrecognised_words": unrecognised,
        },
        "policies": {
            "checked_against_registry": checks.registry_checked,
            "registry_policies": checks.registry_policies,
            "registry_links": checks.registry_links,
            **dict(policies),
        },
    }
    return section, warnings


def _vocabulary_gaps(
    sample: Sample, vocabulary: Counter[str], word_rules: dict[str, Counter[str]]
) -> tuple[list[dict[str, Any]], dict[str, list[Issue]]]:
    """Vendor category words that neither are a MediTrak category nor in the source's map,
    in a source whose items otherwise speak a known vocabulary: the item was only placed by
    its description, which is a guess the vendor should confirm (a warning, not a block)."""
    by_word = sum(
        n for w, n in vocabulary.items() for kind in word_rules[w] if kind in ("exact", "map")
    )
    total = sum(vocabulary.values())
    if not total or by_word * 2 < total:
        # A source whose words are item codes (Splose) is placed by descriptions by design.
        return [], {}
    gaps = {
        w: rules
        for w, rules in word_rules.items()
        if not any(kind in ("exact", "map") for kind in rules)
    }
    warnings: dict[str, list[Issue]] = defaultdict(list)
    for record in sample.records:
        invoice = record.invoice
        if invoice is None:
            continue
        for index, item in enumerate(invoice.items):
            if item.source_category in gaps and item.category is not None:
                warnings[record.key].append(
                    Issue(
                        Reason.CATEGORY_UNMAPPED,
                        f"items[{index}].category",
                        f"vendor category {item.source_category!r} is not a MediTrak category "
                        f"nor in the source's map; placed as {item.category.value} by rule "
                        f"{item.category_rule}",
                        severity="warning",
                    )
                )
    rows = [
        {"word": w, "count": vocabulary[w], "placed_by": dict(rules.most_common())}
        for w, rules in sorted(gaps.items(), key=lambda kv: -vocabulary[kv[0]])
    ]
    return rows, warnings


def fixes_section(records: list[RecordResult]) -> list[dict[str, Any]]:
    """Reasons ordered by how many records fixing them would unblock (a record blocked by
    several reasons counts for each)."""
    counts: Counter[str] = Counter()
    examples: dict[str, list[str]] = defaultdict(list)
    messages: dict[str, str] = {}
    for record in records:
        for code in sorted(_codes(record)):
            counts[code] += 1
            if len(examples[code]) < 3:
                examples[code].append(record.key)
        for issue in record.issues:
            if issue.severity == "error":
                messages.setdefault(issue.code.value, issue.message)
    rows = []
    for code, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        meaning, fix = REASON_HELP[Reason(code)]
        rows.append(
            {
                "reason": code,
                "records": n,
                "meaning": meaning,
                "fix": fix,
                "example_message": messages.get(code, ""),
                "example_ids": examples[code],
            }
        )
    return rows


def record_rows(records: list[RecordResult]) -> list[dict[str, Any]]:
    rows = []
    for record in records:
        if not record.issues:
            continue
        invoice = record.invoice
        rows.append(
            {
                "id": record.key,
                "invoice_number": invoice.invoice_number if invoice else None,
                "patient": {
                    "name": mask_name(invoice.patient.name) if invoice else None,
                    "policy_number": mask_policy(invoice.patient.policy_number)
                    if invoice
                    else None,
                },
                "blocking": record.blocking,
                "reasons": sorted(_codes(record)),
                "warnings": sorted(_codes(record, "warning")),
                "issues": [i.as_dict() for i in record.issues],
            }
        )
    return rows


# ----------------------------------------------------------------------------- the run


@dataclass
class ValidateOptions:
    sample: int | None = DEFAULT_SAMPLE  # None: every record
    since: date | None = None


async def validate_source(
    config: AppConfig,
    source_name: str,
    *,
    options: ValidateOptions | None = None,
    store: Store | None = None,
    transport_factory: TransportFactory | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The validation report of one source (see `SCHEMA`); never writes anything."""
    options = options or ValidateOptions()
    source = config.source(source_name)
    checks = build_checks(config, source, store)
    processor = record_processor(source, checks)
    timeout = min(source.http.timeout.total_seconds(), 10.0)
    steps = await precheck(source.base_url, timeout, ca_bundle=source.http.ca_bundle)
    reachable = all(s.status != "fail" for s in steps)
    sample = Sample()
    error: BaseException | None = None
    if reachable:
        injected = transport_factory(source) if transport_factory else None
        recorder = RecordingTransport(injected or _inner_transport(source))
        adapter, auth = build_adapter(source, recorder)
        list_path = _list_path(adapter)
        inspector = _inspector(adapter, list_path)
        recorder.inspector = inspector
        since = datetime.combine(options.since, datetime.min.time(), UTC) if options.since else None
        request = FetchRequest(since=since if since and adapter.filters_since() else None)
        async with adapter:
            sample, error = await fetch_sample(adapter, processor, request, options.sample, since)
            refresh = await check_refresh(auth, recorder) if error is None else None
        steps += connection_steps(
            error, recorder.exchanges, auth, list_path, refresh, sample, inspector
        )
    else:
        why = (
            "no trusted TLS connection"
            if steps[-1].status == "fail" and steps[-1].name == "tls"
            else "the host cannot be reached"
        )
        for name in ("authenticate", "list", "detail"):
            steps.append(Step(name, "skip", f"not tried: {why}"))
    connected = all(s.status != "fail" for s in steps)
    extra_warnings: dict[str, list[Issue]] = {}
    mapping: dict[str, Any] = {}
    if connected:
        mapping, extra_warnings = mapping_section(sample, processor, checks)
        for record in sample.records:
            record.issues.extend(extra_warnings.get(record.key, []))
    blocked = sum(1 for r in sample.records if r.blocking)
    if not connected:
        verdict, code = "unreachable", EXIT_UNREACHABLE
    elif blocked:
        verdict, code = "not ready", EXIT_NOT_READY
    else:
        verdict, code = "ready", EXIT_READY
    total = len(sample.records)
    notes = list(checks.notes)
    if options.sample is not None and not sample.complete and connected:
        notes.append(f"sample: the first {total} record(s) of the list (use --all for every one)")
    if sample.skipped_before_since:
        notes.append(f"{sample.skipped_before_since} record(s) updated before --since skipped")
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "generated_at": (now or datetime.now(UTC)).isoformat(),
        "source": {"name": source.name, "type": source.type, "base_url": _safe_url(source)},
        "options": {
            "sample": options.sample,
            "since": options.since.isoformat() if options.since else None,
        },
        "verdict": verdict,
        "exit_code": code,
        "summary": {
            "records": total,
            "passed": total - blocked,
            "blocked": blocked,
            "with_warnings": sum(
                1 for r in sample.records if not r.blocking and _codes(r, "warning")
            ),
            "pass_rate": round((total - blocked) / total, 4) if total else None,
            "complete": sample.complete,
        },
        "connection": {"ok": connected, "steps": [s.as_dict() for s in steps]},
        "contract": contract_section(sample) if connected else None,
        "mapping": mapping or None,
        "fixes": fixes_section(sample.records),
        "records": record_rows(sample.records),
        "notes": notes,
    }
    scrubbed: dict[str, Any] = scrub_report(report, source.secrets())
    return scrubbed


def _list_path(adapter: Adapter) -> str | None:
    """The list endpoint's URL path, when the adapter declares it."""
    if isinstance(adapter, ListDetailAdapter):
        relative = adapter.list_url()
    else:
        declared = getattr(adapter, "list_path", None)
        if not isinstance(declared, str):
            return None
        relative = declared
    return adapter.client.base_url.join(relative).path if relative else None


def _inspector(adapter: Adapter, list_path: str | None) -> ListInspector | None:
    if not isinstance(adapter, ListDetailAdapter) or list_path is None:
        return None
    paginator = adapter.paginator()
    if isinstance(paginator, IndexedPaginator) and paginator.total_path:
        return ListInspector(list_path, paginator)
    return None


def _safe_url(source: SourceConfig) -> str:
    parts = urlsplit(source.base_url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    # No user info and no query: either may carry a credential.
    return f"{parts.scheme}://{host}{port}{parts.path}"


def scrub_report(node: Any, secrets: Iterable[str]) -> Any:
    """Every string of a report with the source's secrets (and bearer tokens) masked."""
    values = [s for s in secrets if s and len(s) >= 4]

    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            for secret in values:
                value = value.replace(secret, "**********")
            return scrub_text(value)
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        return value

    return scrub(node)
