"""`connector policies import --replace`: the registry becomes equal to the file.

The diff and the removal limit (pure); the replacing import on SQLite and PostgreSQL — one
transaction, refused past the limit unless forced, a dry run that writes nothing, counts of
stored invoices and links that name a removed policy; the CLI's output (masked) and exit
codes; and end to end over the sandbox: after a replacing import drops a policy, the next
sync quarantines the invoices that use it as POLICY_UNKNOWN (their accepted version stays
stored), `reprocess` turns an earlier POLICY_INACTIVE into POLICY_UNKNOWN, and putting the
policy back and reprocessing releases them all.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import replace as with_fields
from datetime import date
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select
from typer.testing import Result

from connector.cli.demo import sandbox_sources
from connector.cli.sandbox import sandbox_registry
from connector.config import load_config
from connector.errors import StoreError
from connector.issues import Reason
from connector.masking import mask_policy
from connector.policies import (
    MAX_REMOVED_SHARE,
    REGISTRY_COLUMNS,
    PatientLink,
    PolicyRecord,
    RegistryReplaceRefused,
    diff_registry,
    parse_registry_csv,
    removal_refusal,
)
from connector.sandbox import SandboxOptions, SandboxServer
from connector.store import Store
from connector.store.policies import import_links, import_policies, list_policies, load_registry
from connector.store.schema import policy
from connector.store.store import sqlite_url_for
from tests.conftest import invoke_cli

HEADER = ",".join(REGISTRY_COLUMNS) + "\n"
FAST_HTTP = {"max_retries": 1, "backoff_base": "10ms", "backoff_max": "50ms", "timeout": "10s"}


def active(number: str, holder: str | None = "John Doe") -> PolicyRecord:
    return PolicyRecord(number, holder, "active", None, None)


def numbered(count: int) -> list[PolicyRecord]:
    return [active(f"POL-{100000 + i}") for i in range(count)]


def registry_text(records: Sequence[PolicyRecord]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(REGISTRY_COLUMNS)
    for r in records:
        writer.writerow(
            [r.policy_number, r.holder_name or "", r.status, r.valid_from or "", r.valid_to or ""]
        )
    return buffer.getvalue()


# ----------------------------------------------------------------------------- pure


def test_diff_sorts_every_policy_into_one_bucket() -> None:
    stored = {r.policy_number: r for r in numbered(4)}
    incoming = [
        active("POL-100000"),  # unchanged
        with_fields(stored["POL-100001"], status="cancelled"),  # updated
        with_fields(stored["POL-100002"], valid_to=date(2026, 1, 1)),  # updated
        active("POL-200000"),  # added; POL-100003 is absent
    ]
    upsert = diff_registry(stored, incoming, replace=False)
    assert upsert.added == ("POL-200000",)
    assert upsert.updated == ("POL-100001", "POL-100002")
    assert upsert.unchanged == ("POL-100000",)
    assert upsert.removed == ()
    assert (upsert.stored_before, upsert.stored_after) == (4, 5)
    replacing = diff_registry(stored, incoming, replace=True)
    assert replacing.removed == ("POL-100003",)
    assert (replacing.stored_after, replacing.removed_share) == (4, 0.25)


def test_removal_limit() -> None:
    stored = {r.policy_number: r for r in numbered(10)}
    one_gone = diff_registry(stored, numbered(9), replace=True)
    assert one_gone.removed_share == MAX_REMOVED_SHARE  # exactly at the limit: allowed
    assert removal_refusal(one_gone, MAX_REMOVED_SHARE) is None
    two_gone = diff_registry(stored, numbered(8), replace=True)
    refusal = removal_refusal(two_gone, MAX_REMOVED_SHARE)
    assert refusal is not None and "remove 2 of the 10" in refusal and "--force" in refusal
    assert removal_refusal(two_gone, None) is None  # --force
    # Emptying the registry is always over the limit, however generous it is.
    emptied = diff_registry(stored, [], replace=True)
    assert removal_refusal(emptied, 1.0) is not None
    assert removal_refusal(emptied, None) is None
    # Nothing removed, or nothing stored yet: no refusal.
    assert removal_refusal(diff_registry({}, [], replace=True), MAX_REMOVED_SHARE) is None
    assert removal_refusal(diff_registry(stored, [], replace=False), MAX_REMOVED_SHARE) is None


# ----------------------------------------------------------------------------- store (both)


def stored_rows(store: Store) -> list[tuple[object, ...]]:
    """Every column of every policy row, imported_at included: "nothing written" means this."""
    with store.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(select(policy).order_by(policy.c.policy_number))]


def test_replace_makes_the_registry_equal_to_the_file(store: Store) -> None:
    import_policies(store, numbered(12))  # POL-100000 … POL-100011
    suspended = with_fields(active("POL-100005"), status="suspended")
    incoming = [
        *(r for r in numbered(11)[1:] if r.policy_number != "POL-100005"),
        suspended,
        active("POL-300000", "Ann Lee"),
    ]  # POL-100000 and POL-100011 are absent: 2 of 12, past the limit, hence forced
    result = import_policies(store, incoming, replace=True, max_removed_share=None)
    assert result.written
    assert (result.inserted, result.updated, result.unchanged, result.removed) == (1, 1, 9, 2)
    assert result.diff.removed == ("POL-100000", "POL-100011")
    assert sorted(list_policies(store), key=lambda r: r.policy_number) == sorted(
        incoming, key=lambda r: r.policy_number
    )
    assert set(load_registry(store).policies) == {r.policy_number for r in incoming}


def test_the_default_import_still_never_removes(store: Store) -> None:
    import_policies(store, numbered(3))
    result = import_policies(store, [active("POL-900000")])
    assert (result.inserted, result.updated, result.unchanged, result.removed) == (1, 0, 0, 0)
    assert len(list_policies(store)) == 4


def test_over_the_limit_is_refused_and_nothing_changes(store: Store) -> None:
    import_policies(store, numbered(10))
    before = stored_rows(store)
    truncated = [*numbered(7), active("POL-555555")]  # three of ten gone, one new
    with pytest.raises(RegistryReplaceRefused) as refused:
        import_policies(store, truncated, replace=True)
    assert refused.value.diff.removed == ("POL-100007", "POL-100008", "POL-100009")
    assert "3 of the 10" in str(refused.value)
    assert stored_rows(store) == before  # not even the new policy went in
    with pytest.raises(RegistryReplaceRefused):
        import_policies(store, [], replace=True)  # an empty export
    assert stored_rows(store) == before
    forced = import_policies(store, truncated, replace=True, max_removed_share=None)
    assert (forced.inserted, forced.removed) == (1, 3)
    assert [r.policy_number for r in list_policies(store)] == [
        *(f"POL-10000{i}" for i in range(7)),
        "POL-555555",
    ]


def test_a_dry_run_writes_nothing_and_tells_about_a_refusal(store: Store) -> None:
    import_policies(store, numbered(10))
    import_links(store, [PatientLink("citabox", "p-1", "POL-100009")])
    before = stored_rows(store)
    plan = import_policies(store, numbered(8), replace=True, dry_run=True)
    assert not plan.written
    assert plan.diff.removed == ("POL-100008", "POL-100009")
    assert plan.refusal is not None and "2 of the 10" in plan.refusal
    assert plan.links_to_removed == 1
    assert stored_rows(store) == before
    fine = import_policies(store, numbered(9), replace=True, dry_run=True)
    assert fine.refusal is None and fine.removed == 1
    assert stored_rows(store) == before


def test_a_replace_that_fails_midway_keeps_the_whole_registry(store: Store) -> None:
    import_policies(store, numbered(20))
    before = stored_rows(store)
    # The deletes run first; then a new row breaks NOT NULL: the deletes must roll back too.
    broken = [*numbered(18), PolicyRecord("POL-777777", "X", None, None, None)]  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        import_policies(store, broken, replace=True)
    assert stored_rows(store) == before


def test_links_to_removed_policies_are_counted_and_kept(store: Store) -> None:
    import_policies(store, numbered(10))
    import_links(
        store,
        [PatientLink("citabox", "p-1", "POL-100009"), PatientLink("citabox", "p-2", "POL-100001")],
    )
    result = import_policies(store, numbered(9), replace=True)
    assert (result.removed, result.links_to_removed, result.invoices_on_removed) == (1, 1, 0)
    # The link stays: its patient's invoices now fail POLICY_UNKNOWN, not POLICY_MISSING.
    assert load_registry(store).links[("citabox", "p-1")] == "POL-100009"


# ----------------------------------------------------------------------------- CLI


@pytest.fixture
def cli_config(tmp_path: Path) -> Path:
    config = tmp_path / "connector.yaml"
    config.write_text(f"store:\n  url: {tmp_path / 'cli.db'}\n", encoding="utf-8")
    return config


invoke = invoke_cli


def said(result: Result) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def registry_file(tmp_path: Path, name: str, records: Sequence[PolicyRecord]) -> str:
    path = tmp_path / name
    path.write_text(registry_text(records), encoding="utf-8")
    return str(path)


def test_cli_replace_reports_counts_masked(cli_config: Path, tmp_path: Path) -> None:
    people = [active(f"POL-45678{i}", f"Holder Number{i}") for i in range(10)]
    first = invoke(cli_config, "policies", "import", registry_file(tmp_path, "a.csv", people))
    assert first.exit_code == 0, first.output
    assert "imported 10 policies (10 new, 0 updated, 0 unchanged)" in said(first)
    changed = [*people[:8], with_fields(people[8], status="cancelled")]  # POL-456789 is gone
    path = registry_file(tmp_path, "b.csv", changed)
    dry = invoke(cli_config, "policies", "import", "--replace", "--dry-run", path)
    assert dry.exit_code == 0, dry.output
    assert "dry run, nothing written" in said(dry)
    assert "(0 new, 1 updated, 8 unchanged, 1 removed)" in said(dry)
    assert len(list_policies_at(tmp_path)) == 10
    done = invoke(cli_config, "policies", "import", "--replace", path)
    assert done.exit_code == 0, done.output
    assert (
        "replaced the registry with 9 policies (0 new, 1 updated, 8 unchanged, 1 removed)"
        in said(done)
    )
    assert f"removed: {mask_policy('POL-456789')}" in said(done)
    for output in (said(first), said(dry), said(done)):
        assert "POL-45678" not in output and "Holder" not in output
    assert len(list_policies_at(tmp_path)) == 9


def list_policies_at(tmp_path: Path) -> list[PolicyRecord]:
    with Store(sqlite_url_for(tmp_path / "cli.db")) as store:
        return list_policies(store)


def test_cli_refuses_a_truncated_file_unless_forced(cli_config: Path, tmp_path: Path) -> None:
    full = registry_file(tmp_path, "full.csv", numbered(25))
    assert invoke(cli_config, "policies", "import", full).exit_code == 0
    header_only = tmp_path / "empty.csv"
    header_only.write_text(HEADER, encoding="utf-8")
    refused = invoke(cli_config, "policies", "import", "--replace", str(header_only))
    assert refused.exit_code == 1
    assert "refused, nothing imported" in said(refused) and "--force" in said(refused)
    dry = invoke(cli_config, "policies", "import", "--replace", "--dry-run", str(header_only))
    assert dry.exit_code == 1 and "would be refused" in said(dry)
    assert len(list_policies_at(tmp_path)) == 25
    forced = invoke(cli_config, "policies", "import", "--replace", "--force", str(header_only))
    assert forced.exit_code == 0, forced.output
    assert "(0 new, 0 updated, 0 unchanged, 25 removed)" in said(forced)
    assert "and 5 more" in said(forced)  # the first 20, masked
    for output in (said(refused), said(dry), said(forced)):
        assert "POL-1000" not in output
    assert list_policies_at(tmp_path) == []
    misuse = invoke(cli_config, "policies", "import", "--force", full)
    assert misuse.exit_code == 2 and "--force only applies to --replace" in said(misuse)
    assert list_policies_at(tmp_path) == []


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    options = SandboxOptions(invoices=40, seed=7, defect_rate=0.0, dialects=("meditrak",))
    with SandboxServer(options) as running:
        yield running


def policy_users(store: Store, number: str) -> set[str]:
    return {i.id for i in store.iter_invoices("meditrak") if i.patient.policy_number == number}


def quarantined(store: Store, reason: Reason) -> dict[str, set[Reason]]:
    return {
        e.record_key: {i.code for i in e.issues if i.severity == "error"}
        for e in store.quarantine_entries("meditrak", reason.value)
    }


def test_a_dropped_policy_quarantines_its_invoices_on_the_next_sync_and_reprocess(
    sandbox: SandboxServer, store_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "connector.yaml"
    sources = sandbox_sources(sandbox, ["meditrak"])
    sources[0]["http"] = FAST_HTTP
    document = {"store": {"url": store_url}, "sources": sources}
    config.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    url = load_config(config).store.sqlalchemy_url()

    def run(*args: str) -> Result:
        result = invoke(config, *args)
        assert result.exit_code == 0, result.output
        return result

    registry, _links = sandbox_registry(sandbox)
    assert len(registry) == 10, "the scenario below counts on a 10-policy registry"
    numbers = sorted(r.policy_number for r in registry)
    # Two policies with invoices: `dropped` goes from the registry while its invoices are
    # stored; `cancelled` is cancelled from the start, so its invoices wait in quarantine.
    dropped, cancelled = numbers[0], numbers[1]
    initial = [
        with_fields(r, status="cancelled") if r.policy_number == cancelled else r for r in registry
    ]
    run("policies", "import", registry_file(tmp_path, "initial.csv", initial))
    run("sync")
    with Store(url) as store:
        on_dropped = policy_users(store, dropped)
        stored_before = store.count_invoices("meditrak")
        waiting = quarantined(store, Reason.POLICY_INACTIVE)
    assert on_dropped and waiting
    assert all(codes == {Reason.POLICY_INACTIVE} for codes in waiting.values())

    # The registry export no longer lists either policy: 2 of 10 is over the limit.
    export = [r for r in initial if r.policy_number not in (dropped, cancelled)]
    path = registry_file(tmp_path, "export.csv", export)
    refused = invoke(config, "policies", "import", "--replace", path)
    assert refused.exit_code == 1 and "refused, nothing imported" in said(refused)
    dry = invoke(config, "policies", "import", "--replace", "--dry-run", path)
    assert dry.exit_code == 1
    assert f"{len(on_dropped)} stored invoice(s) carry a removed policy" in said(dry)
    with Store(url) as store:
        assert len(list_policies(store)) == 10
    done = run("policies", "import", "--replace", "--force", path)
    assert "(0 new, 0 updated, 8 unchanged, 2 removed)" in said(done)
    assert dropped not in said(done) and cancelled not in said(done)

    # reprocess: the record waiting as POLICY_INACTIVE is now POLICY_UNKNOWN. Stored invoices
    # are not its business (they were valid when accepted).
    reprocessed = run("reprocess")
    assert "moved 0 record(s)" in said(reprocessed)
    with Store(url) as store:
        unknown = quarantined(store, Reason.POLICY_UNKNOWN)
        assert unknown == {key: {Reason.POLICY_UNKNOWN} for key in waiting}
        assert store.count_invoices("meditrak") == stored_before

    # The next sync that brings the invoices of the dropped policy quarantines them as
    # POLICY_UNKNOWN; their accepted version stays in the store (never twice in either).
    run("sync", "--full")
    with Store(url) as store:
        unknown = quarantined(store, Reason.POLICY_UNKNOWN)
        assert unknown == {key: {Reason.POLICY_UNKNOWN} for key in {*waiting, *on_dropped}}
        assert store.count_invoices("meditrak") == stored_before
        assert policy_users(store, dropped) == on_dropped
        for entry in store.quarantine_entries("meditrak", Reason.POLICY_UNKNOWN.value):
            message = entry.issues[0].message
            assert dropped not in message and cancelled not in message
            assert any(str(mask_policy(n)) in message for n in (dropped, cancelled))

    # Both policies come back (active): reprocess releases every record.
    back = run("policies", "import", "--replace", registry_file(tmp_path, "back.csv", registry))
    assert "(2 new, 0 updated, 8 unchanged)" in said(back)
    released = run("reprocess")
    assert f"moved {len(waiting) + len(on_dropped)} record(s)" in said(released)
    with Store(url) as store:
        assert store.count_quarantined("meditrak") == 0
        assert store.count_invoices("meditrak") == stored_before + len(waiting)


def test_registry_text_round_trips() -> None:
    records = [PolicyRecord("POL-1", "A B", "active", date(2020, 1, 1), None), active("POL-2")]
    assert parse_registry_csv(registry_text(records)) == records
