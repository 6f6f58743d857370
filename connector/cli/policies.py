"""`connector policies import | link | list`: the MediTrak policy registry and patient links.

A whole CSV file is checked before anything is written, and every bad row is reported. Policy
numbers and holder names are masked in every view unless `--reveal` is given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from connector.cli.common import (
    RevealOpt,
    TextOrJsonOpt,
    check_text_or_json,
    err,
    load,
    open_store,
    out,
    print_json,
    show,
)
from connector.errors import ConnectorError
from connector.issues import Reason
from connector.masking import mask_name, mask_policy
from connector.policies import (
    MAX_REMOVED_SHARE,
    RegistryFileError,
    RegistryReplaceRefused,
    parse_links_csv,
    parse_registry_csv,
)
from connector.store import Store
from connector.store.policies import (
    ImportRefused,
    RegistryImport,
    count_policies,
    import_links,
    import_policies,
    list_policies,
)

RowT = TypeVar("RowT")
CountsT = TypeVar("CountsT")

commands = typer.Typer(
    name="policies", help="The MediTrak policy registry and patient links.", no_args_is_help=True
)


def _read_csv(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        err.print(f"cannot read {path}: {exc}", highlight=False, markup=False)
        raise typer.Exit(2) from None


def _report_file_errors(path: Path, exc: RegistryFileError) -> None:
    err.print(f"{path}: {len(exc.problems)} problem(s); nothing was imported", highlight=False)
    for problem in exc.problems:
        err.print(f"  - {problem}", highlight=False, markup=False)


def _parse_csv(file: Path, parse: Callable[[str], Sequence[RowT]]) -> Sequence[RowT]:
    """Every row of a CSV file, or every bad row reported and exit 1."""
    try:
        return parse(_read_csv(file))
    except RegistryFileError as exc:
        _report_file_errors(file, exc)
        raise typer.Exit(1) from None


def _import_csv(
    file: Path,
    parse: Callable[[str], Sequence[RowT]],
    store_rows: Callable[[Store, Sequence[RowT]], CountsT],
) -> tuple[Sequence[RowT], CountsT]:
    """Parse a whole CSV (every bad row reported, exit 1) and store it in one transaction."""
    rows = _parse_csv(file, parse)
    with open_store(load()) as store:
        try:
            return rows, store_rows(store, rows)
        except ConnectorError as exc:
            err.print(f"import failed, nothing was imported: {exc}", highlight=False)
            raise typer.Exit(1) from None


_REMOVED_SHOWN = 20


def _counts_text(result: RegistryImport) -> str:
    counts = f"{result.inserted} new, {result.updated} updated, {result.unchanged} unchanged"
    return f"{counts}, {result.removed} removed" if result.diff.removed else counts


def _print_removals(result: RegistryImport, console: Console = out) -> None:
    """The removed policies (masked) and what still names them: stored invoices, links."""
    removed = result.diff.removed
    if not removed:
        return
    shown = ", ".join(str(mask_policy(n)) for n in removed[:_REMOVED_SHOWN])
    more = f" and {len(removed) - _REMOVED_SHOWN} more" if len(removed) > _REMOVED_SHOWN else ""
    console.print(f"  removed: {shown}{more}", highlight=False, markup=False)
    if result.invoices_on_removed:
        console.print(
            f"  {result.invoices_on_removed} stored invoice(s) carry a removed policy: they stay "
            "stored as accepted; a sync that brings one of them again quarantines it as "
            f"{Reason.POLICY_UNKNOWN.value}",
            highlight=False,
        )
    if result.links_to_removed:
        console.print(
            f"  {result.links_to_removed} patient link(s) point at a removed policy: those "
            f"patients' invoices are quarantined as {Reason.POLICY_UNKNOWN.value} until "
            "`connector policies link` gives them a registered one",
            highlight=False,
        )


def _import_summary(
    file: Path, records: int, result: RegistryImport, *, replace: bool, dry_run: bool
) -> dict[str, Any]:
    """`policies import --json`: counts only. The removed policies are counted, not listed:
    a masked number ("POL-****89") identifies nothing a script could act on, and an unmasked
    one must not reach CI logs; `--dry-run` without `--json` shows them masked."""
    return {
        "file": str(file),
        "policies_in_file": records,
        "replace": replace,
        "dry_run": dry_run,
        "written": result.written,
        "refused": result.refusal is not None,
        "refusal": result.refusal,
        "new": result.inserted,
        "updated": result.updated,
        "unchanged": result.unchanged,
        "removed": result.removed,
        "invoices_on_removed": result.invoices_on_removed,
        "links_to_removed": result.links_to_removed,
        "registry_before": result.diff.stored_before,
        "registry_after": result.diff.stored_after,
    }


@commands.command("import")
def policies_import(
    file: Annotated[
        Path, typer.Argument(help="CSV: policy_number,holder_name,status,valid_from,valid_to")
    ],
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="Make the registry equal to the file: policies it lacks are removed "
            "(their invoices then fail as POLICY_UNKNOWN). Refused if that removes more than "
            f"{MAX_REMOVED_SHARE:.0%} of the registry, unless --force.",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Show what the import would change, write nothing (exit 1 if "
            "it would be refused).",
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="With --replace: remove past the safety limit."),
    ] = False,
    json_output: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print the counts as one JSON object on stdout (no policy numbers; also when "
            "refused); exit codes unchanged.",
        ),
    ] = False,
) -> None:
    """Import (upsert) the policy registry; any bad row stops the whole import. With
    --replace, policies absent from the file are removed in the same transaction."""
    if force and not replace:
        err.print("--force only applies to --replace", highlight=False)
        raise typer.Exit(2)
    records = _parse_csv(file, parse_registry_csv)

    def summary(result: RegistryImport) -> None:
        print_json(_import_summary(file, len(records), result, replace=replace, dry_run=dry_run))

    with open_store(load()) as store:
        try:
            result = import_policies(
                store,
                records,
                replace=replace,
                max_removed_share=None if force else MAX_REMOVED_SHARE,
                dry_run=dry_run,
            )
        except RegistryReplaceRefused as exc:
            refused = (
                exc.outcome
                if isinstance(exc, ImportRefused)
                else RegistryImport(exc.diff, written=False, refusal=str(exc))
            )
            err.print(f"{file}: {exc}", highlight=False, markup=False)
            if json_output:
                summary(refused)
            else:
                _print_removals(refused, err)
            raise typer.Exit(1) from None
        except ConnectorError as exc:
            err.print(f"import failed, nothing was imported: {exc}", highlight=False)
            raise typer.Exit(1) from None
    if json_output:
        summary(result)
        if result.refusal is not None:
            err.print(f"the import would be refused: {result.refusal}", highlight=False)
            raise typer.Exit(1)
        return
    plural = f"polic{'y' if len(records) == 1 else 'ies'}"
    if dry_run:
        verb = "would replace the registry with" if replace else "would import"
        out.print(
            f"dry run, nothing written: {file} {verb} {len(records)} {plural} "
            f"({_counts_text(result)})",
            highlight=False,
            markup=False,
        )
        _print_removals(result)
        if result.refusal is not None:
            err.print(f"the import would be refused: {result.refusal}", highlight=False)
            raise typer.Exit(1)
        return
    verb = "replaced the registry with" if replace else "imported"
    out.print(
        f"{verb} {len(records)} {plural} ({_counts_text(result)}); "
        "run `connector reprocess` to re-validate quarantined invoices",
        highlight=False,
    )
    _print_removals(result)


@commands.command("link")
def policies_link(
    file: Annotated[Path, typer.Argument(help="CSV: source,patient_ref,policy_number")],
) -> None:
    """Import (upsert) patient links for sources that send no policy number."""
    links, counts = _import_csv(file, parse_links_csv, import_links)
    out.print(
        f"imported {len(links)} patient link(s) ({counts.inserted} new, {counts.updated} updated)",
        highlight=False,
    )


@commands.command("list")
def policies_list(reveal: RevealOpt = False, fmt: TextOrJsonOpt = "text") -> None:
    """The registry, policy numbers and holders masked unless --reveal."""
    check_text_or_json(fmt)
    config = load()
    with open_store(config, read_only=True) as store:
        records = list_policies(store)
        _policies, links = count_policies(store)
    rows = [
        {
            "policy_number": r.policy_number if reveal else mask_policy(r.policy_number),
            "holder_name": r.holder_name if reveal else mask_name(r.holder_name),
            "status": r.status,
            "valid_from": r.valid_from.isoformat() if r.valid_from else None,
            "valid_to": r.valid_to.isoformat() if r.valid_to else None,
        }
        for r in records
    ]
    if fmt == "json":
        print_json(rows)
        return
    table = Table(title=f"Policy registry: {len(rows)} policies, {links} patient links")
    for column in ("policy", "holder", "status", "valid from", "valid to"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(v) if v is not None else "-" for v in row.values()))
    show(table)
