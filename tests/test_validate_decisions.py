"""`connector validate` shows the decisions behind `patient.policy_number` and
`items[].category` (issue 14, item 5): where each invoice's policy came from (patient link,
the record's field, a vendor reference), the candidates that disagreed (masked, with their
standing), which kind of category rule placed each item, and the descriptions no rule placed,
withheld when they may name a patient.

Over loopback HTTP: the Splose sandbox (Medicare and DVA numbers beside linked, registered
patients; registry and links imported as an operator does) and a small MediTrak-shaped vendor
of our own whose item descriptions are chosen to reach every kind of category rule.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from connector.issues import Issue, Reason
from connector.reports import render
from connector.sandbox import SandboxOptions, SandboxServer
from connector.sandbox.splose import SPLOSE_DEFECTS, SploseDialect, medicare_number
from connector.validate.decisions import (
    DESCRIPTION_WITHHELD,
    SHARED_BY_PATIENTS,
    DescriptionFilter,
    safe_message,
)
from tests.conftest import (
    FAST_HTTP,
    invoke_cli,
    seeded_sandbox_config,
    write_config,
)
from tests.local_server import serve_app

SPLOSE = "splose"
# Medicare read as a policy prefix too (the old default): every Medicare number becomes a
# candidate that disagrees with the patient's link.
OLD_DEFAULT_PREFIXES = ["Medicare", "Policy", "Insurance"]


def validate_json(config: Path, source: str) -> dict[str, Any]:
    result = invoke_cli(config, "validate", "--source", source, "--all", "--format", "json")
    assert result.exit_code in (0, 1), result.output
    report: dict[str, Any] = json.loads(result.stdout[result.stdout.index("{") :])
    return report


def every_rendering(report: dict[str, Any]) -> str:
    return "\n".join(render(report, fmt) for fmt in ("json", "text", "md", "html"))


# ----------------------------------------------------------------------------- policies


@pytest.fixture(scope="module")
def splose() -> Iterator[SandboxServer]:
    options = SandboxOptions(
        invoices=160,
        # A seed whose unregistered policies (billed through their reference) sit beside no
        # Medicare number, so that every conflict example is a link beating a Medicare number.
        seed=24,
        defect_rate=0.15,
        dialects=(SPLOSE,),
        defect_kinds={SPLOSE: SPLOSE_DEFECTS},
    )
    with SandboxServer(options) as running:
        dialect = running.dialect(SPLOSE)
        assert isinstance(dialect, SploseDialect)
        dialect.rate_limit = 100_000
        yield running


def splose_config(server: SandboxServer, tmp: Path, **source: Any) -> Path:
    return seeded_sandbox_config(server, SPLOSE, tmp, **source)[0]


def test_validate_says_where_each_policy_came_from_and_which_candidates_disagreed(
    splose: SandboxServer, tmp_path: Path
) -> None:
    config = splose_config(splose, tmp_path, policy_reference_prefixes=OLD_DEFAULT_PREFIXES)
    report = validate_json(config, SPLOSE)
    resolution = report["mapping"]["policies"]["resolution"]
    kinds = resolution["by_kind"]
    dialect = splose.dialect(SPLOSE)
    assert isinstance(dialect, SploseDialect)
    invoices = splose.dataset(SPLOSE).invoices
    bodies = {dialect.vendor_id(inv): dialect.invoice_body(inv) for inv in invoices}
    medicare = {
        key
        for key, body in bodies.items()
        if any(r.startswith("Medicare: ") for r in body["referenceNumbers"] or [])
    }

    # Linked patients are billed through their link; an unlinked one through the reference.
    assert kinds["link"] > 0 and kinds["reference"] > 0
    by_origin = {o["origin"]: o for o in resolution["by_origin"]}
    assert by_origin["patient link"]["kind"] == "link"
    assert (
        sum(o["invoices"] for o in resolution["by_origin"]) == sum(kinds.values()) - kinds["none"]
    )
    assert all(o["kind"] == "reference" for n, o in by_origin.items() if n.startswith("refer"))

    # Conflicts: exactly the records warned POLICY_CONFLICT, all of them Medicare invoices.
    rows = {str(r["id"]): r for r in report["records"]}
    warned = {key for key, row in rows.items() if "POLICY_CONFLICT" in row["warnings"]}
    assert warned and warned <= medicare
    assert resolution["conflicts"] == len(warned)
    assert resolution["with_several_candidates"] >= len(warned)
    assert 0 < len(resolution["conflict_examples"]) <= 5
    for example in resolution["conflict_examples"]:
        best, *others = example["candidates"]
        # Best first: the registered, active link is used; the Medicare number fails the
        # registry's format and loses, whatever the vendor's order.
        assert best["used"] and best["kind"] == "link" and best["standing"] == "active"
        assert not any(c["used"] for c in others)
        assert any(
            c["origin"] == "referenceNumbers[Medicare]" and c["standing"] == "bad_format"
            for c in others
        )
    for key in warned:
        patient = rows[key]["patient"]
        assert patient["policy_source"] in ("patient link", "referenceNumbers[Policy]")
        assert len(patient["policy_candidates"]) >= 2
        assert sum(c["used"] for c in patient["policy_candidates"]) == 1

    # Masked everywhere, in every format: no whole policy or Medicare number.
    shown = every_rendering(report)
    for invoice in invoices:
        if invoice.policy_number:
            assert invoice.policy_number not in shown
    for key in medicare:
        assert medicare_number(bodies[key]["id"]) not in shown
    for heading in ("Policy resolution", "patient link", "Category decisions by rule kind"):
        assert heading in render(report, "text") and heading in render(report, "html")


def test_with_the_shipped_prefixes_medicare_numbers_are_not_candidates(
    splose: SandboxServer, tmp_path: Path
) -> None:
    report = validate_json(splose_config(splose, tmp_path), SPLOSE)
    resolution = report["mapping"]["policies"]["resolution"]
    origins = {o["origin"] for o in resolution["by_origin"]}
    assert "referenceNumbers[Medicare]" not in origins
    assert not any(
        c["origin"] == "referenceNumbers[Medicare]"
        for e in resolution["conflict_examples"]
        for c in e["candidates"]
    )


# ----------------------------------------------------------------------------- categories

NAME = "Zebulon Quattlebaum"
# Each line: (vendor category word, description, how many patients are billed it).
SHARED = "Flurbo quux"  # no rule knows it; price-list wording billed to many patients
RARE = "Wibble plonk"  # no rule knows it either, but only two patients have it
LINES: list[tuple[str | None, str]] = [
    ("radiology", "Chest X-ray"),  # exact: the word is a category
    ("Consulta", "Visit"),  # map: the source's word map
    ("other", "Blood test"),  # keyword
    ("other", "Missed Appointment Fee"),  # non-clinical: unmapped on purpose
    ("other", SHARED),
]
RULES = """\
version: 1
sources:
  decisions:
    description_rules: true
    map:
      Consulta: consultation
