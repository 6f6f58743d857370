"""The mapping of the declarative `rest` source: each source's `fields:` (a `FieldMapping`,
handed over in the mapping context's options) applied by `connector.mapping.declarative`.

The status table is the source's own `status_map`: there are no built-in words to fall back
on, so a word the config does not list is quarantined as STATUS_UNMAPPED.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from connector.errors import RecordError
from connector.issues import Issue, Reason
from connector.mapping.declarative import FieldMapping, map_record
from connector.mapping.kit import (
    CANONICAL_FIELDS,
    POLICY_LINK,
    SETTING,
    MappingContext,
    SourceMapping,
)
from connector.model import Invoice

# Where the adapter puts the record's id when the mapping reads it from another path than `id`
# (mirrors adapters.rest.RECORD_ID_KEY; mappings do not import adapters).
RECORD_ID_KEY = "_record_id"


def fields_of(ctx: MappingContext) -> FieldMapping:
    fields = ctx.options.get("fields")
    if not isinstance(fields, FieldMapping):
        # A context built without the source's options: a wiring bug, not a record's fault.
        raise RecordError([Issue(Reason.PAYLOAD_INVALID, "$", "the rest source has no fields")])
    return fields


def to_canonical(raw: Any, ctx: MappingContext) -> Invoice:
    return map_record(raw, fields_of(ctx), ctx)


def record_id(raw: Any) -> str | None:
    if not isinstance(raw, dict):
        return None
    for key in (RECORD_ID_KEY, "id"):
        value = raw.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()[:200]
    return None


def field_sources_of(fields: FieldMapping) -> dict[str, tuple[str, ...]]:
    """The vendor paths one source's `fields:` names, declared as `SourceMapping.field_sources`
    are: the usual path first, "[]" for the items list, a constant as its setting."""

    def paths(spec: Any, setting: str, prefix: str = "") -> tuple[str, ...]:
        if spec is None:
            return ()
        declared: tuple[str, ...] = spec.path
        return tuple(prefix + p for p in declared) or (f"{SETTING}fields.{setting}",)

    items = fields.items
    within = f"{items.path}[]."
    unit_price = paths(items.unit_price, "items.unit_price", within)
    # An unset quantity is the default constant 1: the vendor has no such field.
    configured_quantity = items.quantity if "quantity" in items.model_fields_set else None
    quantity = paths(configured_quantity, "items.quantity", within)
    adjustments = paths(items.discount, "items.discount", within) + (
        paths(items.tax.amount, "items.tax.amount", within) if items.tax else ()
    )
    description = paths(items.description, "items.description", within)
    patient = fields.patient
    # With a patient id the registry's link is a candidate too (`connector policies link`).
    link = (POLICY_LINK,) if patient.ref is not None else ()
    return {
        "id": paths(fields.id, "id"),
        "invoice_number": paths(fields.invoice_number, "invoice_number"),
        "invoice_date": paths(fields.invoice_date, "invoice_date"),
        "total_amount": paths(fields.total_amount, "total_amount"),
        "status": paths(fields.status, "status"),
        "facility": paths(fields.facility, "facility"),
        "patient.name": paths(patient.name, "patient.name"),
        "patient.policy_number": paths(patient.policy_number, "patient.policy_number") + link,
        "items": (items.path,),
        # The category rules read the vendor's word, then the description.
        "items[].category": paths(items.category, "items.category", within) + description,
        "items[].description": description,
        "items[].quantity": quantity,
        "items[].unit_price": unit_price,
        # The vendor's own line total, else the computed one and its inputs.
        "items[].total": paths(items.total, "items.total", within)
        + unit_price
        + quantity
        + adjustments,
    }


@dataclass(frozen=True)
class ConfiguredMapping(SourceMapping):
    """A mapping whose field sources are in each source's config: `field_sources` says only
    that they come from `fields:`, `field_sources_for` reads one source's real vendor paths."""

    def field_sources_for(self, options: Mapping[str, Any]) -> Mapping[str, tuple[str, ...]]:
        fields = options.get("fields")
        if not isinstance(fields, FieldMapping):
            return self.field_sources
        return field_sources_of(fields)


MAPPING = ConfiguredMapping(
    vendor="rest",
    status_map={},
    to_canonical=to_canonical,
    record_id=record_id,
    # Every field comes from where the source's `fields:` setting says (per source:
    # `field_sources_for`).
    field_sources={name: (f"{SETTING}fields.{name}",) for name in CANONICAL_FIELDS},
)
