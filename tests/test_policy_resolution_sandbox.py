"""Policy resolution end to end (issue 14): the Splose sandbox serves Medicare and DVA provider
numbers beside linked patients; synced over loopback HTTP into a real SQLite store with the
registry and links imported as an operator does, every clean invoice is stored to the cent
(billed to its registered policy) and every seeded defect is quarantined with its reason
(precision and recall 100%), with the shipped prefixes and with the old default that read
Medicare numbers as policies. Disagreements show as POLICY_CONFLICT warnings in `connector
validate` and `connector quarantine show`, never as a block."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.cli.sandbox import sandbox_registry
from connector.issues import Reason
from connector.sandbox import EXPECTED_REASON, SandboxOptions, SandboxServer
from connector.sandbox.splose import (
    MEDICARE_BESIDE_POLICY,
    MEDICARE_ONLY,
    SPLOSE_DEFECTS,
    SploseDialect,
    medicare_number,
)
from connector.store import Store
from connector.store.policies import import_policies
from connector.store.store import sqlite_url_for
from tests.conftest import (
    FAST_HTTP,
    invoke_cli,
    seeded_sandbox_config,
    sources_for,
    write_config,
)

DIALECT = "splose"
OLD_DEFAULT_PREFIXES = ["Medicare", "Policy", "Insurance"]


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    # Every Splose defect kind, the unregistered policy included (its patient has no link).
    options = SandboxOptions(
        invoices=240,
        # A seed whose defects include an unregistered policy beside a Medicare number.
        seed=18,
        defect_rate=0.15,
        dialects=(DIALECT,),
        defect_kinds={DIALECT: SPLOSE_DEFECTS},
    )
    with SandboxServer(options) as running:
        dialect = running.dialect(DIALECT)
        assert isinstance(dialect, SploseDialect)
        dialect.rate_limit = 100_000
        yield running


def synced_store(server: SandboxServer, tmp: Path, **source: Any) -> tuple[Path, str]:
    """A config and a SQLite store with the registry and links imported, after one sync."""
    config, url = seeded_sandbox_config(server, DIALECT, tmp, **source)
    result = invoke_cli(config, "sync")
    assert result.exit_code == 0, result.output
    return config, url


def medicare_invoices(server: SandboxServer) -> dict[str, str]:
    """Vendor id → "only" / "beside" for every served invoice carrying a Medicare number."""
    dialect = server.dialect(DIALECT)
    assert isinstance(dialect, SploseDialect)
    found: dict[str, str] = {}
    for invoice in server.dataset(DIALECT).invoices:
        references = dialect.invoice_body(invoice)["referenceNumbers"] or []
        medicare = [r for r in references if r.startswith("Medicare: ")]
        if medicare:
            found[dialect.vendor_id(invoice)] = "only" if len(references) == 1 else "beside"
    return found


def assert_every_invoice_lands_where_it_belongs(server: SandboxServer, url: str) -> None:
    """Precision and recall 100%: clean → stored (to the cent, its registered policy),
    defective → quarantined with the reason its defect expects."""
    dialect = server.dialect(DIALECT)
    truth = {dialect.vendor_id(inv): inv for inv in server.dataset(DIALECT).invoices}
    with Store(url) as store:
        stored = {inv.id: inv for inv in store.iter_invoices(DIALECT)}
        quarantined = {q.record_key: q for q in store.quarantine_entries(DIALECT)}
    clean = {key for key, inv in truth.items() if inv.defect is None}
    defective = set(truth) - clean
    assert set(stored) == clean, "precision/recall: clean invoices not stored (or extra)"
    assert set(quarantined) == defective
    for key in clean:
        invoice, expected = stored[key], truth[key]
        assert invoice.total_amount == expected.total
        assert invoice.patient.policy_number == expected.policy_number
    for key in defective:
        codes = {i.code.value for i in quarantined[key].issues if i.severity == "error"}
        kind = truth[key].defect
        assert kind is not None and EXPECTED_REASON[kind] in codes, (key, kind, codes)


def test_the_sandbox_serves_medicare_and_dva_numbers_beside_linked_patients(
    server: SandboxServer,
) -> None:
    dialect = server.dialect(DIALECT)
    assert isinstance(dialect, SploseDialect)
    shapes = medicare_invoices(server)
    assert set(shapes.values()) == {"only", "beside"}
    bodies = [dialect.invoice_body(inv) for inv in server.dataset(DIALECT).invoices]
    assert any(r.startswith("DVA: ") for b in bodies for r in b["referenceNumbers"] or [])
    for body in bodies:
        for entry in body["referenceNumbers"] or []:
            if entry.startswith("Medicare: "):
                # A Medicare number never is the policy.
                assert entry == f"Medicare: {medicare_number(body['id'])}"
                assert body["id"] % 10 in (MEDICARE_ONLY, MEDICARE_BESIDE_POLICY)


def test_a_medicare_reference_with_a_linked_registered_patient_is_stored(
    server: SandboxServer, tmp_path: Path
) -> None:
    _config, url = synced_store(server, tmp_path)
    dialect = server.dialect(DIALECT)
    truth = {dialect.vendor_id(inv): inv for inv in server.dataset(DIALECT).invoices}
    only = [key for key, shape in medicare_invoices(server).items() if shape == "only"]
    clean_only = [key for key in only if truth[key].defect is None]
    assert clean_only, "the seed gave no clean Medicare-only invoice"
    with Store(url) as store:
        stored = {inv.id: inv for inv in store.iter_invoices(DIALECT)}
        quarantined = {q.record_key for q in store.quarantine_entries(DIALECT)}
    for key in clean_only:
        assert key in stored and key not in quarantined
        # Billed to the patient's registered policy through the link, not the Medicare number.
        assert stored[key].patient.policy_number == truth[key].policy_number
    assert_every_invoice_lands_where_it_belongs(server, url)


def test_the_old_default_prefixes_still_never_let_medicare_override_a_link(
    server: SandboxServer, tmp_path: Path
) -> None:
    config, url = synced_store(server, tmp_path, policy_reference_prefixes=OLD_DEFAULT_PREFIXES)
    assert_every_invoice_lands_where_it_belongs(server, url)

    # The disagreement is a warning: `connector validate` reports it, blocking nothing.
    dialect = server.dialect(DIALECT)
    truth = {dialect.vendor_id(inv): inv for inv in server.dataset(DIALECT).invoices}
    medicare = medicare_invoices(server)
    with Store(url) as store:
        stored = {inv.id for inv in store.iter_invoices(DIALECT)}
        entries = {q.record_key: q for q in store.quarantine_entries(DIALECT)}
    # Every Medicare invoice that the mapping could read reaches the policy rule and warns.
    mapped = stored | {key for key, q in entries.items() if q.canonical is not None}
    result = invoke_cli(config, "validate", "--source", DIALECT, "--all", "--format", "json")
    assert result.exit_code in (0, 1), result.output
    report = json.loads(result.stdout[result.stdout.index("{") :])
    records = {str(r["id"]): r for r in report["records"]}
    warned = {key for key, r in records.items() if "POLICY_CONFLICT" in r["warnings"]}
    assert warned == set(medicare) & mapped
    for key in warned:
        if truth[key].defect is None:
            assert not records[key]["blocking"], key

    # `connector quarantine show` lists the warning beside the errors of a quarantined one:
    # an unregistered policy beside a Medicare number (no link for that patient).
    unregistered = [key for key in medicare if truth[key].defect == "unregistered_policy"]
    assert unregistered, "the seed gave no unregistered policy beside a Medicare number"
    entry = entries[unregistered[0]]
    shown = invoke_cli(config, "quarantine", "show", str(entry.id))
    assert shown.exit_code == 0, shown.output
    assert "POLICY_UNKNOWN" in shown.output and "POLICY_CONFLICT" in shown.output
    assert truth[entry.record_key].policy_number not in shown.output  # masked


def test_without_links_a_medicare_number_alone_is_a_missing_policy(
    server: SandboxServer, tmp_path: Path
) -> None:
    """The link is what bills them: with the registry but no links, a clean invoice with only
    a Medicare number is POLICY_MISSING (never POLICY_FORMAT, never billed to it)."""
    url = sqlite_url_for(tmp_path / "connector.db")
    records, _links = sandbox_registry(server)
    with Store(url) as store:
        import_policies(store, records)
    http = {**FAST_HTTP, "requests_per_minute": 100_000}
    (raw,) = sources_for(server, [DIALECT], http=http)
    config = write_config(tmp_path / "connector.yaml", {"store": {"url": url}, "sources": [raw]})
    assert invoke_cli(config, "sync").exit_code == 0
    dialect = server.dialect(DIALECT)
    truth = {dialect.vendor_id(inv): inv for inv in server.dataset(DIALECT).invoices}
    only = [
        key
        for key, shape in medicare_invoices(server).items()
        if shape == "only" and truth[key].defect is None
    ]
    assert only
    with Store(url) as store:
        quarantined = {q.record_key: q for q in store.quarantine_entries(DIALECT)}
    for key in only:
        assert {i.code for i in quarantined[key].issues} == {Reason.POLICY_MISSING}
