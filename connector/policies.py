"""The policy registry's rules, pure: registry CSV parsing, link resolution and policy checks.

MediTrak only accepts invoices whose policy number exists in its registry. The store keeps
the imported registry (`connector.store.policies`); a run loads it once into a
`RegistrySnapshot`, and `PolicyChecker` answers from that snapshot without any I/O:
`resolve` chooses the invoice's policy among its candidates (the patient link and what the
vendor sent) by one rule (`rank_candidates`), and `check` reports POLICY_MISSING /
POLICY_FORMAT / POLICY_UNKNOWN / POLICY_INACTIVE, plus a POLICY_CONFLICT warning when the
candidates disagreed.
`diff_registry` compares an imported file with the stored registry (what an import adds,
updates, leaves alone and, when it replaces the registry, removes) and `removal_refusal`
is the safety limit on removals that guards against an empty or truncated file.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from enum import IntEnum

from connector.errors import ConnectorError
from connector.issues import Issue, Reason
from connector.masking import mask_policy
from connector.model import LINK_ORIGIN, RECORD_ORIGIN, Invoice, PolicyCandidate

DEFAULT_POLICY_PATTERN = r"^POL-\d+$"
ACTIVE = "active"
POLICY_STATUSES = ("active", "inactive", "suspended", "cancelled", "expired", "lapsed")
REGISTRY_COLUMNS = ("policy_number", "holder_name", "status", "valid_from", "valid_to")
LINK_COLUMNS = ("source", "patient_ref", "policy_number")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MAX_LENGTHS = {"policy_number": 100, "holder_name": 300, "source": 100, "patient_ref": 200}
# A replacing import that would remove more than this share of the stored registry is refused
# unless forced: a registry export that lost rows must not silently unregister patients.
MAX_REMOVED_SHARE = 0.10


class RegistryFileError(ConnectorError):
    """A registry or link file has bad rows; `problems` names every one (with its line)."""

    def __init__(self, problems: Sequence[str], *, origin: str = "registry file") -> None:
        self.problems = list(problems)
        listed = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{origin}: {len(self.problems)} problem(s), nothing imported\n{listed}")


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    policy_number: str
    holder_name: str | None
    status: str
    valid_from: date | None
    valid_to: date | None

    def valid_on(self, day: date) -> bool:
        if self.valid_from is not None and day < self.valid_from:
            return False
        return self.valid_to is None or day <= self.valid_to


@dataclass(frozen=True, slots=True)
class PatientLink:
    source: str
    patient_ref: str
    policy_number: str


@dataclass(frozen=True)
class RegistrySnapshot:
    """The registry as one run sees it: policy number → policy, (source, patient) → policy."""

    policies: Mapping[str, PolicyRecord] = field(default_factory=dict)
    links: Mapping[tuple[str, str], str] = field(default_factory=dict)


# ----------------------------------------------------------------------------- CSV files


def _rows(
    text: str, columns: Sequence[str], problems: list[str]
) -> list[tuple[int, dict[str, str]]]:
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff")))
    try:
        header = next(reader)
    except StopIteration:
        problems.append(f"line 1: the file is empty (expected the header {','.join(columns)})")
        return []
    except csv.Error as exc:
        problems.append(f"line 1: unreadable CSV: {exc}")
        return []
    names = [h.strip().lower() for h in header]
    missing = [c for c in columns if c not in names]
    if missing:
        problems.append(f"line 1: header lacks {', '.join(missing)} (expected {','.join(columns)})")
        return []
    rows: list[tuple[int, dict[str, str]]] = []
    try:
        for cells in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(names):
                problems.append(f"line {line}: expected {len(names)} fields, got {len(cells)}")
                continue
            rows.append((line, {n: c.strip() for n, c in zip(names, cells, strict=True)}))
    except csv.Error as exc:
        problems.append(f"line {reader.line_num}: unreadable CSV: {exc}")
    return rows


def _by_line(problems: list[str]) -> list[str]:
    """Problems in file order (row-shape problems are found before the field checks)."""

    def line_of(problem: str) -> int:
        head = problem.split(":", 1)[0].removeprefix("line ")
        return int(head) if head.isdigit() else 0

    return sorted(problems, key=line_of)


def _required(row: dict[str, str], column: str, line: int, problems: list[str]) -> str | None:
    value = row.get(column, "")
    if not value:
        problems.append(f"line {line}: {column} is empty")
        return None
    if len(value) > _MAX_LENGTHS.get(column, 200):
        problems.append(f"line {line}: {column} is longer than {_MAX_LENGTHS[column]} characters")
        return None
    return value


def _date(row: dict[str, str], column: str, line: int, problems: list[str]) -> date | None:
    text = row.get(column, "")
    if not text:
        return None
    if _ISO_DATE.match(text):
        try:
            return date.fromisoformat(text)
        except ValueError:
            pass
    problems.append(f"line {line}: {column} {text!r} is not a date (YYYY-MM-DD)")
    return None


def parse_registry_csv(text: str) -> list[PolicyRecord]:
    """Every policy of a registry CSV, or `RegistryFileError` naming every bad row."""
    problems: list[str] = []
    records: list[PolicyRecord] = []
    first_line: dict[str, int] = {}
    for line, row in _rows(text, REGISTRY_COLUMNS, problems):
        before = len(problems)
        number = _required(row, "policy_number", line, problems)
        holder = row.get("holder_name") or None
        if holder is not None and len(holder) > _MAX_LENGTHS["holder_name"]:
            problems.append(f"line {line}: holder_name is longer than 300 characters")
        status = row.get("status", "").lower()
        if status not in POLICY_STATUSES:
            shown = repr(row.get("status", "")) if status else "empty"
            problems.append(
                f"line {line}: status is {shown}, expected one of {', '.join(POLICY_STATUSES)}"
            )
        valid_from = _date(row, "valid_from", line, problems)
        valid_to = _date(row, "valid_to", line, problems)
        if valid_from and valid_to and valid_to < valid_from:
            problems.append(f"line {line}: valid_to {valid_to} is before valid_from {valid_from}")
        if number is not None:
            if number in first_line:
                problems.append(
                    f"line {line}: policy_number repeats the one on line {first_line[number]}"
                )
            first_line.setdefault(number, line)
        if len(problems) == before and number is not None:
            records.append(PolicyRecord(number, holder, status, valid_from, valid_to))
    if problems:
        raise RegistryFileError(_by_line(problems))
    return records


def parse_links_csv(text: str) -> list[PatientLink]:
    """Every patient link of a CSV (source,patient_ref,policy_number), or `RegistryFileError`."""
    problems: list[str] = []
    links: dict[tuple[str, str], tuple[int, PatientLink]] = {}
    for line, row in _rows(text, LINK_COLUMNS, problems):
        values = [_required(row, column, line, problems) for column in LINK_COLUMNS]
        source, ref, number = values
        if source is None or ref is None or number is None:
            continue
        link = PatientLink(source, ref, number)
        earlier = links.get((source, ref))
        if earlier is not None and earlier[1].policy_number != number:
            problems.append(
                f"line {line}: patient {ref!r} of {source!r} is linked to another policy "
                f"on line {earlier[0]}"
            )
            continue
        links.setdefault((source, ref), (line, link))
    if problems:
        raise RegistryFileError(_by_line(problems), origin="link file")
    return [link for _line, link in links.values()]


# ----------------------------------------------------------------------------- import plans


@dataclass(frozen=True, slots=True)
class RegistryDiff:
    """What importing a registry file does to the stored registry, as policy numbers (sorted).

    `removed` is only ever filled when the file replaces the registry: policies stored but
    absent from the file. `stored_before` is the size of the registry the diff was taken from.
    """

    added: tuple[str, ...]
    updated: tuple[str, ...]
    unchanged: tuple[str, ...]
    removed: tuple[str, ...]
    stored_before: int

    @property
    def stored_after(self) -> int:
        return self.stored_before + len(self.added) - len(self.removed)

    @property
    def removed_share(self) -> float:
        """Removed policies as a share of the registry before the import (0 when it was empty)."""
        return len(self.removed) / self.stored_before if self.stored_before else 0.0


def diff_registry(
    stored: Mapping[str, PolicyRecord], incoming: Sequence[PolicyRecord], *, replace: bool
) -> RegistryDiff:
    """Compare a parsed registry file with the stored registry (`replace`: the file is all)."""
    by_number = {record.policy_number: record for record in incoming}
    added, updated, unchanged = [], [], []
    for number, record in by_number.items():
        known = stored.get(number)
        if known is None:
            added.append(number)
        elif known == record:
            unchanged.append(number)
        else:
            updated.append(number)
    removed = [number for number in stored if number not in by_number] if replace else []
    return RegistryDiff(
        tuple(sorted(added)),
        tuple(sorted(updated)),
        tuple(sorted(unchanged)),
        tuple(sorted(removed)),
        len(stored),
    )


def removal_refusal(diff: RegistryDiff, max_share: float | None) -> str | None:
    """Why a replacing import must not remove what `diff` removes, or None when it may.

    `max_share=None` lifts the limit (an operator's explicit `--force`). Emptying a registry
    that has policies is always over the limit, whatever the share.
    """
    if max_share is None or not diff.removed:
        return None
    emptied = diff.stored_after == 0
    if not emptied and diff.removed_share <= max_share:
        return None
    return (
        f"the file would remove {len(diff.removed)} of the {diff.stored_before} registered "
        f"policies ({diff.removed_share:.0%}{', every one' if emptied else ''}), more than the "
        f"{max_share:.0%} a replacing import removes unforced; an empty or truncated export "
        "looks like this. Check the file (--dry-run shows the change) and add --force if it is "
        "right"
    )


class RegistryReplaceRefused(ConnectorError):
    """A replacing import would remove more of the registry than the safety limit allows."""

    def __init__(self, reason: str, diff: RegistryDiff) -> None:
        self.diff = diff
        super().__init__(f"refused, nothing imported: {reason}")


# ----------------------------------------------------------------------------- checks


class Standing(IntEnum):
    """How a candidate policy stands in the registry; lower is better (the resolution rule)."""

    ACTIVE = 0  # registered, active and valid on the invoice date
    INACTIVE = 1  # registered, but not active or not valid on the invoice date
    UNKNOWN = 2  # in the registry's format, not registered
    BAD_FORMAT = 3  # not in the registry's format

    def describe(self) -> str:
        return _STANDING_WORDS[self]


_STANDING_WORDS = {
    Standing.ACTIVE: "registered and active",
    Standing.INACTIVE: "registered but inactive or not valid on the invoice date",
    Standing.UNKNOWN: "not in the registry",
    Standing.BAD_FORMAT: "not in the registry's format",
}


class PolicyChecker:
    """Policy rules over one registry snapshot; `resolve` and `check` plug into the engine."""

    def __init__(self, snapshot: RegistrySnapshot, pattern: str = DEFAULT_POLICY_PATTERN) -> None:
        self.snapshot = snapshot
        self.pattern = pattern
        self._format = re.compile(pattern)

    def standing(self, number: str, day: date | None) -> Standing:
        """Where one policy number stands in the registry on the invoice's date."""
        if not self._format.search(number):
            return Standing.BAD_FORMAT
        record = self.snapshot.policies.get(number)
        if record is None:
            return Standing.UNKNOWN
        if record.status != ACTIVE or (day is not None and not record.valid_on(day)):
            return Standing.INACTIVE
        return Standing.ACTIVE

    def candidates(self, invoice: Invoice) -> tuple[PolicyCandidate, ...]:
        """Every candidate policy of the invoice in order of preference: the patient link
        first (the operator's explicit, registered choice), then the vendor's candidates in the
        mapping's order (or the record's one policy number)."""
        patient = invoice.patient
        sent = tuple(c for c in patient.candidates() if c.origin != LINK_ORIGIN)
        ref = patient.source_ref
        linked = self.snapshot.links.get((invoice.source, ref)) if ref else None
        if linked is None:
            return sent
        return (PolicyCandidate(number=linked, origin=LINK_ORIGIN), *sent)

    def rank_candidates(
        self, candidates: Sequence[PolicyCandidate], day: date | None
    ) -> list[tuple[Standing, PolicyCandidate]]:
        """The candidates best first: by registry standing (active, then inactive, unknown and
        badly formatted last), ties kept in their order of preference. So a registered active
        policy always wins, and a candidate failing the format never beats one passing it."""
        standings = [(self.standing(c.number, day), c) for c in candidates]
        return sorted(standings, key=lambda pair: pair[0])  # stable: preference breaks ties

    def resolve(self, invoice: Invoice) -> Invoice:
        """The invoice billed to the best of its candidate policies (`rank_candidates`), the
        candidates and the origin of the chosen one recorded on the patient."""
        candidates = self.candidates(invoice)
        if not candidates:
            return invoice
        if len(candidates) == 1:  # the common case: nothing to rank
            chosen = candidates[0]
        else:
            _standing, chosen = self.rank_candidates(candidates, invoice.invoice_date)[0]
        patient = invoice.patient.model_copy(
            update={
                "policy_number": chosen.number,
                "policy_source": chosen.origin,
                "policy_candidates": candidates,
            }
        )
        return invoice.model_copy(update={"patient": patient})

    def check(self, invoice: Invoice) -> list[Issue]:
        path = "patient.policy_number"
        number = (invoice.patient.policy_number or "").strip()
        if not number:
            ref = invoice.patient.source_ref
            why = (
                f"and no patient link for patient {mask_policy(ref)} of {invoice.source}"
                if ref
                else "and no patient reference to link one"
            )
            return [Issue(Reason.POLICY_MISSING, path, f"no policy number on the invoice {why}")]
        issues = self._registry_issues(invoice, number, path)
        conflict = self._conflict(invoice, number, path)
        return issues if conflict is None else [*issues, conflict]

    def _registry_issues(self, invoice: Invoice, number: str, path: str) -> list[Issue]:
        masked = mask_policy(number)
        source = invoice.patient.policy_source
        if source is not None and source != RECORD_ORIGIN:
            masked = f"{masked} (from {source})"
        if not self._format.search(number):
            return [
                Issue(
                    Reason.POLICY_FORMAT,
                    path,
                    f"policy number {masked} does not match the registry format {self.pattern}",
                )
            ]
        record = self.snapshot.policies.get(number)
        if record is None:
            return [Issue(Reason.POLICY_UNKNOWN, path, f"policy {masked} is not in the registry")]
        if record.status != ACTIVE:
            return [Issue(Reason.POLICY_INACTIVE, path, f"policy {masked} is {record.status}")]
        day = invoice.invoice_date
        if day is not None and not record.valid_on(day):
            window = f"{record.valid_from or '…'} to {record.valid_to or '…'}"
            return [
                Issue(
                    Reason.POLICY_INACTIVE,
                    path,
                    f"policy {masked} is not valid on the invoice date {day} (valid {window})",
                )
            ]
        return []

    def _conflict(self, invoice: Invoice, number: str, path: str) -> Issue | None:
        """A warning naming the chosen candidate and the others when they disagree."""
        candidates = invoice.patient.policy_candidates
        if len({c.number for c in candidates}) < 2:
            return None
        day = invoice.invoice_date
        source = invoice.patient.policy_source
        others = "; ".join(
            f"{c.origin} {mask_policy(c.number)} ({self.standing(c.number, day).describe()})"
            for c in candidates
            if c.number != number
        )
        used = f"{source or 'the invoice'} {mask_policy(number)}"
        standing = self.standing(number, day).describe()
        return Issue(
            Reason.POLICY_CONFLICT,
            path,
            f"policy candidates disagree: used {used} ({standing}); not {others}",
            severity="warning",
        )
