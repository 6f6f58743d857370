"""Non-clinical lines (cancellation and missed-appointment fees, surcharges, gift vouchers,
admin, booking and report-writing fees, late payment) in each vendor's own wording: through
the vendor's real mapping they stay CATEGORY_UNMAPPED with a message saying why, unless the
source's `non_clinical_category` says where they go; a fee for a clinical service rendered
stays that service; and `categories explain` shows the precedence decision."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from connector.cli.app import get_app
from connector.config import AppConfig, build_config
from connector.errors import ConfigError
from connector.issues import Reason
from connector.model import Category, Invoice
from connector.pipeline.categories import categorizer_for, load_rule_set, unmapped_message
from connector.pipeline.validation import validate_invoice
from mappings.bio_ecko import MAPPING as BIO_ECKO
from mappings.citabox import MAPPING as CITABOX
from mappings.splose import MAPPING as SPLOSE

FIXTURES = Path(__file__).resolve().parent / "fixtures"

# (vendor, description as that vendor's clinics word it, the non-clinical kind recorded).
FEE_LINES: list[tuple[str, str, str]] = [
    # Splose (Australian allied health, English; dated appointment lines).
    ("splose", "Missed Appointment Fee", "missed appointment"),
    ("splose", "Wed 30 Aug 2023, 09:00am - Late Cancellation Fee", "cancellation fee"),
    ("splose", "Cancellation fee - physio", "cancellation fee"),
    ("splose", "Did not attend (DNA) - Initial Assessment", "missed appointment"),
    ("splose", "Credit card surcharge 1.5%", "surcharge"),
    ("splose", "Gift Voucher $100", "gift voucher"),
    ("splose", "Admin fee", "admin fee"),
    ("splose", "Report writing - WorkCover", "report writing"),
    ("splose", "Late payment fee", "late payment"),
    # Bio Ecko (Indian clinics, English; charges filed under a department).
    ("bio_ecko", "Cancellation Charges", "cancellation fee"),
    ("bio_ecko", "No-show charges", "missed appointment"),
    ("bio_ecko", "Weekend surcharge", "surcharge"),
    ("bio_ecko", "Gift card", "gift voucher"),
    ("bio_ecko", "Administrative charges", "admin fee"),
    ("bio_ecko", "Medical report charges", "report writing"),
    ("bio_ecko", "Registration fee", "booking fee"),
    # CitaBox (Costa Rica, Spanish; one free-text service per invoice).
    ("citabox", "Cargo por cancelación de cita", "cancellation fee"),
    ("citabox", "Cita no asistida", "missed appointment"),
    ("citabox", "Recargo por pago con tarjeta", "surcharge"),
    ("citabox", "Tarjeta de regalo", "gift voucher"),
    ("citabox", "Cargo administrativo por trámite de expediente", "admin fee"),
    ("citabox", "Emisión de informe médico", "report writing"),
    ("citabox", "Recargo por pago tardío", "surcharge"),
    ("citabox", "Intereses por mora", "late payment"),
]
# A fee for a clinical service rendered names no non-clinical kind: it stays that service.
CLINICAL_FEES = [
    ("Emergency Room Fee", Category.EMERGENCY),
    ("Consultation fee", Category.CONSULTATION),
    ("Dispensing fee", Category.PHARMACY),
    ("Surgeon's fee", Category.SURGERY),
    ("Honorarios médicos - consulta", Category.CONSULTATION),
    ("Ecografía con informe", Category.RADIOLOGY),
    ("X-ray with radiologist report", Category.RADIOLOGY),
    ("Vaccine administration fee", Category.PHARMACY),
]


def fixture(vendor: str, name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / vendor / name).read_text(encoding="utf-8"))
    return loaded


def splose_record(description: str, item_type: str = "service") -> dict[str, Any]:
    record = fixture("splose", "invoice_mixed.json")
    record["invoiceItems"] = [
        {
            "id": 1,
            "type": item_type,
            "typeId": 9,
            "code": None,
            "description": description,
            "unitPrice": 60.00,
            "quantity": 1,
            "discount": None,
            "taxType": "GST_FREE",
            "taxRate": 0,
        }
    ]
    record.update(taxStatus="no tax", subtotal=60.00, tax=0, total=60.00, paidAmount=60.00)
    return record


def bio_ecko_record(description: str, department: str = "General Medicine") -> dict[str, Any]:
    record = fixture("bio_ecko", "detail_documented.json")
    record["line_items"] = [
        {
            "service_name": description,
            "department": department,
            "quantity": 1,
            "rate": 500.00,
            "discount": 0.00,
            "tax_rate": 0,
            "tax": 0.00,
            "amount": 500.00,
        }
    ]
    record["totals"] = {
        "sub_total": 500.00,
        "discount": 0.00,
        "tax": {"cgst": 0.00, "sgst": 0.00, "igst": 0.00},
        "grand_total": 500.00,
    }
    record["payments"], record["balance"], record["status"] = [], 500.00, "finalized"
    return record


def citabox_record(description: str) -> dict[str, Any]:
    record = copy.deepcopy(fixture("citabox", "documented_example.json"))
    record["service_description"] = description
    return record


def config(vendor: str, non_clinical: str | None = None) -> AppConfig:
    credentials: dict[str, dict[str, Any]] = {
        "splose": {"api_key": "k"},
        "bio_ecko": {"client_id": "c", "client_secret": "s"},
        "citabox": {"email": "a@b.c", "password": "pw", "clinic_id": "c1"},
    }
    source: dict[str, Any] = {
        "type": vendor,
        "name": f"{vendor.replace('_', '-')}-clinic",
        "base_url": "http://127.0.0.1:1/",
        **credentials[vendor],
    }
    if non_clinical is not None:
        source["non_clinical_category"] = non_clinical
    return build_config({"sources": [source]}, env={})


def map_line(vendor: str, description: str, non_clinical: str | None = None) -> Invoice:
    """One invoice holding one line with this description, through the vendor's mapping and
    the categorizer the config builds for the source."""
    source = config(vendor, non_clinical).sources[0]
    mapping = {"splose": SPLOSE, "bio_ecko": BIO_ECKO, "citabox": CITABOX}[vendor]
    record = {
        "splose": splose_record,
        "bio_ecko": bio_ecko_record,
        "citabox": citabox_record,
    }[vendor](description)
    ctx = mapping.context(source.name, currency="USD", categorize=categorizer_for(source))
    invoice: Invoice = mapping.to_canonical(record, ctx)
    return invoice


@pytest.mark.parametrize(("vendor", "description", "kind"), FEE_LINES)
def test_non_clinical_lines_are_unmapped_with_the_reason(
    vendor: str, description: str, kind: str
) -> None:
    invoice = map_line(vendor, description)
    item = invoice.items[0]
    assert (item.category, item.category_rule) == (None, f"non-clinical:{kind}")
    issues = [i for i in validate_invoice(invoice) if i.code is Reason.CATEGORY_UNMAPPED]
    assert [(i.path, i.severity) for i in issues] == [("items[0].category", "error")]
    message = issues[0].message
    assert message.startswith(f"non-clinical charge ({kind}): MediTrak has no category")
    assert "non_clinical_category" in message


@pytest.mark.parametrize(("vendor", "description", "kind"), FEE_LINES)
def test_the_source_override_sends_them_as_the_chosen_category(
    vendor: str, description: str, kind: str
) -> None:
    invoice = map_line(vendor, description, non_clinical="consultation")
    item = invoice.items[0]
    assert (item.category, item.category_rule) == (
        Category.CONSULTATION,
        f"non-clinical:{kind}",
    )
    assert not [i for i in validate_invoice(invoice) if i.code is Reason.CATEGORY_UNMAPPED]


@pytest.mark.parametrize(("description", "category"), CLINICAL_FEES)
def test_a_fee_for_a_clinical_service_stays_that_service(
    description: str, category: Category
) -> None:
    match = load_rule_set().categorizer(["citabox"])(None, description)
    assert match.category is category, match.rule


def test_the_fee_word_beats_the_vendor_word_map_but_not_an_exact_category() -> None:
    # Splose's item type "appointment" maps to consultation: the description says it never
    # happened. A vendor that sends MediTrak's own category word has decided, though.
    splose = load_rule_set().categorizer(["splose"])
    assert splose("appointment", "Missed Appointment Fee").rule == "non-clinical:missed appointment"
    assert splose("appointment", "Initial Assessment").rule == "map:splose/appointment"
    assert splose("consultation", "Missed Appointment Fee").rule == "exact:category"
    bio_ecko = load_rule_set().categorizer(["bio_ecko"])
    match = bio_ecko("General Medicine", "Cancellation Charges")
    assert (match.category, match.rule) == (None, "non-clinical:cancellation fee")


def test_the_vendor_item_type_alone_can_say_non_clinical() -> None:
    # The word reaches the rules as the vendor word (Splose: the item type when there is no
    # code); a neutral description does not hide it.
    categorize = load_rule_set().categorizer(["splose"])
    ctx = SPLOSE.context("splose", currency="AUD", categorize=categorize)
    invoice = SPLOSE.to_canonical(
        splose_record("Thu 7 Sep 2023, 10:00am", item_type="cancellation"), ctx
    )
    item = invoice.items[0]
    assert (item.category, item.category_rule) == (None, "non-clinical:cancellation fee@word")
    assert unmapped_message(item) is not None


def test_fallback_category_does_not_place_non_clinical_lines() -> None:
    categorize = load_rule_set().categorizer(["citabox"], fallback=Category.CONSULTATION)
    assert categorize(None, "Cargo por cancelación").category is None
    assert categorize(None, "Zumba avanzada").category is Category.CONSULTATION


def test_meditrak_contract_sources_keep_their_own_category() -> None:
    # They send the category itself: no description rule, the non-clinical one included.
    categorize = load_rule_set().categorizer(["meditrak_import"])
    assert categorize("consultation", "Missed appointment fee").category is Category.CONSULTATION
    assert categorize("misc", "Missed appointment fee").rule is None


def test_non_clinical_category_is_checked_when_the_config_loads() -> None:
    with pytest.raises(ConfigError, match="non_clinical_category"):
        config("citabox", non_clinical="fees")
    assert config("citabox", non_clinical="consultation").sources[0].non_clinical_category == (
        Category.CONSULTATION
    )


def test_explain_names_the_fee_rule_and_what_it_beat(tmp_path: Path) -> None:
    runner = CliRunner()
    app = get_app()
    cfg = ["-c", str(tmp_path / "none.yaml")]
    result = runner.invoke(app, [*cfg, "categories", "explain", "Missed Appointment Fee"])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    fired = next(line for line in lines if line.strip().startswith("MATCH"))
    assert "non-clinical:missed appointment" in fired
    assert "precedence: a non-clinical charge beats keyword:consultation/appointment" in fired
    assert lines[-1].startswith("=> no category by rule non-clinical:missed appointment")
    chosen = runner.invoke(
        app,
        [
            *cfg,
            "categories",
            "explain",
            "Cancelación tardía - fisioterapia",
            "--non-clinical-category",
            "physiotherapy",
        ],
    )
    assert chosen.exit_code == 0, chosen.output
    assert chosen.output.splitlines()[-1] == (
        "=> physiotherapy  (rule non-clinical:cancellation fee)"
    )


def test_explain_shows_the_stem_and_lexicon_entry_that_fired(tmp_path: Path) -> None:
    runner = CliRunner()
    cfg = ["-c", str(tmp_path / "none.yaml")]
    result = runner.invoke(get_app(), [*cfg, "categories", "explain", "Ecografía de tiroides"])
    assert result.exit_code == 0, result.output
    fired = next(line for line in result.output.splitlines() if "MATCH" in line)
    assert "lexicon imaging_modalities" in fired and "'ecografia'" in fired
    stem = runner.invoke(get_app(), [*cfg, "categories", "explain", "Ear wax removed"])
    fired = next(line for line in stem.output.splitlines() if "MATCH" in line)
    assert "keyword 'remove' matched 'removed' (English stem 'remov')" in fired
    plural = runner.invoke(get_app(), [*cfg, "categories", "explain", "Bridges"])
    fired = next(line for line in plural.output.splitlines() if "MATCH" in line)
    assert "keyword 'bridge' matched 'bridges' (plural/gender)" in fired
