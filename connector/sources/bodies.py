"""What of a vendor's answer body may appear in an error: a description of a body that is not
JSON, and the vendor's own error message only when it cannot carry patient data.

Kept apart from the HTTP client so that one place decides what of a vendor's body may appear
in an error message, a log line, a stored run error or a report. Those outlive the run and
reach people who may not see patient data, so raw body text is never quoted: a body is
described (content type, size, what it looks like, where JSON parsing stopped), and a vendor's
error message is kept only if every word of it is generic (`is_safe_vendor_text`).
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from typing import Any

import httpx
import orjson

from connector.errors import ContractError

WITHHELD = "(vendor message withheld: may contain patient data)"

# Error-body fields read, in the order they are shown.
_MESSAGE_KEYS = ("code", "error", "message", "detail", "error_description")
_MAX_SAFE_CHARS = 200
_MAX_SAFE_WORDS = 25
# Words split on whitespace and punctuation that never joins a name, a number or an address.
_WORD_SPLIT = re.compile(r"[\s,;:!?()\[\]{}\"'=/<>*|`]+")
# Clauses: a capitalised word anywhere but at a clause start reads as a name ("Will Price").
_CLAUSE_SPLIT = re.compile(r"[.:;!?]\s+|\s+-\s+|[.:;!?]$")
_SNAKE_LOWER = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)+$")
_SNAKE_UPPER = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$")
_LONG_DIGITS = re.compile(r"\d{4,}")
_MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,39}/[a-z0-9][a-z0-9.+-]{0,59}$")
# HTTP reason phrases ("Bad Request", "Service Unavailable"): title case, yet no one's name.
_REASON_PHRASES = frozenset(status.phrase.lower() for status in HTTPStatus)
# Generic words of API error messages (auth, validation, availability). An allow-list rather
# than a pattern for names: a name, a policy number or an e-mail is never in it, whatever
# its spelling. Common words that are also first names or surnames are left out where
# error messages can do without them (will, may, mark, grant).
_VOCABULARY_TEXT = """
    a about above access accepted account action active after all allowed already an and any
    api are argument arguments array as at attempt attempts auth authenticated authentication
    authorization authorized available bad be been before below between body bool boolean but
    by call can cannot change characters check client clinic code conflict contain content
    could credential credentials data date datetime day days dd denied detail disabled does
    done down duplicate e email empty enabled encoding entity error errors exceeded exist exists
    expected expired failed false field fields file filter for forbidden format found from
    gateway given grant_type has have header headers host hour hours http https id ids if in
    include incorrect integer internal invalid invoice invoices is iso it its json key keys
    later least length less limit limits list locked login long malformed many max maximum
    method min minimum minute minutes missing mm more most must negative no non none not null
    number numbers object of offset on one only or order out page pages parameter parameters
    password patient per permission permissions please positive query range rate read
    reached record records request requests required resource retry scope second seconds
    server service session should size something sort status string strings such supported
    temporarily than that the there this time timeout to token tokens too try type unable
    unauthenticated unauthorized unavailable under unknown unprocessable unsupported until
    url use user username valid validation value values was went were with wrong yyyy 8601
    s true approved cancelled draft paid pending rejected submitted void nope
"""
_VOCABULARY = frozenset(_VOCABULARY_TEXT.split())


def describe_json_error(response: httpx.Response) -> str | None:
    """The vendor's own error fields from common JSON error bodies (MediTrak, NestJS, FastAPI),
    each kept only if it is generic text (`safe_vendor_text`), else said to be withheld."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    parts = []
    for key in _MESSAGE_KEYS:
        value = body.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            parts.append(safe_vendor_text(str(value)))
        elif isinstance(value, list) and value:
            parts.append("; ".join(dict.fromkeys(_error_entry(v) for v in value[:5])))
    return " - ".join(dict.fromkeys(parts))[:300] or None


def _error_entry(entry: Any) -> str:
    """One entry of a list of errors; validation errors name location and message only (some
    frameworks echo the rejected input, which may be a password or a patient's name)."""
    if isinstance(entry, dict):
        loc = ".".join(str(p) for p in entry.get("loc", []) if p != "body")
        msg = safe_vendor_text(str(entry.get("msg") or entry.get("message") or "invalid"))
        return f"{loc}: {msg}" if loc and is_safe_vendor_text(loc) else msg
    return safe_vendor_text(str(entry))


