"""`connector validate` attributes a mapping's errors on vendor paths to canonical fields through
the mapping's declared `field_sources`, read backwards, and never from key names: what a
mapping does not declare stays unattributed and the report says so."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from connector.config import build_config
from connector.issues import Issue, Reason
from connector.mapping.kit import SourceMapping
from connector.sandbox import SandboxOptions, SandboxServer
from connector.validate import ValidateOptions, validate_source
from connector.validate.fields import FIELDS, FieldSources, canonical_field, normalized_path
from mappings import bio_ecko, meditrak
from tests.conftest import FAST_HTTP, sources_for

# Bio Ecko renames and nests nearly everything: its mapping's declaration is the example.
NESTED = FieldSources.of(bio_ecko.MAPPING)


def _sources(declared: dict[str, tuple[str, ...]]) -> FieldSources:
    mapping = SourceMapping(
        vendor="test",
        status_map={},
        to_canonical=lambda raw, ctx: raw,
        record_id=lambda raw: None,
        field_sources=declared,
    )
    return FieldSources.of(mapping)


def _at(path: str) -> Issue:
    return Issue(Reason.FIELD_INVALID, path, "bad")


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("totals.grand_total", ("total_amount",)),
        ("date", ("invoice_date",)),
        # pydantic's spelling of a list index, and validation's.
        ("line_items.2.amount", ("items[].total",)),
        ("line_items[0].rate", ("items[].unit_price",)),
        ("line_items.0.discount", ("items[].unit_price",)),
        # The item list itself and one item that is not an object: the items' problem.
        ("line_items", ("items",)),
        ("line_items.3", ("items",)),
        # An unknown key inside a declared item: still the items'.
        ("line_items.1.colour", ("items",)),
        # Below a declared path: the declared field.
        ("totals.grand_total.value", ("total_amount",)),
        # An object holding declared paths: every field declared under it.
        ("patient", ("patient.name", "patient.policy_number")),
        ("patient.insurance", ("patient.policy_number",)),
        ("totals", ("total_amount",)),
        ("branch", ("facility",)),
        # Not declared: not attributed, however telling the key name.
        ("policy_reference", ()),
        ("invoice_total_amount", ()),
        ("$", ()),
        ("", ()),
    ],
)
def test_vendor_paths_are_read_through_the_declaration(path: str, fields: tuple[str, ...]) -> None:
    assert NESTED.vendor_fields_of(_at(path)) == fields


def test_a_vendor_path_feeding_two_fields_belongs_to_the_one_that_normally_reads_it() -> None:
    # CitaBox numbers a draft by its id: "id" is invoice_number's fallback, id's usual source.
    sources = _sources({"invoice_number": ("consecutive", "id"), "id": ("id",)})
    assert sources.vendor_fields_of(_at("id")) == ("id",)
    assert sources.vendor_fields_of(_at("consecutive")) == ("invoice_number",)
    # At an equal position the contract's order decides.
    shared = _sources({"facility": ("site",), "status": ("site",)})
    assert shared.vendor_fields_of(_at("site")) == ("status",)


def test_pseudo_paths_never_match_an_error() -> None:
    sources = _sources(
        {
            "patient.name": ("patient_lookup:first_name",),
            "patient.policy_number": ("policy_link",),
            "facility": ("setting:facility",),
        }
    )
    # The looked-up patient is attached to the record under its own key.
    assert sources.vendor_fields_of(_at("_patient.first_name")) == ("patient.name",)
    assert sources.vendor_fields_of(_at("policy_link")) == ()
    assert sources.vendor_fields_of(_at("setting:facility")) == ()
    assert sources.vendor_fields_of(_at("facility")) == ()


def test_undeclared_fields_are_named_and_an_empty_declaration_counts() -> None:
    declared = {k: v for k, v in NESTED.declared.items() if k != "items"}
    sources = _sources({**declared, "facility": ()})
    assert sources.undeclared() == ["items"]
    assert _sources({}).undeclared() == list(FIELDS)
    # The item list is still known, from where the item fields' paths sit.
    assert sources.vendor_fields_of(_at("line_items")) == ("items",)


def test_canonical_paths_of_a_built_invoice() -> None:
    assert canonical_field(_at("items[3].total")) == "items[].total"
    assert canonical_field(_at("patient.policy_number")) == "patient.policy_number"
    # Fields the report does not measure are not folded into one it does.
    assert canonical_field(_at("paid_amount")) is None
    assert canonical_field(_at("currency")) is None
    assert normalized_path("a.10.b[2].c.0") == "a[].b[].c[]"


# ----------------------------------------------------------------------------- end to end


def _meditrak_report(tmp_path: Path, server: SandboxServer) -> dict[str, Any]:
    sources = sources_for(server, ("meditrak",), http=FAST_HTTP)
    config = build_config({"store": {"url": str(tmp_path / "s.db")}, "sources": sources}, env={})
    options = ValidateOptions(sample=None)
    return asyncio.run(validate_source(config, "meditrak", options=options, store=None))


def _seeded(server: SandboxServer, kind: str) -> int:
    return sum(1 for inv in server.dataset("meditrak").invoices if inv.defect == kind)


@pytest.fixture(scope="module")
def meditrak_server() -> Any:
    options = SandboxOptions(invoices=80, seed=5, defect_rate=0.25, dialects=("meditrak",))
    with SandboxServer(options) as server:
        yield server


# MediTrak renames two fields of the import record; nothing else is declared here, so that
# this test holds whatever mappings/meditrak.py declares.
DECLARED_HERE = {
    "id": ("invoice_id",),
    "invoice_number": ("invoice_number",),
    "invoice_date": ("service_date",),
}


def test_mapping_errors_count_against_the_declared_field(
    tmp_path: Path, meditrak_server: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    declared = replace(meditrak.MAPPING, field_sources=DECLARED_HERE)
    monkeypatch.setattr(meditrak, "MAPPING", declared)
    report = _meditrak_report(tmp_path, meditrak_server)
    fields = {f["field"]: f for f in report["contract"]["fields"]}
    missing = _seeded(meditrak_server, "missing_invoice_number")
    bad_dates = _seeded(meditrak_server, "bad_date")
    assert missing and bad_dates
    # The records the mapping could not build are judged on what their errors name.
    assert fields["invoice_number"]["problems"] == {"FIELD_MISSING": missing}
    assert fields["invoice_number"]["checked"] - fields["invoice_number"]["present"] == missing
    assert fields["invoice_date"]["problems"] == {"FIELD_INVALID": bad_dates}
    (note,) = [n for n in report["notes"] if "declares no vendor source" in n]
    assert "invoice_number" not in note and "items[].total" in note


def test_an_undeclared_field_is_said_not_guessed(
    tmp_path: Path, meditrak_server: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "service_date" names a date, but the mapping does not say that it feeds invoice_date.
    without_date = {k: v for k, v in DECLARED_HERE.items() if k != "invoice_date"}
    declared = replace(meditrak.MAPPING, field_sources=without_date)
    monkeypatch.setattr(meditrak, "MAPPING", declared)
    report = _meditrak_report(tmp_path, meditrak_server)
    fields = {f["field"]: f for f in report["contract"]["fields"]}
    assert fields["invoice_date"]["problems"] == {}
    assert fields["invoice_number"]["problems"] == {
        "FIELD_MISSING": _seeded(meditrak_server, "missing_invoice_number")
    }
    (note,) = [n for n in report["notes"] if "declares no vendor source" in n]
    assert "invoice_date" in note
    # The finding itself is still reported, under the vendor's own path.
    paths = {i["path"] for r in report["records"] for i in r["issues"]}
    assert "service_date" in paths


def test_a_rest_source_is_attributed_through_its_own_fields_config() -> None:
    """The `rest` type is mapped by each source's `fields:`: its errors on vendor paths are
    attributed through that source's real paths, not the type's `setting:fields.*`."""
    from connector.mapping.declarative import FieldMapping
    from mappings import rest

    fields = FieldMapping.model_validate(
        {
            "id": "id",
            "total_amount": "totals.grand",
            "status": "state",
            "patient": {"name": "client.name", "ref": "client.id"},
            "items": {"path": "lines", "description": "text", "unit_price": "amount"},
        }
    )
    typed = FieldSources.of(rest.MAPPING)
    assert typed.vendor_fields_of(_at("totals.grand")) == ()
    sources = FieldSources.of(rest.MAPPING, {"fields": fields})
    assert sources.vendor_fields_of(_at("totals.grand")) == ("total_amount",)
    assert sources.vendor_fields_of(_at("lines.2.amount")) == ("items[].unit_price",)
    assert sources.vendor_fields_of(_at("client.name")) == ("patient.name",)
    assert sources.declared["patient.policy_number"] == ("policy_link",)
    assert sources.declared["items[].quantity"] == ()  # the default constant 1: no vendor field
    assert sources.undeclared() == []
