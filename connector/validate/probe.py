"""Connection steps of `connector validate`, each pass, fail, warn or skip with a diagnosis.

`precheck` tries DNS, TCP and TLS before any HTTP request; `connection_steps` derives
authenticate, list and detail from what the fetch actually exchanged (`recording`) and the
typed error the adapter raised; `check_refresh` logs in a second time to prove that the
credentials can renew a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import ssl
import time
from collections import Counter
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import orjson

from connector.errors import AuthError, ConnectorError, ContractError, RetriesExhausted, SourceError
from connector.logging import scrub_text
from connector.settings import HttpSettings
from connector.sources.auth import BearerKey, TokenAuth
from connector.sources.http import (
    RequestDeadlineExceeded,
    ResponseTooLarge,
    SourceClient,
    VendorHttpError,
    describe_certificate_error,
    verified_tls_context,
)
from connector.validate.recording import BorrowedTransport, Exchange, ListInspector
from connector.validate.sample import Sample


@dataclass
class Step:
    """One connection step as the report shows it."""

    name: str
    status: str = "skip"  # pass | fail | warn | skip
    detail: str = ""
    # Failed on an answer that came but was broken (malformed JSON): the vendor is reachable,
    # its API is not ready. Not part of the report's step shape.
    answered: bool = False

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail}


def only_broken_answers(steps: list[Step]) -> bool:
    """Some step failed, and every failure is an answer that came but was broken."""
    failed = [s for s in steps if s.status == "fail"]
    return bool(failed) and all(s.answered for s in failed)


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


def skipped_steps(prechecked: list[Step]) -> list[Step]:
    """authenticate, list and detail when DNS, TCP or TLS already failed."""
    failed_tls = prechecked[-1].status == "fail" and prechecked[-1].name == "tls"
    why = "no trusted TLS connection" if failed_tls else "the host cannot be reached"
    return [Step(name, "skip", f"not tried: {why}") for name in ("authenticate", "list", "detail")]


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
        # A JSON answer that does not parse (cut off): the culprit is the last one answered.
        failed = failed or next((e for e in reversed(exchanges) if e.status), None)
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
        list_step.answered = _malformed_json(error, failed)
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
        detail_step.answered = _malformed_json(error, failed)
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


def _malformed_json(error: BaseException | None, failed: Exchange | None) -> bool:
    """The answer was JSON by its content type or its first byte, and did not parse: broken
    or cut off, not a web page."""
    if not isinstance(error, ContractError) or "non-JSON" not in str(error):
        return False
    kind = failed.content_type if failed is not None else ""
    return "json" in kind or "looks like JSON" in str(error)


def _diagnose(error: BaseException | None, failed: Exchange | None, what: str, said: str) -> str:
    """An actionable sentence for a failed list or detail endpoint."""
    where = f"{failed.method} {failed.path}" if failed is not None else f"the {what} endpoint"
    if failed is not None and failed.status is None:
        return f"{where}: {failed.error or said} - is the service up and the port right?"
    if _malformed_json(error, failed):
        return (
            f"{what} answered malformed JSON ({where}) - the API is reachable but its answer "
            f"does not parse (cut off or broken); the vendor must fix the endpoint ({said})"
        )
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


async def check_refresh(
    auth: httpx.Auth | None, transport: httpx.AsyncBaseTransport, http: HttpSettings
) -> Step:
    """A second, independent login: proves the credentials can renew the token. Its answer is
    read like every other of the source: within `http.timeout` as a whole, and stopped past
    `http.max_response_bytes` (decompressed), so a hostile login endpoint cannot hold the
    dry run or its memory."""
    step = Step("refresh")
    if not isinstance(auth, TokenAuth):
        step.detail = "no token to refresh (static key)"
        return step
    request = auth.build_token_request()
    # The source's own client, used for its bounded read and deadline only (no auth: the
    # request is the login itself).
    reader = SourceClient(str(request.url), http, transport=BorrowedTransport(transport))
    status: int | None = None
    token = None
    failure = ""
    try:
        async with (
            reader,
            httpx.AsyncClient(transport=BorrowedTransport(transport), timeout=30.0) as client,
            reader.deadline(),
        ):
            response = await client.send(request, stream=True)
            try:
                status = response.status_code
                body = await reader.read_body(response)
            finally:
                await response.aclose()
            parsed = orjson.loads(body) if response.is_success else None
            token = auth.read_token(parsed) if isinstance(parsed, dict) else None
    except ResponseTooLarge as exc:
        failure = str(exc)
    except RequestDeadlineExceeded as exc:
        failure = str(exc)
    except (httpx.HTTPError, orjson.JSONDecodeError, ConnectorError, KeyError, ValueError):
        token = None
    if token is None:
        step.status = "fail"
        answered = f"answered {status}" if status is not None else "failed"
        step.detail = f"a second login (token refresh) {answered}" + (
            f": {failure}" if failure else ""
        )
        return step
    step.status = "pass"
    lifetime = token.extra.get("expires_in")
    step.detail = "a second login (token refresh) succeeded" + (
        f"; tokens last {lifetime} s" if lifetime else ""
    )
    return step
