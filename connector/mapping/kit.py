"""Building blocks for the pure vendor mappings: the mapping context, payload parsing, the
`SourceMapping` contract and its field declarations.

A mapping is a pydantic model of the vendor payload, written with the tolerant value types of
`connector.mapping.types`, plus one `to_canonical()`. `parse_payload` turns a payload that fails
its model into a `RecordError` carrying every problem with a stable reason code. Vendor lines
become canonical items (folded when a discount or tax changes their amount) in
`connector.mapping.lines`.

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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, tzinfo
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ValidationError

from connector.errors import RecordError
from connector.issues import Issue, Reason
from connector.mapping.types import to_utc
from connector.model import CATEGORY_VALUES, Category, InvoiceStatus

PayloadT = TypeVar("PayloadT", bound=BaseModel)


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
