"""Masking of patient data wherever the CLI shows it: names, policy numbers, raw payloads.

Small pure helpers. Quarantine views, policy listings and error messages show "J*** D**" and
"POL-****89" unless the operator explicitly asks to `--reveal`.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_POLICY_PREFIX = re.compile(r"^(?P<prefix>[A-Za-z]{1,6}[-/ .:]?)(?P<rest>.+)$")
# Keys whose values are patient data wherever they appear (compared lower case, no _ or -).
_SENSITIVE_KEY_PARTS = (
    "patient",
    "paciente",
    "policy",
    "poliza",
    "insur",
    "asegur",
    "holder",
    "member",
    "beneficiar",
    "medicare",
    "medicaid",
    "referencenumber",
    "email",
    "phone",
    "telefono",
    "birth",
    "nacimiento",
    "dob",
    "cedula",
    "nationalid",
    "ssn",
)
# "...name" keys that name things, not people.
_IMPERSONAL_NAME_PREFIXES = (
    "facility",
    "clinic",
    "service",
    "department",
    "branch",
    "item",
    "product",
    "location",
    "business",
    "company",
    "tax",
    "practitioner",
    "provider",
    "doctor",
    "staff",
    "file",
    "user",
    "display",
)
_NAME_KEYS = ("nombre", "apellido", "apellidos")


def mask_name(name: str | None) -> str | None:
    """ "John Doe" → "J*** D**": the first letter of each word, the rest starred."""
    if name is None:
        return None
    return " ".join(word[0] + "*" * (len(word) - 1) for word in name.split())


def mask_policy(number: str | None) -> str | None:
    """ "POL-456789" → "POL-****89": a short letter prefix and the last two characters stay."""
    if number is None:
        return None
    text = number.strip()
    prefix, rest = "", text
    match = _POLICY_PREFIX.match(text)
    if match and len(match["rest"]) > 2:
        prefix, rest = match["prefix"], match["rest"]
    return prefix + _mask_tail(rest)


def _mask_tail(text: str) -> str:
    if len(text) <= 4:
        return "*" * len(text)
    return "*" * (len(text) - 2) + text[-2:]


def _key_form(key: str) -> str:
    return re.sub(r"[\s_\-.]", "", key).lower()


def is_sensitive_key(key: str) -> bool:
    form = _key_form(key)
    return any(part in form for part in _SENSITIVE_KEY_PARTS) or is_person_name_key(key)


def is_person_name_key(key: str) -> bool:
    form = _key_form(key)
    if form in _NAME_KEYS:
        return True
    return form.endswith("name") and not form.startswith(_IMPERSONAL_NAME_PREFIXES)


def _mask_leaf(key: str, value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return mask_name(value) if is_person_name_key(key) else mask_policy(value)
    if isinstance(value, int | float):
        return _mask_tail(str(value))
    return "***"


def mask_payload(payload: Any, *, _inherited: str | None = None) -> Any:
    """A copy of a raw payload (or canonical dict) with every patient-looking value masked:
    values under name / policy / insurance / patient keys, and everything nested under them."""
    if isinstance(payload, dict):
        masked: dict[Any, Any] = {}
        for key, value in payload.items():
            name = str(key)
            sensitive = _inherited is not None or is_sensitive_key(name)
            if isinstance(value, dict | list):
                masked[key] = mask_payload(value, _inherited=name if sensitive else None)
            elif sensitive:
                masked[key] = _mask_leaf(name, value)
            else:
                masked[key] = value
        return masked
    if isinstance(payload, list):
        return [mask_payload(item, _inherited=_inherited) for item in payload]
    if _inherited is not None:
        return _mask_leaf(_inherited, payload)
    return payload


# A plain value: text with a digit, made of digits, separators, currency signs and a few known
# words (an amount, date or timestamp, even a mistyped one): it cannot be a name or a note.
_PLAIN_CHARS = re.compile(r"^[\d\s.,:/+\-$₡₹€£%()A-Za-z]*$")
_LETTER_RUN = re.compile(r"[A-Za-z]+")
_PLAIN_WORDS = frozenset(
    {"T", "Z", "AM", "PM", "UTC", "GMT", "USD", "EUR", "GBP", "AUD", "NZD", "CAD", "CRC", "INR"}
    | {"MXN", "COP", "CLP", "ARS", "PEN", "ZAR", "KES", "NGN", "GHS"}
)


def is_plain_value(text: str) -> bool:
    """True for an amount-, date- or timestamp-like text, which an error may quote."""
    return (
        any(c.isdigit() for c in text)
        and _PLAIN_CHARS.match(text) is not None
        and all(w.upper() in _PLAIN_WORDS for w in _LETTER_RUN.findall(text))
    )


def masked_store_url(url: str) -> str:
    """The store URL with any password replaced by `***` (in the authority and in the query,
    where libpq also accepts one); SQLite paths have none and are returned unchanged."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc
    user, at, host = netloc.rpartition("@")
    if at and ":" in user:
        netloc = f"{user.partition(':')[0]}:***@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        # `safe="*"`: keep the mask readable rather than percent-encoded.
        query = urlencode([(k, "***" if "pass" in k.lower() else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
