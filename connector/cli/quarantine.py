"""`connector quarantine list | show | reasons`: records that failed validation, with every
reason code. Patient names and policy numbers are masked unless `--reveal` is given.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Annotated, Any

import typer
from rich.table import Table

from connector.cli.common import (
    ReasonOpt,
    RevealOpt,
    SourceOpt,
    TextOrJsonOpt,
    check_reason,
    check_text_or_json,
    err,
    load,
    open_store,
    out,
    print_json,
    show,
)
from connector.issues import REASON_HELP, Reason
from connector.masking import mask_payload
from connector.pipeline.categories import CATEGORY_RULES_DOC
from connector.store import QuarantineEntry
from connector.store.quarantine_ops import quarantine_entry

commands = typer.Typer(
    name="quarantine",
    help="Records that failed validation, with every reason.",
    no_args_is_help=True,
)


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


@commands.command("list")
def quarantine_list(
    source: SourceOpt = None,
    reason: ReasonOpt = None,
    fmt: TextOrJsonOpt = "text",
) -> None:
    """Quarantined records with all their reason codes."""
    check_text_or_json(fmt)
    code = check_reason(reason)
    config = load()
    with open_store(config, read_only=True) as store:
        entries = store.quarantine_entries(source, code)
    if fmt == "json":
        print_json([_entry_summary(e) for e in entries])
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
    show(table)
    reasons = Counter(code for e in entries for code in _error_codes(e))
    if reasons:
        summary = ", ".join(f"{code} {n}" for code, n in sorted(reasons.items()))
        out.print(f"by reason: {summary}", highlight=False)


@commands.command("show")
def quarantine_show(
    entry_id: Annotated[int, typer.Argument(metavar="ID", help="The id from `quarantine list`.")],
    reveal: RevealOpt = False,
    fmt: TextOrJsonOpt = "text",
) -> None:
    """One quarantined record: every issue, the canonical attempt and the raw payload."""
    check_text_or_json(fmt)
    config = load()
    with open_store(config, read_only=True) as store:
        entry = quarantine_entry(store, entry_id)
    if entry is None:
        err.print(f"no quarantined record with id {entry_id}")
        raise typer.Exit(1)
    canonical = entry.canonical if reveal else mask_payload(entry.canonical)
    raw = entry.raw_payload if reveal else mask_payload(entry.raw_payload)
    if fmt == "json":
        print_json({**_entry_summary(entry), "canonical": canonical, "raw_payload": raw})
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
    return "\n".join(lines) + "\n\n" + CATEGORY_RULES_DOC


@commands.command("reasons")
def quarantine_reasons() -> None:
    """Print the reason-code table (Markdown): code, meaning, usual fix."""
    print(reason_codes_markdown(), end="")