"""


def _invoice(number: int) -> dict[str, Any]:
    """A MediTrak detail record; every patient different, the name one a sentinel's."""
    lines = list(LINES)
    if number < 2:
        lines.append(("other", RARE))
    if number == 0:
        lines.append(("other", f"Report for {NAME}"))
        # One patient only, but every word is the deciding rule's own: shown.
        lines.append(("other", "Admin Fee"))
    items = [
        {
            "category": word,
            "description": text,
            "quantity": "1",
            "unit_price": "10.00",
            "total": "10.00",
        }
        for word, text in lines
    ]
    return {
        "invoice_id": f"INV-{number:03d}",
        "invoice_number": f"2025-{number:03d}",
        "service_date": "2025-03-01",
        "updated_at": "2025-03-02T10:00:00Z",
        "status": "paid",
        "total_amount": str(Decimal("10.00") * len(items)),
        "currency": "USD",
        "facility": "Clinic",
        "patient": {
            "name": NAME if number == 0 else f"Patient Number{chr(65 + number)}",
            "policy_number": f"POL-{700000 + number}",
        },
        "items": items,
    }


INVOICES = [_invoice(n) for n in range(SHARED_BY_PATIENTS + 1)]


def _vendor() -> web.Application:
    async def listing(request: web.Request) -> web.Response:
        summaries = [{"invoice_id": i["invoice_id"]} for i in INVOICES]
        body = {"invoices": summaries, "pagination": {"total_count": len(INVOICES)}}
        return web.json_response(body)

    async def detail(request: web.Request) -> web.Response:
        found = next(i for i in INVOICES if i["invoice_id"] == request.match_info["id"])
        return web.json_response({"success": True, "invoice": found})

    app = web.Application()
    app.router.add_get("/api/v1/invoices/", listing)
    app.router.add_get("/api/v1/invoices/{id}/", detail)
    return app


