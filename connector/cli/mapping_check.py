"""`connector mapping check`: fetch one page of a source and show, record by record, which
vendor value fed which canonical field and what validation makes of the record, so that an
integrator can debug a mapping (a `rest` source's `fields:` above all) without reading code.

For a `rest` source the rows are the mapping's own reads (`connector.mapping.declarative`
traces the very code a sync runs); for a hand-written vendor they are its declared
`field_sources` read from the raw record beside the mapped value. Patient names, policy numbers
and patient ids are masked as everywhere else. The store is not touched unless `--registry` asks
for its policy registry and patient links.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import date
from decimal import Decimal
from typing import Annotated, Any

import typer
from rich.box import HEAVY_HEAD
from rich.table import Table

from connector.cli.common import check_sources, err, load, open_store, out, print_json
from connector.errors import ConfigError, ConnectorError
from connector.issues import Issue
from connector.mapping.declarative import MISSING, FieldMapping, TraceRow, dig, trace_record
from connector.mapping.kit import record_path
from connector.masking import mask_name, mask_policy
from connector.model import Invoice
from connector.pipeline.engine import RecordProcessor
from connector.pipeline.wiring import build_categorizers, policy_checker
from connector.settings import AppConfig, SourceConfig
from connector.sources.adapter import FetchRequest
from connector.sources.discovery import source_type
from connector.store import Store

commands = typer.Typer(
    name="mapping", help="Debug a source's field mapping on live records.", no_args_is_help=True
)

# Canonical fields whose values are patient data: shown masked.
_MASKS = {
    "patient.name": mask_name,
    "patient.policy_number": mask_policy,
    "patient.ref": mask_policy,
}


def shown(canonical: str, value: Any) -> Any:
    """A value as the check prints it: patient data masked, amounts and dates as text."""
    if value is None or value is MISSING:
        return None
    mask = _MASKS.get(canonical)
    if mask is not None:
        return mask(str(value))
    if isinstance(value, Decimal | date):
        return str(value)
    if isinstance(value, str | int | float | bool):
        return value
    # A whole object or array fed the field (a patient, the items): its shape, not its content.
    return f"<{type(value).__name__} of {len(value)}>" if hasattr(value, "__len__") else None


def canonical_values(invoice: Invoice) -> dict[str, Any]:
    values: dict[str, Any] = {
        "id": invoice.id,
        "invoice_number": invoice.invoice_number,
        "invoice_date": invoice.invoice_date,
        "total_amount": invoice.total_amount,
        "status": invoice.status.value if invoice.status else None,
        "facility": invoice.facility,
        "patient.name": invoice.patient.name,
        "patient.policy_number": invoice.patient.policy_number,
        "patient.ref": invoice.patient.source_ref,
        "currency": invoice.currency,
        "paid_amount": invoice.paid_amount,
        "updated_at": invoice.source_updated_at.isoformat() if invoice.source_updated_at else None,
        "items": len(invoice.items),
    }
    for index, item in enumerate(invoice.items):
        at = f"items[{index}]"
        values[f"{at}.category"] = item.category.value if item.category else None
        values[f"{at}.description"] = item.description
        values[f"{at}.quantity"] = item.quantity
        values[f"{at}.unit_price"] = item.unit_price
        values[f"{at}.total"] = item.total
    return values


def declared_rows(
    raw: Any, declared: dict[str, tuple[str, ...]], invoice: Invoice | None
) -> list[TraceRow]:
    """A hand-written mapping's rows: each declared vendor path's raw value, per item for the
    `items[]` fields (the canonical value is added beside it by the caller)."""
    items = invoice.items if invoice is not None else ()
    rows = []
    for canonical, paths in declared.items():
        targets = [canonical]
        if canonical.startswith("items[]."):
            targets = [canonical.replace("[]", f"[{i}]") for i in range(len(items))]
        for target in targets:
            index = target[6 : target.index("]")] if target.startswith("items[") else None
            for path in paths or (None,):
                vendor: Any = None
                located = record_path(path) if path else None
                if located is not None:
                    if index is not None and "[]" in located:
                        located = located.replace("[]", f".{index}")
                    vendor = dig(raw, located)
                rows.append(TraceRow(target, path, vendor, None))
    return rows


def record_report(processor: RecordProcessor, raw: Any) -> dict[str, Any]:
    """One record's rows, verdict and issues, patient data masked."""
    accepted, rejected, _ = processor.process(raw)
    invoice = accepted.invoice if accepted is not None else rejected.canonical if rejected else None
    fields = processor.context.options.get("fields")
    if isinstance(fields, FieldMapping):
        rows, traced, _issues = trace_record(raw, fields, processor.context)
        invoice = invoice or traced
    else:
        rows = declared_rows(raw, dict(processor.mapping.field_sources), invoice)
    # A rejected record's issues; an accepted one's warnings.
    issues: list[Issue] = list(rejected.issues) if rejected is not None else []
    if accepted is not None:
        issues = processor.warnings(accepted.invoice)
    final = canonical_values(invoice) if invoice is not None else {}
    return {
        "id": processor.mapping.record_id(raw),
        "verdict": "accepted" if accepted is not None else "quarantined",
        "issues": [
            {"code": i.code.value, "field": i.path, "message": i.message, "severity": i.severity}
            for i in issues
        ],
        "fields": [
            {
                "canonical": row.canonical,
                "vendor_path": row.vendor_path,
                "vendor_value": shown(row.canonical, row.vendor_value),
                "read_as": shown(row.canonical, row.result),
                "canonical_value": shown(row.canonical, final.get(row.canonical)),
            }
            for row in rows
        ],
    }


