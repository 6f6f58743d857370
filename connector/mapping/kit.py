"""Building blocks for the pure vendor mappings: tolerant value types and the mapping context.

A mapping is a pydantic model of the vendor payload plus one `to_canonical()`. The annotated
types below turn the many ways vendors write money and dates into `Decimal` and aware UTC
`datetime`, and fail with error types that `issues_from_validation_error` turns into stable
reason codes, so one record reports all of its problems at once. Vendor lines become canonical
items (folded when a discount or tax changes their amount) in `connector.mapping.lines`.

Each mapping also declares which vendor field feeds which canonical field
(`SourceMapping.field_sources`, read by `connector validate`): for every name of
`CANONICAL_FIELDS`, the vendor's dotted paths in the raw record, the usual one first, "[]" for a
list (`line_items[].amount`), then fallbacks and the other inputs of a computed value. An empty
tuple: the vendor has no such field. What is not among the record's own fields is a pseudo-path:
`patient_lookup:<path>` (the patient resource the adapter looked up and attached under
`_patient`), `policy_link` (the policy registry's patient link), `setting:<name>` (a source
setting); `record_path` says where a declared source sits in the raw record.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, tzinfo
from decimal import Decimal, DecimalException, InvalidOperation
from typing import Annotated, Any, TypeVar
from zoneinfo import ZoneInfo

from pydantic import BaseModel, BeforeValidator, ValidationError
from pydantic_core import PydanticCustomError

from connector.errors import RecordError
from connector.issues import Issue, Reason
from connector.model import CATEGORY_VALUES, Category, InvoiceStatus

# An invoice amount above this is a data error, not a bill (and guards Decimal arithmetic).
MAX_AMOUNT = Decimal("1000000000000")
_MAX_INT = int(MAX_AMOUNT)
_MONEY_TEXT = re.compile(r"^\s*(?P<sign>-)?\s*(?:[$₡₹€£]|[A-Z]{3}\s?)?\s*(?P<num>[\d,]*\.?\d+)\s*$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
PayloadT = TypeVar("PayloadT", bound=BaseModel)


def parse_decimal(value: Any) -> Decimal:
    """A finite Decimal from a JSON number or numeric text; floats go through their shortest
    repr so that 1250.005 stays exactly 1250.005."""
    kind = type(value)
    # Fast paths for what JSON gives (exact types: bool is an int, subclasses take the long way).
    if kind is float:
        if not math.isfinite(value):
            raise PydanticCustomError("amount_invalid", "not a finite number")
        number = Decimal(repr(value))
        if -MAX_AMOUNT < number < MAX_AMOUNT:
            return number
        raise PydanticCustomError("amount_invalid", "amount out of range")
    if kind is int:
        if -_MAX_INT < value < _MAX_INT:
            return Decimal(value)
        raise PydanticCustomError("amount_invalid", "amount out of range")
    if isinstance(value, bool) or value is None:
        raise PydanticCustomError(
            "amount_invalid", "expected a number, got {kind}", {"kind": type(value).__name__}
        )
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise PydanticCustomError("amount_invalid", "not a finite number")
        number = Decimal(repr(value))
    elif isinstance(value, str):
        match = _MONEY_TEXT.match(value)
        if not match:
            raise PydanticCustomError(
                "amount_invalid", "not a number: '{text}'", {"text": value[:40]}
            )
        try:
            number = Decimal(match["num"].replace(",", ""))
        except InvalidOperation as exc:
            raise PydanticCustomError("amount_invalid", "not a number") from exc
        if match["sign"]:
            number = -number
    else:
        raise PydanticCustomError(
            "amount_invalid", "expected a number, got {kind}", {"kind": type(value).__name__}
        )
    if not number.is_finite():
        raise PydanticCustomError("amount_invalid", "not a finite number")
    if abs(number) >= MAX_AMOUNT:
        raise PydanticCustomError("amount_invalid", "amount out of range")
    return number


# Places → the quantum with that many places, for the common precision checks.
_QUANTA = {places: Decimal(1).scaleb(-places) for places in range(7)}


def more_places_than(number: Decimal, places: int) -> bool:
    """Whether a finite number needs more than `places` decimals (1.500 needs one)."""
    quantum = _QUANTA.get(places)
    if quantum is not None:
        # Rounding to `places` changes the value exactly when more places are needed; this
        # costs a fifth of reading the exponent through `as_tuple()` (docs/performance.md).
        try:
            rounded = number.quantize(quantum)
        except DecimalException:
            pass  # beyond the context's precision (or not finite): decide by the exponent
        else:
            if rounded.is_finite():
                return rounded != number
    exponent = number.as_tuple().exponent
    # Normalizing only ever raises the exponent: most amounts are decided without it.
    if not isinstance(exponent, int) or exponent >= -places:
        return False
    exponent = number.normalize().as_tuple().exponent
    return isinstance(exponent, int) and exponent < -places


def _money(value: Any) -> Decimal:
    number = parse_decimal(value)
    if number < 0:
        raise PydanticCustomError("amount_invalid", "negative amount")
    if more_places_than(number, 2):
        raise PydanticCustomError(
            "money_precision", "more than two decimal places: {n}", {"n": str(number)}
        )
    return number


def _signed_money(value: Any) -> Decimal:
    number = parse_decimal(value)
    if more_places_than(number, 2):
        raise PydanticCustomError(
            "money_precision", "more than two decimal places: {n}", {"n": str(number)}
        )
    return number


def _quantity(value: Any) -> Decimal:
    number = parse_decimal(value)
    if number <= 0:
        raise PydanticCustomError("amount_invalid", "quantity must be positive")
    return number


def _cents(value: Any) -> Decimal:
    """Integer minor units (e.g. CRC cents) to a 2-place Decimal."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise PydanticCustomError("amount_invalid", "expected integer cents")
    number = parse_decimal(value)
    if number != number.to_integral_value():
        raise PydanticCustomError(
            "money_precision", "cents must be a whole number: {n}", {"n": str(number)}
        )
    if number < 0:
        raise PydanticCustomError("amount_invalid", "negative amount")
    return (number / 100).quantize(Decimal("0.01"))