def safe_vendor_text(text: str) -> str:
    """`text` (whitespace collapsed) if it is safe to show, else the withheld marker."""
    collapsed = " ".join(text.split())
    return collapsed if is_safe_vendor_text(collapsed) else WITHHELD


def is_safe_vendor_text(text: str) -> bool:
    """True when a vendor's error text cannot carry patient data: short (at most 200
    characters, 25 words); every word generic (`_VOCABULARY`), a number of at most three
    digits, or a snake_case identifier (`per_page`, `INVALID_API_KEY`), dotted and hyphenated
    words judged part by part; no capitalised word except at a clause start, unless the clause
    is an HTTP reason phrase. So names, policy numbers (4+ digits), e-mails ("@" is no word)
    and any free text outside the vocabulary make the whole message withheld."""
    if len(text) > _MAX_SAFE_CHARS or len(text.split()) > _MAX_SAFE_WORDS:
        return False
    words = [w.strip(".-") for w in _WORD_SPLIT.split(text)]
    if not all(_is_generic_word(w) for w in words if w):
        return False
    return all(_clause_case_is_generic(c) for c in _CLAUSE_SPLIT.split(text))


def _is_generic_word(word: str) -> bool:
    if word.lower() in _VOCABULARY:
        return True
    if word.isdigit():
        return len(word) <= 3
    if _SNAKE_LOWER.match(word) or _SNAKE_UPPER.match(word):
        return not _LONG_DIGITS.search(word)
    for separator in (".", "-"):
        if separator in word:
            parts = word.split(separator)
            return all(parts) and all(_is_generic_word(p) for p in parts)
    return False


def _clause_case_is_generic(clause: str) -> bool:
    words = clause.split()
    if " ".join(words).lower() in _REASON_PHRASES:
        return True
    return not any(w[:1].isupper() and not w.isupper() for w in words[1:])


# -- bodies that are not JSON -----------------------------------------------------------------


def decode_json(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        pass
    # orjson refuses valid JSON it cannot represent (integers beyond 64 bits): one record
    # with a 400-digit amount must be quarantined, not make its whole page unreadable.
    try:
        return json.loads(response.content, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise ContractError(
            f"{response.request.method} {response.request.url.path} answered non-JSON "
            f"({describe_body(response)}; {_where_parsing_stopped(exc, response.content)})"
        ) from None


def describe_body(response: httpx.Response) -> str:
    """ "text/html, 5120 bytes, looks like HTML": what a body is, never what it says."""
    content = response.content
    media = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if not media:
        media = "no content type"
    elif not _MEDIA_TYPE.match(media):
        media = "an unreadable content type"
    return f"{media}, {len(content)} bytes, {_looks_like(content)}"


def _looks_like(content: bytes) -> str:
    head = content[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if not head:
        return "empty" if not content else "only whitespace"
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in head:
        return "looks like HTML"
    if head.startswith(b"<"):
        return "looks like XML or markup"
    if head[:1] in (b"{", b"["):
        return "looks like JSON"
    try:
        content[:512].decode("utf-8")
    except UnicodeDecodeError as exc:
        # A cut in the middle of a multi-byte character at the 512-byte edge is still text.
        if exc.start < 508:
            return "looks binary"
    return "looks like text"


def _where_parsing_stopped(exc: BaseException, content: bytes) -> str:
    """Where and why JSON parsing gave up, in the parser's own fixed phrases (never the
    text it stopped on)."""
    if isinstance(exc, RecursionError):
        return "nested too deeply to parse"
    if isinstance(exc, _RefusedConstant):
        return f"{exc.name} is not JSON"
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 at byte {exc.start}"
    if isinstance(exc, json.JSONDecodeError):
        # json's phrases end in " at" where its own message puts the position.
        at = f"line {exc.lineno}, column {exc.colno} (character {exc.pos})"
        said = f"{exc.msg} {at}" if exc.msg.endswith(" at") else f"{exc.msg} at {at}"
        cut = exc.pos >= len(exc.doc.rstrip()) or exc.msg.startswith("Unterminated string")
        ended = " - the body ends there (truncated?)" if exc.pos and cut else ""
        return f"parsing stopped: {said}{ended}"
    return "not parseable as JSON"


class _RefusedConstant(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"{name} is not JSON")
        self.name = name


def _refuse_constant(name: str) -> Any:
    # json calls this only with "NaN", "Infinity" or "-Infinity": safe to name.
    raise _RefusedConstant(name)
