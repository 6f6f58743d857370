"""`connector categories | policies | quarantine | reprocess`: rules, registry and quarantine.

Registered on `connector.cli.app.app` when imported (see `COMMAND_MODULES`). Patient names and
policy numbers are masked in every view unless `--reveal` is given.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from connector.cli.app import app, err, load, open_store, out, state
from connector.errors import ConfigError, ConnectorError
from connector.issues import REASON_HELP, Reason
from connector.masking import mask_name, mask_payload, mask_policy
from connector.pipeline.categories import Categorizer, categorizer_for, load_rule_set
from connector.pipeline.reprocess import reprocess as reprocess_quarantine
from connector.pipeline.wiring import build_engine
from connector.policies import (
    MAX_REMOVED_SHARE,
    RegistryFileError,
    RegistryReplaceRefused,
    parse_links_csv,
    parse_registry_csv,
)
from connector.sources.discovery import source_types
from connector.store import QuarantineEntry, Store
from connector.store.policies import (
    ImportRefused,
    RegistryImport,
    count_policies,
    import_links,
    import_policies,
    list_policies,
)
from connector.store.quarantine_ops import quarantine_entry

RowT = TypeVar("RowT")
CountsT = TypeVar("CountsT")

categories_app = typer.Typer(help="Category rules: see which rule places an item.")
policies_app = typer.Typer(help="The MediTrak policy registry and patient links.")
quarantine_app = typer.Typer(help="Records that failed validation, with every reason.")
app.add_typer(categories_app, name="categories", no_args_is_help=True)
app.add_typer(policies_app, name="policies", no_args_is_help=True)
app.add_typer(quarantine_app, name="quarantine", no_args_is_help=True)

SourceOpt = Annotated[str | None, typer.Option("--source", "-s", help="Only this source.")]
RevealOpt = Annotated[
    bool, typer.Option("--reveal", help="Show patient names and policy numbers unmasked.")
]
FormatOpt = Annotated[str, typer.Option("--format", "-f", help="text or json.")]


def _check_format(fmt: str) -> None:
    if fmt not in ("text", "json"):
        err.print(f"--format must be text or json, not {fmt!r}", highlight=False)
        raise typer.Exit(2)


def _check_reason(reason: str | None) -> str | None:
    if reason is None:
        return None
    code = reason.strip().upper()
    if code not in Reason.__members__:
        known = ", ".join(r.value for r in Reason)
        err.print(f"unknown reason code {reason!r}; known: {known}", highlight=False)
        raise typer.Exit(2)
    return code


def _print_json(payload: Any) -> None:
    # Plain print: rich would colour and re-wrap JSON that scripts are meant to parse.
    print(json.dumps(payload, ensure_ascii=False, indent=2, default=str))


# ----------------------------------------------------------------------------- categories


def _explain_categorizer(source: str | None, rules: Path | None) -> Categorizer:
    if source is not None and state.config_path.exists():
        config = load()
        try:
            configured = config.source(source)
        except ConfigError:
            configured = None
        if configured is not None:
            if rules is not None:
                configured = configured.model_copy(update={"category_rules": str(rules)})
            return categorizer_for(configured)
    rule_set = load_rule_set(rules)
    known_keys = sorted({*rule_set.source_keys(), *source_types()})
    if source is not None and source not in known_keys:
        known = ", ".join(known_keys)
        raise ConfigError(
            [
                f"no configured source {source!r}, and the rules know no source by that name "
                f"(source types and rules keys: {known})"
            ],
            origin="categories explain",
        )
    return rule_set.categorizer([source] if source else [])


@categories_app.command("explain")
def categories_explain(
    text: Annotated[str, typer.Argument(help="The item description to categorise.")],
    source: Annotated[
        str | None,
        typer.Option("--source", "-s", help="Source name (from the config) or type."),
    ] = None,
    word: Annotated[
        str | None,
        typer.Option("--word", "-w", help="The vendor's code / item type / department."),
    ] = None,
    rules: Annotated[
        Path | None, typer.Option("--rules", help="An extra rules file to try in front.")
    ] = None,
) -> None:
    """Print which category rule would place TEXT, and every rule tried before it."""
    try:
        categorizer = _explain_categorizer(source, rules)
    except ConfigError as exc:
        err.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(2) from None
    explanation = categorizer.explain(word, text)
    said = f", word {word!r}" if word is not None else ""
    out.print(f"{text!r}{said} (rules for {categorizer.label})", highlight=False, markup=False)
    for step in explanation.steps:
        mark = "MATCH" if step.matched else "  -  "
        out.print(f"  {mark}  {step.rule:<44} {step.detail}", highlight=False, markup=False)
    match = explanation.match
    if match.category is None:
        out.print("=> no category: CATEGORY_UNMAPPED (quarantined)", highlight=False)
        raise typer.Exit(1)
    out.print(f"=> {match.category.value}  (rule {match.rule})", highlight=False, markup=False)


# ----------------------------------------------------------------------------- policies


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


@policies_app.command("import")
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
        _print_json(_import_summary(file, len(records), result, replace=replace, dry_run=dry_run))

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


@policies_app.command("link")
def policies_link(
    file: Annotated[Path, typer.Argument(help="CSV: source,patient_ref,policy_number")],
) -> None:
    """Import (upsert) patient links for sources that send no policy number."""
    links, counts = _import_csv(file, parse_links_csv, import_links)
    out.print(
        f"imported {len(links)} patient link(s) ({counts.inserted} new, {counts.updated} updated)",
        highlight=False,
    )


@policies_app.command("list")
def policies_list(reveal: RevealOpt = False, fmt: FormatOpt = "text") -> None:
    """The registry, policy numbers and holders masked unless --reveal."""
    _check_format(fmt)
    config = load()
    with open_store(config) as store:
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
        _print_json(rows)
        return
    table = Table(title=f"Policy registry: {len(rows)} policies, {links} patient links")
    for column in ("policy", "holder", "status", "valid from", "valid to"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(v) if v is not None else "-" for v in row.values()))
    out.print(table)


# ----------------------------------------------------------------------------- quarantine


def _error_codes(entry: QuarantineEntry) -> list[str]:
    return sorted({i.code.value for i in entry.issues if i.severity == "error"})


def _entry_summary(entry: QuarantineEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "source": entry.source,
        "record_key": entry.record_key,
        "reasons": _error_codes(entry),
        "issues": [i.as_dict() for i in entry.issues],
        "first_seen_at": entry.first_seen_at.isoformat(),
        "last_seen_at": entry.last_seen_at.isoformat(),
        "attempts": entry.attempts,
    }


@quarantine_app.command("list")
def quarantine_list(
    source: SourceOpt = None,
    reason: Annotated[
        str | None, typer.Option("--reason", "-r", help="Only records with this code.")
    ] = None,
    fmt: FormatOpt = "text",
) -> None:
    """Quarantined records with all their reason codes."""
    _check_format(fmt)
    code = _check_reason(reason)
    config = load()
    with open_store(config) as store:
        entries = store.quarantine_entries(source, code)
    if fmt == "json":
        _print_json([_entry_summary(e) for e in entries])
        return
    table = Table(title=f"Quarantine: {len(entries)} record(s)")
    for column in ("id", "source", "record", "reasons", "attempts", "first seen", "last seen"):
        table.add_column(column, justify="right" if column in ("id", "attempts") else "left")
    for e in entries:
        table.add_row(
            str(e.id),
            e.source,
            e.record_key,
            ", ".join(_error_codes(e)),
            str(e.attempts),
            e.first_seen_at.strftime("%Y-%m-%d %H:%M:%S"),
            e.last_seen_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    out.print(table)
    reasons = Counter(code for e in entries for code in _error_codes(e))
    if reasons:
        summary = ", ".join(f"{code} {n}" for code, n in sorted(reasons.items()))
        out.print(f"by reason: {summary}", highlight=False)


@quarantine_app.command("show")
def quarantine_show(
    entry_id: Annotated[int, typer.Argument(metavar="ID", help="The id from `quarantine list`.")],
    reveal: RevealOpt = False,
    fmt: FormatOpt = "text",
) -> None:
    """One quarantined record: every issue, the canonical attempt and the raw payload."""
    _check_format(fmt)
    config = load()
    with open_store(config) as store:
        entry = quarantine_entry(store, entry_id)
    if entry is None:
        err.print(f"no quarantined record with id {entry_id}")
        raise typer.Exit(1)
    canonical = entry.canonical if reveal else mask_payload(entry.canonical)
    raw = entry.raw_payload if reveal else mask_payload(entry.raw_payload)
    if fmt == "json":
        _print_json({**_entry_summary(entry), "canonical": canonical, "raw_payload": raw})
        return

    def say(text: str) -> None:
        out.print(text, highlight=False, markup=False)

    say(f"quarantine #{entry.id}: {entry.source} / {entry.record_key}")
    say(
        f"first seen {entry.first_seen_at:%Y-%m-%d %H:%M:%S}, last seen "
        f"{entry.last_seen_at:%Y-%m-%d %H:%M:%S} UTC, attempts {entry.attempts}"
    )
    say("issues:")
    for issue in entry.issues:
        say(f"  {issue.severity:<7} {issue.code.value:<24} {issue.path:<28} {issue.message}")
        help_text = REASON_HELP.get(issue.code)
        if help_text:
            say(f"          fix: {help_text[1]}")
    say("canonical attempt:")
    say(json.dumps(canonical, indent=2, ensure_ascii=False) if canonical else "  (none)")
    say("raw payload:")
    say(json.dumps(raw, indent=2, ensure_ascii=False, default=str))
    if not reveal:
        say("(patient data masked; --reveal shows it)")


def reason_codes_markdown() -> str:
    """docs/reason-codes.md, generated from `REASON_HELP` so that the two cannot drift."""
    lines = [
        "# Reason codes",
        "",
        "Every quarantined record carries one or more of these codes; filter with",
        "`connector quarantine list --reason CODE`. They are a stable contract: codes are only",
        "ever added, never renamed. This page is generated from `connector.issues.REASON_HELP`",
        "(`connector quarantine reasons > docs/reason-codes.md`); a test keeps the two equal.",
        "",
        "| code | meaning | usual fix |",
        "|---|---|---|",
    ]
    for reason in Reason:
        meaning, fix = REASON_HELP[reason]
        cells = (f"`{reason.value}`", meaning, fix)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


@quarantine_app.command("reasons")
def quarantine_reasons() -> None:
    """Print the reason-code table (Markdown): code, meaning, usual fix."""
    print(reason_codes_markdown(), end="")


# ----------------------------------------------------------------------------- reprocess


@app.command()
def reprocess(
    source: Annotated[
        list[str] | None, typer.Option("--source", "-s", help="Only this source (repeatable).")
    ] = None,
    reason: Annotated[
        str | None, typer.Option("--reason", "-r", help="Only records with this code.")
    ] = None,
) -> None:
    """Re-validate quarantined records from their stored payload (no network) with the
    current rules and registry; records that now pass move into the store."""
    code = _check_reason(reason)
    config = load()
    try:
        for name in source or ():
            config.source(name)
    except ConfigError as exc:
        err.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(2) from None
    with open_store(config) as store:
        try:
            engine = build_engine(config, store)
        except ConfigError as exc:
            err.print(str(exc), highlight=False, markup=False)
            raise typer.Exit(2) from None
        results = reprocess_quarantine(engine, sources=source or None, reason=code)
    table = Table(title="Reprocess summary")
    for column in ("source", "result", "examined", "moved", "still quarantined", "needs sync"):
        table.add_column(column, justify="left" if column in ("source", "result") else "right")
    moved_by_reason: Counter[str] = Counter()
    for r in results:
        moved_by_reason.update(r.moved_by_reason)
        outcome = "[green]ok[/]" if r.error is None else f"[red]failed[/]: {r.error}"
        table.add_row(
            r.source,
            outcome,
            str(r.examined),
            str(r.moved),
            str(r.still_quarantined),
            str(r.skipped),
        )
    out.print(table)
    total = sum(r.moved for r in results)
    out.print(f"moved {total} record(s) into the store", highlight=False)
    for code_moved, count in sorted(moved_by_reason.items()):
        out.print(f"  {code_moved}: {count} moved", highlight=False)
    if any(r.error for r in results):
        raise typer.Exit(1)
