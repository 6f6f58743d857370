"""`connector schema`: the canonical record as a JSON Schema, and per source type which vendor
field feeds each canonical field.

The schema is `ImportRecord` (the MediTrak import contract) as pydantic serialises it, with
the provenance fields that `connector export -f jsonl` writes beside the contract's own. The
mapping comes from the mapping's declared `field_sources` (for a type mapped by each source's
config, `rest`, that source's own `fields:`), never from guessing at key names.
Nothing here touches the network or the store.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.box import HEAVY_HEAD
from rich.markup import escape
from rich.table import Table

from connector.cli.common import check_sources, err, load, print_json, show
from connector.errors import ConfigError
from connector.mapping.kit import CANONICAL_FIELDS
from connector.model import ImportRecord
from connector.pipeline.engine import mapping_options
from connector.settings import SourceConfig
from connector.sources.discovery import source_types
from connector.validate.fields import declared_field_sources

commands = typer.Typer()

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
# What `Invoice.to_import_record` adds beside the contract: where the record came from. Optional
# (the contract allows extra keys) but declared, so that an operator sees every key an export
# holds; tests/test_cli_schema.py checks that real exported records use no undeclared key.
PROVENANCE_PROPERTIES: dict[str, dict[str, Any]] = {
    "source": {"type": "string", "description": "The configured source's name."},
    "currency": {"type": "string", "description": "ISO 4217 code of every amount."},
    "source_status": {
        "type": ["string", "null"],
        "description": "The vendor's own status word.",
    },
    "paid_amount": {
        "type": ["string", "null"],
        "description": "Amount paid so far, a decimal string.",
    },
    "source_updated_at": {
        "type": ["string", "null"],
        "format": "date-time",
        "description": "When the vendor last changed the invoice (UTC).",
    },
}


def import_record_schema() -> dict[str, Any]:
    """The exported jsonl record's JSON Schema. Serialization mode: the export writes amounts
    and quantities as decimal strings, which is what this mode describes."""
    schema = ImportRecord.model_json_schema(mode="serialization")
    schema["properties"].update(PROVENANCE_PROPERTIES)
    return {"$schema": JSON_SCHEMA_DIALECT, **schema}


def field_sources(type_name: str, source: SourceConfig | None = None) -> dict[str, list[str]]:
    """Canonical field → the vendor paths feeding it (usual one first); [] when the vendor has
    no such field. With a configured `source`, a type mapped by each source's config (`rest`)
    shows that source's own vendor paths. Exit 2 naming the known types when `type_name` is
    not one."""
    try:
        types = source_types()
    except ConfigError as exc:
        err.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(2) from None
    if type_name not in types:
        known = ", ".join(sorted(types))
        err.print(f"unknown source type {type_name!r}; known: {known}", highlight=False)
        raise typer.Exit(2)
    try:
        mapping = types[type_name].mapping()
        options = mapping_options(source) if source is not None else None
        declared = declared_field_sources(mapping, options)
    except ConfigError as exc:
        err.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(2) from None
    return {name: list(declared.get(name, ())) for name in CANONICAL_FIELDS}


@commands.command()
def schema(
    source: Annotated[
        str | None,
        typer.Option("--source", "-s", help="Show this configured source's field mapping."),
    ] = None,
    type_name: Annotated[
        str | None,
        typer.Option("--type", "-t", help="Show this source type's field mapping (no config)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The exported record's JSON Schema; with --source/--type, the vendor field per field."""
    if source is not None and type_name is not None:
        err.print("give --source or --type, not both", highlight=False)
        raise typer.Exit(2)
    configured: SourceConfig | None = None
    if source is not None:
        config = load()
        check_sources(config, [source])
        configured = config.source(source)
        type_name = configured.type
    elif type_name is None:
        # The schema is a JSON document whichever way it is asked for.
        print_json(import_record_schema())
        return
    fields = field_sources(type_name, configured)
    if as_json:
        print_json({"source": source, "type": type_name, "fields": fields})
        return
    title = f"{source} ({type_name})" if source else type_name
    table = Table(title=f"Field mapping: {title}", box=HEAVY_HEAD)
    table.add_column("canonical field")
    table.add_column("vendor fields (usual first)")
    for name, paths in fields.items():
        # Escaped: a vendor path such as "lines[].amount" is no rich markup.
        table.add_row(name, escape(", ".join(paths) or "- (the vendor has none)"))
    # Box-drawing only for a person at a terminal; a pipe or a log gets plain columns.
    show(table)