async def first_page(source: SourceConfig) -> tuple[list[Any], list[dict[str, Any]]]:
    """The records of the list's first page (details and lookups included), and the records
    whose own fetch failed."""
    adapter = source_type(source.type).adapter_class().create(source)
    walk = adapter.fetch_pages(FetchRequest())
    async with adapter, contextlib.aclosing(walk) as pages:  # type: ignore[type-var]
        async for page in pages:
            failed = [
                {"id": f.record_key, "code": f.issue.code.value, "message": f.issue.message}
                for f in page.failures
            ]
            return list(page.records), failed
    return [], []


def check_source(
    config: AppConfig, name: str, limit: int, store: Store | None = None
) -> dict[str, Any]:
    """The report of one source's first page; with `store`, policies are resolved and checked
    against its registry and patient links as a sync does."""
    source = config.source(name)
    categorizers = build_categorizers(config)
    checker = policy_checker(config, store) if store is not None else None
    processor = RecordProcessor.for_source(
        source,
        categorize=categorizers.get(source.name),
        policy_check=checker.check if checker else None,
        resolve_policy=checker.resolve if checker else None,
    )
    records, failed = asyncio.run(first_page(source))
    return {
        "source": source.name,
        "type": source.type,
        "records": [record_report(processor, raw) for raw in records[:limit]],
        "fetch_failures": failed,
        "note": None
        if store is not None
        else "the policy registry is not consulted (--registry): POLICY_* codes may differ",
    }


def print_report(report: dict[str, Any], records: Sequence[dict[str, Any]]) -> None:
    box = HEAVY_HEAD if out.is_terminal else None
    for number, record in enumerate(records, start=1):
        title = f"{report['source']} record {number}: {record['id']} - {record['verdict']}"
        table = Table(title=title, box=box)
        for column in ("canonical field", "vendor path", "vendor value", "read as", "canonical"):
            table.add_column(column)
        for row in record["fields"]:
            table.add_row(
                row["canonical"],
                row["vendor_path"] or "(constant)",
                _cell(row["vendor_value"]),
                _cell(row["read_as"]),
                _cell(row["canonical_value"]),
            )
        out.print(table)
        for issue in record["issues"]:
            line = f"  {issue['severity']} {issue['code']} at {issue['field']}: {issue['message']}"
            out.print(line, highlight=False, markup=False)
    for failure in report["fetch_failures"]:
        line = f"fetch failed: {failure['id']} {failure['code']}: {failure['message']}"
        out.print(line, highlight=False, markup=False)
    if report["note"]:
        out.print(report["note"], highlight=False, markup=False)


def _cell(value: Any) -> str:
    return "-" if value is None else repr(value) if isinstance(value, str) else str(value)


@commands.command("check")
def check(
    source: Annotated[str, typer.Option("--source", "-s", help="The configured source.")],
    records: Annotated[
        int, typer.Option("--records", "-n", min=1, help="Show at most this many records.")
    ] = 5,
    registry: Annotated[
        bool,
        typer.Option("--registry", help="Resolve and check policies against the store's registry."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Fetch one page of a source and show which vendor value fed which canonical field.

    Exit codes: 0 shown (whatever the verdicts); 1 the source could not be read; 2 a wrong
    config or source name.
    """
    config = load()
    check_sources(config, [source])
    store = open_store(config) if registry else None
    try:
        report = check_source(config, source, records, store)
    except ConfigError as exc:
        err.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(2) from None
    except ConnectorError as exc:
        err.print(f"[bold red]{source}[/]: {exc}", highlight=False)
        raise typer.Exit(1) from None
    finally:
        if store is not None:
            store.close()
    if as_json:
        print_json(report)
        return
    print_report(report, report["records"])