def test_validate_counts_category_decisions_per_rule_kind_and_withholds_private_text(
    tmp_path: Path,
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    with serve_app(_vendor()) as url:
        source = {
            "type": "meditrak",
            "name": "decisions",
            "base_url": f"{url}/api/v1/",
            "api_key": "k-decisions-0001",
            "category_rules": str(rules),
            "http": FAST_HTTP,
        }
        config = write_config(tmp_path / "connector.yaml", {"sources": [source]})
        report = validate_json(config, "decisions")
    categories = report["mapping"]["categories"]
    kinds = {k["kind"]: k for k in categories["by_kind"]}
    assert list(kinds) == ["exact", "non-clinical", "map", "keyword", "pattern", "fallback", "none"]
    invoices = len(INVOICES)
    assert kinds["exact"]["count"] == invoices and kinds["exact"]["categories"] == {
        "radiology": invoices
    }
    assert kinds["map"]["categories"] == {"consultation": invoices}
    assert kinds["keyword"]["categories"] == {"laboratory": invoices}
    # Missed appointment and admin fees, the report about a patient: non-clinical, unmapped.
    assert kinds["non-clinical"]["count"] == invoices + 2
    assert kinds["none"]["count"] == invoices + 2  # the shared and the rare description
    assert sum(k["count"] for k in kinds.values()) == sum(len(i["items"]) for i in INVOICES)

    unmapped = {
        (d["description"], d["rule"]): d["count"] for d in categories["unmapped_descriptions"]
    }
    # Price-list text billed to several patients is shown; a description two patients have,
    # and one naming a patient, are withheld.
    assert unmapped[(SHARED, None)] == invoices
    assert unmapped[(DESCRIPTION_WITHHELD, None)] == 2
    assert unmapped[(DESCRIPTION_WITHHELD, "non-clinical:report writing")] == 1
    assert ("Missed Appointment Fee", "non-clinical:missed appointment") in unmapped
    assert unmapped[("Admin Fee", "non-clinical:admin fee")] == 1
    assert RARE not in json.dumps(report)

    # No part of the patient's name in any rendering (findings' messages included).
    shown = every_rendering(report).lower()
    assert "zebulon" not in shown and "quattlebaum" not in shown
    text = render(report, "text")
    assert "left unmapped by" in text and "non-clinical:missed appointment" in text


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        ("expected YYYY-MM-DD, got '01/03/2025'", "expected YYYY-MM-DD, got '01/03/2025'"),
        ("not a number: '$12.50'", "not a number: '$12.50'"),
        (
            "expected YYYY-MM-DD, got 'Zebulon Quattlebaum'",
            "expected YYYY-MM-DD, got (value withheld)",
        ),
        ("not a number: '99887766'", "not a number: (value withheld)"),
        ("not a number: 'zebulon@quattlebaum-family.test'", "not a number: (value withheld)"),
    ],
)
def test_a_format_errors_quoted_value_is_kept_only_in_the_shape_of_a_date_or_amount(
    message: str, shown: str
) -> None:
    issue = Issue(Reason.FIELD_INVALID, "service_date", message)
    assert safe_message(issue, None, DescriptionFilter()) == shown
    # Other findings quote vendor vocabulary (a category or status word): kept as they are.
    word = Issue(Reason.CATEGORY_UNMAPPED, "items[0].category", "no MediTrak category ('misc')")
    assert safe_message(word, None, DescriptionFilter()) == word.message
