"""`connector export`: stored invoices as MediTrak import records (jsonl) or CSV line items.

The CSV is opened by people in spreadsheets, so its text cells are neutralised against formula
injection (OWASP): vendor text starting like a formula gets a leading `'`. Numbers and dates are
written as they are, and the jsonl records (data for machines) exactly as stored."""

from __future__ import annotations

import csv
import json
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer

from connector.cli.common import SourceOpt, err, load, open_store, private_output
from connector.model import Invoice, LineItem

commands = typer.Typer()

CSV_COLUMNS = (
    "source",
    "id",
    "invoice_number",
    "invoice_date",
    "status",
    "total_amount",
    "currency",
    "facility",
    "patient_name",
    "policy_number",
    "line_no",
    "category",
    "description",
    "quantity",
    "unit_price",
    "item_total",
)

# A spreadsheet reads a cell starting with one of these as a formula (or strips the tab/CR and
# then does): OWASP's list for CSV injection.
FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(value: str | None) -> str | None:
    """A text cell as a spreadsheet shows it verbatim: a formula-leading one gets a `'` in front
    (the spreadsheet's own "this is text" mark)."""
    if value and value.startswith(FORMULA_LEADS):
        return "'" + value
    return value


def csv_row(invoice: Invoice, line_no: int, item: LineItem) -> list[object]:
    """One line item's cells in CSV_COLUMNS order. Which cells are text is decided here, per
    column, never by the value: a credit of -12.50 in a number column stays a number, while a
    description "-12 discount" is text and is neutralised."""
    text: dict[str, str | None] = {
        "source": invoice.source,
        "id": invoice.id,
        "invoice_number": invoice.invoice_number,
        "status": invoice.status,
        "currency": invoice.currency,
        "facility": invoice.facility,
        "patient_name": invoice.patient.name,
        "policy_number": invoice.patient.policy_number,
        "category": item.category,
        "description": item.description,
    }
    numbers: dict[str, Decimal | int | date | None] = {
        "invoice_date": invoice.invoice_date,
        "total_amount": invoice.total_amount,
        "line_no": line_no,
        "quantity": item.quantity,
        "unit_price": item.unit_price,
        "item_total": item.total,
    }
    cells: dict[str, object] = {name: spreadsheet_text(value) for name, value in text.items()}
    cells.update(numbers)
    return [cells[name] for name in CSV_COLUMNS]


@commands.command()
def export(
    source: SourceOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="jsonl or csv.")] = "jsonl",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File (default stdout).")
    ] = None,
    include_void: Annotated[
        bool, typer.Option("--include-void", help="Also export void (non-billable) invoices.")
    ] = False,
) -> None:
    """Stored invoices as MediTrak import records (jsonl), or one CSV row per line item."""
    if fmt not in ("jsonl", "csv"):
        err.print(f"--format must be jsonl or csv, not {fmt!r}")
        raise typer.Exit(2)
    config = load()
    count = 0
    with open_store(config, read_only=True) as store, private_output(output) as handle:
        invoices = store.iter_invoices(source, include_void=include_void)
        if fmt == "jsonl":
            for invoice in invoices:
                handle.write(json.dumps(invoice.to_import_record(), ensure_ascii=False) + "\n")
                count += 1
        else:
            writer = csv.writer(handle)
            writer.writerow(CSV_COLUMNS)
            for invoice in invoices:
                count += 1
                for line_no, item in enumerate(invoice.items, start=1):
                    writer.writerow(csv_row(invoice, line_no, item))
    if output is not None:
        err.print(f"exported {count} invoice(s) to {output}")
