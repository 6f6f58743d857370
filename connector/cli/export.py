"""`connector export`: stored invoices as MediTrak import records (jsonl) or CSV line items."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Annotated

import typer

from connector.cli.common import SourceOpt, err, load, open_store, private_output

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
    with open_store(config) as store, private_output(output) as handle:
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
                    writer.writerow(
                        [
                            invoice.source,
                            invoice.id,
                            invoice.invoice_number,
                            invoice.invoice_date,
                            invoice.status,
                            invoice.total_amount,
                            invoice.currency,
                            invoice.facility,
                            invoice.patient.name,
                            invoice.patient.policy_number,
                            line_no,
                            item.category,
                            item.description,
                            item.quantity,
                            item.unit_price,
                            item.total,
                        ]
                    )
    if output is not None:
        err.print(f"exported {count} invoice(s) to {output}")
