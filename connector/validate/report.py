"""Assembly of the validation report: verdict and exit code, summary, fixes ordered by how many
records they would unblock, the findings per record (masked), notes, and the scrubbing of every
string. The result is a JSON-ready dict following `connector.validation-report/1`
(docs/validation-report.md, docs/report-schema.json); `connector.reports` renders it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from connector.issues import REASON_HELP, Reason
from connector.logging import scrub_text
from connector.masking import mask_name, mask_policy
from connector.settings import SourceConfig
from connector.validate.checks import Checks
from connector.validate.compliance import contract_section
from connector.validate.decisions import (
    DescriptionFilter,
    masked_candidates,
    safe_message,
    used_origin,
)
from connector.validate.fields import FieldSources
from connector.validate.probe import Step, only_broken_answers
from connector.validate.sample import RecordResult, Sample, ValidateOptions

SCHEMA = "connector.validation-report/1"
EXIT_READY, EXIT_NOT_READY, EXIT_UNREACHABLE = 0, 1, 2


def assemble_report(
    source: SourceConfig,
    options: ValidateOptions,
    steps: list[Step],
    sample: Sample,
    checks: Checks,
    sources: FieldSources,
    mapping: dict[str, Any] | None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The report of one source, scrubbed of its secrets; `mapping` is None when unreachable."""
    connected = all(s.status != "fail" for s in steps)
    # A vendor that answers, but with broken JSON, is reachable and not ready (exit 1).
    readable = connected or only_broken_answers(steps)
    records = sample.records
    blocked = sum(1 for r in records if r.blocking)
    if not readable:
        verdict, code = "unreachable", EXIT_UNREACHABLE
    elif blocked or not connected:
        verdict, code = "not ready", EXIT_NOT_READY
    else:
        verdict, code = "ready", EXIT_READY
    total = len(records)
    descriptions = DescriptionFilter.of(records)
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "generated_at": (now or datetime.now(UTC)).isoformat(),
        "source": {"name": source.name, "type": source.type, "base_url": _safe_url(source)},
        "options": {
            "sample": options.sample,
            "since": options.since.isoformat() if options.since else None,
        },
        "verdict": verdict,
        "exit_code": code,
        "summary": {
            "records": total,
            "passed": total - blocked,
            "blocked": blocked,
            "with_warnings": sum(1 for r in records if not r.blocking and r.codes("warning")),
            "pass_rate": round((total - blocked) / total, 4) if total else None,
            "complete": sample.complete,
        },
        "connection": {"ok": connected, "steps": [s.as_dict() for s in steps]},
        "contract": contract_section(sample, sources) if readable else None,
        "mapping": mapping or None,
        "fixes": fixes_section(records, descriptions),
        "records": record_rows(records, descriptions, checks),
        "notes": _notes(options, sample, checks, sources, connected),
    }
    if readable and not connected:
        broken = ", ".join(s.name for s in steps if s.status == "fail")
        report["notes"].insert(
            0,
            f"the vendor answered, but with malformed JSON ({broken} step): not ready until "
            "its API sends whole, valid JSON; the records before the broken answer are checked",
        )
    scrubbed: dict[str, Any] = scrub_report(report, source.secrets())
    return scrubbed


def _notes(
    options: ValidateOptions,
    sample: Sample,
    checks: Checks,
    sources: FieldSources,
    connected: bool,
) -> list[str]:
    notes = list(checks.notes)
    if options.sample is not None and not sample.complete and connected:
        notes.append(
            f"sample: the first {len(sample.records)} record(s) of the list "
            "(use --all for every one)"
        )
    if sample.skipped_before_since:
        notes.append(f"{sample.skipped_before_since} record(s) updated before --since skipped")
    undeclared = sources.undeclared()
    if connected and undeclared:
        # Said rather than guessed: such errors stay in the findings with their vendor path.
        notes.append(
            f"the mapping declares no vendor source for {', '.join(undeclared)} "
            "(its field_sources): errors on those vendor fields are not counted per field"
        )
    return notes


def fixes_section(
    records: list[RecordResult], descriptions: DescriptionFilter
) -> list[dict[str, Any]]:
    """Reasons ordered by how many records fixing them would unblock (a record blocked by
    several reasons counts for each)."""
    counts: Counter[str] = Counter()
    examples: dict[str, list[str]] = defaultdict(list)
    messages: dict[str, str] = {}
    for record in records:
        for code in sorted(record.codes()):
            counts[code] += 1
            if len(examples[code]) < 3:
                examples[code].append(record.key)
        for issue in record.issues:
            if issue.severity == "error" and issue.code.value not in messages:
                messages[issue.code.value] = safe_message(issue, record.invoice, descriptions)
    rows = []
    for code, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        meaning, fix = REASON_HELP[Reason(code)]
        rows.append(
            {
                "reason": code,
                "records": n,
                "meaning": meaning,
                "fix": fix,
                "example_message": messages.get(code, ""),
                "example_ids": examples[code],
            }
        )
    return rows


def record_rows(
    records: list[RecordResult], descriptions: DescriptionFilter, checks: Checks
) -> list[dict[str, Any]]:
    """The findings per record, patient data masked: the policy billed, where it came from and
    the candidates it was chosen among; messages with unshowable descriptions withheld."""
    rows = []
    for record in records:
        if not record.issues:
            continue
        invoice = record.invoice
        issues = [
            {**issue.as_dict(), "message": safe_message(issue, invoice, descriptions)}
            for issue in record.issues
        ]
        rows.append(
            {
                "id": record.key,
                "invoice_number": invoice.invoice_number if invoice else None,
                "patient": {
                    "name": mask_name(invoice.patient.name) if invoice else None,
                    "policy_number": mask_policy(invoice.patient.policy_number)
                    if invoice
                    else None,
                    "policy_source": used_origin(invoice) if invoice else None,
                    "policy_candidates": masked_candidates(invoice, checks.policy_checker)
                    if invoice
                    else [],
                },
                "blocking": record.blocking,
                "reasons": sorted(record.codes()),
                "warnings": sorted(record.codes("warning")),
                "issues": issues,
            }
        )
    return rows


def _safe_url(source: SourceConfig) -> str:
    parts = urlsplit(source.base_url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    # No user info and no query: either may carry a credential.
    return f"{parts.scheme}://{host}{port}{parts.path}"


def scrub_report(node: Any, secrets: Iterable[str]) -> Any:
    """Every string of a report with the source's secrets (and bearer tokens) masked."""
    values = [s for s in secrets if s and len(s) >= 4]

    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            for secret in values:
                value = value.replace(secret, "**********")
            return scrub_text(value)
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        return value

    return scrub(node)