def _iso_date(value: Any) -> date:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _ISO_DATE.match(value.strip()):
        raise PydanticCustomError(
            "date_format", "expected YYYY-MM-DD, got '{v}'", {"v": str(value)[:40]}
        )
    try:
        return date.fromisoformat(value.strip())
    except ValueError as exc:
        raise PydanticCustomError(
            "date_format", "not a calendar date: '{v}'", {"v": value[:40]}
        ) from exc


def _date_or_datetime(value: Any) -> date:
    """A date, or the date part of an ISO timestamp (vendors that send issueDate as a datetime)."""
    if isinstance(value, str) and len(value.strip()) > 10:
        return _timestamp(value).date()
    return _iso_date(value)


def _timestamp(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("date_format", "expected an ISO 8601 timestamp")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise PydanticCustomError(
            "date_format", "not an ISO 8601 timestamp: '{v}'", {"v": value[:40]}
        ) from exc


# C0 controls except tab, newline and carriage return, DEL, and C1 controls.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _text(value: Any) -> str:
    if type(value) is str:
        stripped = value.strip()
    else:
        if value is None:
            raise PydanticCustomError("field_missing", "required")
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise PydanticCustomError("field_invalid", "expected text")
        stripped = value.strip()
    if not stripped:
        raise PydanticCustomError("field_missing", "empty")
    # Control characters are never printable: the regex runs only on the rare text that is not.
    if not stripped.isprintable() and _CONTROL_CHARS.search(stripped):
        # NUL cannot even be stored in PostgreSQL text; escapes would reach terminals and CSVs.
        raise PydanticCustomError("field_invalid", "contains control characters")
    return stripped


def _optional_text(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _text(value)


Money = Annotated[Decimal, BeforeValidator(_money)]
SignedMoney = Annotated[Decimal, BeforeValidator(_signed_money)]
Cents = Annotated[Decimal, BeforeValidator(_cents)]
Quantity = Annotated[Decimal, BeforeValidator(_quantity)]
IsoDate = Annotated[date, BeforeValidator(_iso_date)]
DateOrTimestamp = Annotated[date, BeforeValidator(_date_or_datetime)]
Timestamp = Annotated[datetime, BeforeValidator(_timestamp)]
Text = Annotated[str, BeforeValidator(_text)]
OptionalText = Annotated[str | None, BeforeValidator(_optional_text)]

_ERROR_REASONS: dict[str, Reason] = {
    "missing": Reason.FIELD_MISSING,
    "field_missing": Reason.FIELD_MISSING,
    "none_required": Reason.FIELD_MISSING,
    "money_precision": Reason.MONEY_PRECISION,
    "amount_invalid": Reason.AMOUNT_INVALID,
    "date_format": Reason.FIELD_INVALID,
    "field_invalid": Reason.FIELD_INVALID,
    "model_type": Reason.PAYLOAD_INVALID,
    "model_attributes_type": Reason.PAYLOAD_INVALID,
    "dict_type": Reason.PAYLOAD_INVALID,
    "list_type": Reason.PAYLOAD_INVALID,
}


def issues_from_validation_error(error: ValidationError) -> list[Issue]:
    """Every problem pydantic found in a vendor payload, as issues with stable reason codes."""
    issues: list[Issue] = []
    for detail in error.errors(include_url=False, include_input=False):
        path = ".".join(str(part) for part in detail["loc"]) or "$"
        reason = _ERROR_REASONS.get(detail["type"], Reason.FIELD_INVALID)
        issues.append(Issue(reason, path, detail["msg"]))
    return issues


def parse_payload(model: type[PayloadT], raw: Any) -> PayloadT:
    """Validate a raw vendor record, turning a failure into a `RecordError` with every issue."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise RecordError(issues_from_validation_error(exc)) from None


def to_utc(moment: datetime, assumed: tzinfo = UTC) -> datetime:
    """Aware UTC; a naive timestamp is read in the source's configured time zone."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=assumed)
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class CategoryMatch:
    category: Category | None
    rule: str | None


_NO_CATEGORY = CategoryMatch(None, None)
# One shared (frozen) match per category: a dict lookup instead of an Enum call per item.
_EXACT_MATCHES = {
    value: CategoryMatch(Category(value), "exact:category") for value in CATEGORY_VALUES
}


def exact_category(word: str | None) -> CategoryMatch:
    """The baseline rule: a vendor word that already is one of the ten categories."""
    if word is None:
        return _NO_CATEGORY
    return _EXACT_MATCHES.get(word.strip().lower(), _NO_CATEGORY)


CategoryRules = Callable[[str | None, str | None], CategoryMatch]
"""(vendor category word / code / department, item description) → category and rule name."""


def _baseline_rules(word: str | None, description: str | None) -> CategoryMatch:
    del description
    return exact_category(word)


@dataclass(frozen=True)
class MappingContext:
    """Everything a mapping may depend on besides the payload: plain data, no I/O."""

    source: str
    currency: str
    status_map: Mapping[str, InvoiceStatus]
    timezone: tzinfo = UTC
    categorize: CategoryRules = _baseline_rules
    options: Mapping[str, Any] = field(default_factory=dict)

    def map_status(self, word: str | None) -> InvoiceStatus | None:
        if word is None:
            return None
        return self.status_map.get(word) or self.status_map.get(word.strip().lower())

    def utc(self, moment: datetime | None) -> datetime | None:
        """A vendor timestamp as aware UTC (naive means the source's zone); None stays None."""
        return None if moment is None else to_utc(moment, self.timezone)

    def local_date(self, moment: datetime) -> date:
        """The calendar date of a vendor timestamp in the source's zone (naive means that
        zone): an invoice made at 21:00 in San José is dated that day, not the next UTC day."""
        return to_utc(moment, self.timezone).astimezone(self.timezone).date()

    @staticmethod
    def zone(name: str) -> tzinfo:
        return UTC if name.upper() == "UTC" else ZoneInfo(name)


def build_status_map(
    defaults: Mapping[str, InvoiceStatus], overrides: Mapping[str, str] | None
) -> dict[str, InvoiceStatus]:
    """The mapping's explicit table, with config overrides applied (keys compared as given
    and lower-cased, so `Paid` and `paid` both match)."""
    table = {k.lower(): v for k, v in defaults.items()}
    table.update({k: v for k, v in defaults.items()})
    for word, status in (overrides or {}).items():
        table[word] = InvoiceStatus(status)
        table[word.lower()] = InvoiceStatus(status)
    return table


# The canonical fields a mapping declares the sources of (`SourceMapping.field_sources`), in
# the contract's order and spelled as `connector validate` reports them.
CANONICAL_FIELDS: tuple[str, ...] = (
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
# Where an adapter attaches a resource it looked up for the record (Splose's and Invoice API's
# patient), beside the vendor's own fields: the leading underscore keeps it apart from them.
PATIENT_LOOKUP_KEY = "_patient"
# Pseudo-paths of `field_sources`, for what does not come from the record's own fields.
PATIENT_LOOKUP = "patient_lookup:"  # + a path in the patient resource, e.g. "patient_lookup:name"
POLICY_LINK = "policy_link"  # the policy registry's link of the patient (`policies link`)
SETTING = "setting:"  # + a source setting, e.g. "setting:facility"


def record_path(source: str) -> str | None:
    """Where a declared field source sits in the raw record the mapping receives: the path
    itself, the attached lookup's (`patient_lookup:first_name` → `_patient.first_name`), or
    None for what is not in the record (a policy link, a setting)."""
    if source.startswith(PATIENT_LOOKUP):
        return f"{PATIENT_LOOKUP_KEY}.{source.removeprefix(PATIENT_LOOKUP)}"
    if source == POLICY_LINK or source.startswith(SETTING):
        return None
    return source


@dataclass(frozen=True)
class SourceMapping:
    """What a mappings/<vendor>.py module offers the engine."""

    vendor: str
    # The explicit status table: vendor word → canonical status (config may override).
    status_map: Mapping[str, InvoiceStatus]
    to_canonical: Callable[[Any, MappingContext], Any]
    # The vendor's invoice id in a raw record, or None when the record has none.
    record_id: Callable[[Any], str | None]
    # Which vendor fields feed each canonical field (the convention is in the module's
    # docstring), declared so that reports never guess from key names. A folded description's
    # arithmetic is not listed: it restates the sources of the unit price.
    field_sources: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def context(
        self,
        source: str,
        *,
        currency: str,
        status_overrides: Mapping[str, str] | None = None,
        timezone: str = "UTC",
        categorize: CategoryRules | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> MappingContext:
        return MappingContext(
            source=source,
            currency=currency,
            status_map=build_status_map(self.status_map, status_overrides),
            timezone=MappingContext.zone(timezone),
            categorize=categorize or _baseline_rules,
            options=options or {},
        )


def id_field(*names: str) -> Callable[[Any], str | None]:
    """A `record_id` reading the first present field of a raw dict."""

    def record_id(raw: Any) -> str | None:
        if not isinstance(raw, dict):
            return None
        for name in names:
            value = raw.get(name)
            if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
                return str(value).strip()[:200]
        return None

    return record_id
