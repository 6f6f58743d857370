"""Policy registry: CSV import (every bad row reported, nothing half-imported), the policy
checks (format, unknown, inactive by status and by validity window), patient-link
resolution, and the registry tables on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from connector.cli.app import get_app
from connector.config import build_config
from connector.errors import ConfigError, StoreError
from connector.issues import Reason
from connector.masking import mask_name, mask_payload, mask_policy
from connector.model import (
    LINK_ORIGIN,
    RECORD_ORIGIN,
    Category,
    Invoice,
    InvoiceStatus,
    LineItem,
    Patient,
)
from connector.policies import (
    PatientLink,
    PolicyChecker,
    PolicyRecord,
    RegistryFileError,
    RegistrySnapshot,
    parse_links_csv,
    parse_registry_csv,
)
from connector.store import Store
from connector.store.policies import (
    count_policies,
    import_links,
    import_policies,
    list_policies,
    load_registry,
)
from connector.store.store import sqlite_url_for

HEADER = "policy_number,holder_name,status,valid_from,valid_to\n"
PG_URL_ENV = "CONNECTOR_TEST_PG_URL"
PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def invoice(
    policy: str | None = "POL-100001",
    *,
    day: date | None = date(2025, 6, 1),
    source: str = "clinic",
    ref: str | None = None,
) -> Invoice:
    item = LineItem(
        category=Category.CONSULTATION,
        description="Consultation",
        quantity=Decimal(1),
        unit_price=Decimal("50.00"),
        total=Decimal("50.00"),
    )
    return Invoice(
        source=source,
        id="INV-1",
        invoice_number="N-1",
        invoice_date=day,
        total_amount=Decimal("50.00"),
        currency="USD",
        status=InvoiceStatus.PAID,
        source_status="paid",
        patient=Patient(name="John Doe", policy_number=policy, source_ref=ref),
        items=(item,),
    )


SNAPSHOT = RegistrySnapshot(
    policies={
        "POL-100001": PolicyRecord("POL-100001", "John Doe", "active", None, None),
        "POL-100002": PolicyRecord(
            "POL-100002", "Mary Moe", "active", date(2025, 1, 1), date(2025, 3, 31)
        ),
        "POL-100003": PolicyRecord("POL-100003", "Ann Roe", "suspended", None, None),
    },
    links={("citabox", "pat-7"): "POL-100001", ("citabox", "pat-9"): "POL-999999"},
)


def codes(policy_invoice: Invoice, checker: PolicyChecker | None = None) -> list[Reason]:
    checker = checker or PolicyChecker(SNAPSHOT)
    return [i.code for i in checker.check(checker.resolve(policy_invoice))]


# ----------------------------------------------------------------------------- checks


def test_registered_active_policy_passes() -> None:
    assert codes(invoice("POL-100001")) == []
    assert codes(invoice("POL-100002", day=date(2025, 3, 31))) == []
    assert codes(invoice("POL-100002", day=date(2025, 1, 1))) == []


@pytest.mark.parametrize("number", ["123456", "POL-", "pol-100001", "POL-10000A", "POL 100001"])
def test_policy_format(number: str) -> None:
    assert codes(invoice(number)) == [Reason.POLICY_FORMAT]


def test_policy_format_is_configurable() -> None:
    checker = PolicyChecker(SNAPSHOT, r"^[A-Z]{2}\d{4}$")
    assert codes(invoice("AB1234"), checker) == [Reason.POLICY_UNKNOWN]
    assert codes(invoice("POL-100001"), checker) == [Reason.POLICY_FORMAT]
    with pytest.raises(ConfigError, match=r"policies\.pattern"):
        build_config({"policies": {"pattern": "([bad"}}, env={})
    assert build_config({"policies": {"pattern": "^X"}}, env={}).policies.pattern == "^X"


def test_unknown_policy() -> None:
    assert codes(invoice("POL-424242")) == [Reason.POLICY_UNKNOWN]


def test_inactive_status() -> None:
    issues = PolicyChecker(SNAPSHOT).check(invoice("POL-100003"))
    assert [i.code for i in issues] == [Reason.POLICY_INACTIVE]
    assert "suspended" in issues[0].message
    assert "POL-100003" not in issues[0].message  # masked: "POL-****03"


@pytest.mark.parametrize("day", [date(2024, 12, 31), date(2025, 4, 1)])
def test_outside_the_validity_window_on_the_invoice_date(day: date) -> None:
    issues = PolicyChecker(SNAPSHOT).check(invoice("POL-100002", day=day))
    assert [i.code for i in issues] == [Reason.POLICY_INACTIVE]
    assert str(day) in issues[0].message


def test_missing_policy_without_link() -> None:
    assert codes(invoice(None)) == [Reason.POLICY_MISSING]
    assert codes(invoice("  ")) == [Reason.POLICY_MISSING]
    assert codes(invoice(None, source="citabox", ref="pat-unknown")) == [Reason.POLICY_MISSING]
    # A link of another source does not count.
    assert codes(invoice(None, source="splose", ref="pat-7")) == [Reason.POLICY_MISSING]


def test_link_resolution_puts_the_policy_on_the_canonical_invoice() -> None:
    checker = PolicyChecker(SNAPSHOT)
    resolved = checker.resolve(invoice(None, source="citabox", ref="pat-7"))
    assert resolved.patient.policy_number == "POL-100001"
    assert resolved.patient.source_ref == "pat-7"
    assert checker.check(resolved) == []
    # A linked policy is checked like any other.
    linked_unknown = checker.resolve(invoice(None, source="citabox", ref="pat-9"))
    assert [i.code for i in checker.check(linked_unknown)] == [Reason.POLICY_UNKNOWN]


def test_the_better_standing_wins_between_the_invoice_policy_and_the_link() -> None:
    # Issue 14: the candidate registered and active is billed, whichever side offers it, and
    # the disagreement is a warning (POLICY_CONFLICT), never a block.
    checker = PolicyChecker(SNAPSHOT)
    resolved = checker.resolve(invoice("POL-100003", source="citabox", ref="pat-7"))
    assert resolved.patient.policy_number == "POL-100001"
    assert resolved.patient.policy_source == LINK_ORIGIN
    issues = checker.check(resolved)
    assert [(i.code, i.severity) for i in issues] == [(Reason.POLICY_CONFLICT, "warning")]
    assert "POL-100003" not in issues[0].message and "POL-100001" not in issues[0].message
    # pat-9's link names an unregistered policy: the invoice's active one wins.
    resolved = checker.resolve(invoice("POL-100001", source="citabox", ref="pat-9"))
    assert resolved.patient.policy_number == "POL-100001"
    assert resolved.patient.policy_source == RECORD_ORIGIN
    assert [i.code for i in checker.check(resolved)] == [Reason.POLICY_CONFLICT]
    # Both active: the operator's link is preferred.
    resolved = checker.resolve(invoice("POL-100002", source="citabox", ref="pat-7"))
    assert resolved.patient.policy_number == "POL-100001"


def test_empty_registry_knows_nothing() -> None:
    empty = PolicyChecker(RegistrySnapshot())
    assert codes(invoice("POL-100001"), empty) == [Reason.POLICY_UNKNOWN]
    assert codes(invoice(None, source="citabox", ref="pat-7"), empty) == [Reason.POLICY_MISSING]


# ----------------------------------------------------------------------------- CSV parsing


def test_parse_registry_csv() -> None:
    records = parse_registry_csv(
        "\ufeff"
        + HEADER
        + "POL-1,John Doe,active,2020-01-01,2030-12-31\n"
        + '"POL-2","Doe, Jane",Inactive,,\n'
        + "\n"
    )
    assert records == [
        PolicyRecord("POL-1", "John Doe", "active", date(2020, 1, 1), date(2030, 12, 31)),
        PolicyRecord("POL-2", "Doe, Jane", "inactive", None, None),
    ]


def test_every_bad_row_is_reported_with_its_line() -> None:
    text = (
        HEADER
        + "POL-1,John Doe,active,2020-01-01,2030-12-31\n"  # line 2: fine
        + ",No Number,active,,\n"  # line 3
        + "POL-3,Ann,dormant,,\n"  # line 4
        + "POL-4,Bob,active,01/02/2020,\n"  # line 5
        + "POL-5,Eve,active,2021-01-01,2020-01-01\n"  # line 6
        + "POL-1,John Again,active,,\n"  # line 7
        + "POL-7,Too,many,fields,here,!\n"  # line 8
        + "POL-8,Zed,active,2020-02-30,\n"  # line 9
    )
    with pytest.raises(RegistryFileError) as caught:
        parse_registry_csv(text)
    problems = caught.value.problems
    assert [p.split(":")[0] for p in problems] == [
        "line 3",
        "line 4",
        "line 5",
        "line 6",
        "line 7",
        "line 8",
        "line 9",
    ]
    joined = "\n".join(problems)
    assert "policy_number is empty" in joined
    assert "'dormant'" in joined
    assert "not a date" in joined
    assert "before valid_from" in joined
    assert "repeats the one on line 2" in joined
    assert "expected 5 fields, got 6" in joined
    assert "nothing imported" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "the file is empty"),
        ("policy_number,holder_name\nPOL-1,x\n", "header lacks status, valid_from, valid_to"),
    ],
)
def test_registry_header_problems(text: str, needle: str) -> None:
    with pytest.raises(RegistryFileError, match=needle):
        parse_registry_csv(text)


def test_parse_links_csv() -> None:
    links = parse_links_csv(
        "source,patient_ref,policy_number\n"
        "citabox,p1,POL-1\n"
        "citabox,p1,POL-1\n"  # the same link twice is harmless
        "invoice_api,p1,POL-2\n"
    )
    assert links == [
        PatientLink("citabox", "p1", "POL-1"),
        PatientLink("invoice_api", "p1", "POL-2"),
    ]
    with pytest.raises(RegistryFileError) as caught:
        parse_links_csv(
            "source,patient_ref,policy_number\ncitabox,p1,POL-1\ncitabox,p1,POL-9\n,p2,POL-1\n"
        )
    assert [p.split(":")[0] for p in caught.value.problems] == ["line 3", "line 4"]


# ----------------------------------------------------------------------------- store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(sqlite_url_for(tmp_path / "registry.db")) as opened:
        yield opened


def exercise_registry_store(store: Store) -> None:
    first = parse_registry_csv(
        HEADER + "POL-1,John Doe,active,2020-01-01,2030-12-31\nPOL-2,Mary Moe,inactive,,\n"
    )
    counts = import_policies(store, first)
    assert (counts.inserted, counts.updated) == (2, 0)
    again = parse_registry_csv(HEADER + "POL-2,Mary Moe,active,,2026-01-01\nPOL-3,Ann,active,,\n")
    counts = import_policies(store, again)
    assert (counts.inserted, counts.updated) == (1, 1)
    assert [r.policy_number for r in list_policies(store)] == ["POL-1", "POL-2", "POL-3"]
    snapshot = load_registry(store)
    assert snapshot.policies["POL-2"] == PolicyRecord(
        "POL-2", "Mary Moe", "active", None, date(2026, 1, 1)
    )
    links = import_links(store, [PatientLink("citabox", "p1", "POL-1")])
    assert (links.inserted, links.updated) == (1, 0)
    links = import_links(
        store, [PatientLink("citabox", "p1", "POL-3"), PatientLink("citabox", "p2", "POL-2")]
    )
    assert (links.inserted, links.updated) == (1, 1)
    snapshot = load_registry(store)
    assert snapshot.links == {("citabox", "p1"): "POL-3", ("citabox", "p2"): "POL-2"}
    assert count_policies(store) == (3, 2)


def test_registry_store_on_sqlite(store: Store) -> None:
    exercise_registry_store(store)


def test_a_failed_import_keeps_nothing(store: Store) -> None:
    import_policies(store, [PolicyRecord("POL-1", "A", "active", None, None)])
    # The second row breaks a NOT NULL constraint mid-transaction: the first must not stay.
    broken = [
        PolicyRecord("POL-2", "B", "active", None, None),
        PolicyRecord("POL-3", "C", None, None, None),  # type: ignore[arg-type]
    ]
    with pytest.raises(StoreError):
        import_policies(store, broken)
    assert [r.policy_number for r in list_policies(store)] == ["POL-1"]


def pg_admin_url() -> str:
    return os.environ.get(PG_URL_ENV, PG_DEFAULT)


@pytest.fixture
def pg_store() -> Iterator[Store]:
    """A private PostgreSQL database for this test, dropped afterwards."""
    base = make_url(pg_admin_url())
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    name = f"connector_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        message = (
            f"PostgreSQL not reachable at {base.render_as_string()} ({type(exc).__name__}); "
            f"start it or set {PG_URL_ENV}=postgresql+psycopg://user@host:port/db"
        )
        if os.environ.get("CONNECTOR_REQUIRE_PG"):
            pytest.fail(message)
        pytest.skip(message)
    store = Store(base.set(database=name).render_as_string(hide_password=False))
    try:
        yield store
    finally:
        store.close()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.postgres
def test_registry_store_on_postgresql(pg_store: Store) -> None:
    assert pg_store.dialect == "postgresql"
    exercise_registry_store(pg_store)


# ----------------------------------------------------------------------------- CLI


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "connector.yaml"
    config.write_text(f"store:\n  url: {tmp_path / 'cli.db'}\n", encoding="utf-8")
    return config


def test_cli_import_reports_every_bad_row_and_imports_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "POL-1,A,active,,\nPOL-2,B,zombie,,\nPOL-3,C,active,x,\n")
    runner = CliRunner()
    app = get_app()
    result = runner.invoke(app, ["-c", str(config), "policies", "import", str(bad)])
    assert result.exit_code == 1
    assert "2 problem(s); nothing was imported" in result.output
    assert "line 3" in result.output and "line 4" in result.output
    with Store(sqlite_url_for(tmp_path / "cli.db")) as store:
        assert list_policies(store) == []


def test_cli_import_list_and_link(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    good = tmp_path / "registry.csv"
    good.write_text(HEADER + "POL-456789,John Doe,active,2020-01-01,2030-12-31\n")
    links = tmp_path / "links.csv"
    links.write_text("source,patient_ref,policy_number\ncitabox,p-1,POL-456789\n")
    runner = CliRunner()
    app = get_app()
    cfg = ["-c", str(config)]
    imported = runner.invoke(app, [*cfg, "policies", "import", str(good)])
    assert imported.exit_code == 0, imported.output
    assert "imported 1 policy (1 new, 0 updated, 0 unchanged)" in imported.output
    again = runner.invoke(app, [*cfg, "policies", "import", str(good)])
    # The same file again changes nothing, and the counts say so.
    assert "(0 new, 0 updated, 1 unchanged)" in again.output
    linked = runner.invoke(app, [*cfg, "policies", "link", str(links)])
    assert linked.exit_code == 0, linked.output
    assert "imported 1 patient link(s)" in linked.output
    masked = runner.invoke(app, [*cfg, "policies", "list"])
    assert masked.exit_code == 0, masked.output
    assert "POL-****89" in masked.output and "J*** D**" in masked.output
    assert "POL-456789" not in masked.output and "John Doe" not in masked.output
    assert "1 patient links" in masked.output
    revealed = runner.invoke(app, [*cfg, "policies", "list", "--reveal", "--format", "json"])
    assert '"policy_number": "POL-456789"' in revealed.output
    assert '"holder_name": "John Doe"' in revealed.output


# ----------------------------------------------------------------------------- masking


def test_masking_helpers() -> None:
    assert mask_name("John Doe") == "J*** D**"
    assert mask_name("María Rodríguez Vargas") == "M**** R******** V*****"
    assert mask_policy("POL-456789") == "POL-****89"
    assert mask_policy("12345678") == "******78"
    assert mask_policy("AB") == "**"
    assert mask_name(None) is None and mask_policy(None) is None


def test_mask_payload_walks_nested_patient_fields() -> None:
    raw = {
        "id": "INV-1",
        "facility": "Riverside Clinic",
        "patient": {"name": "John Doe", "policy_number": "POL-456789", "id": 4711},
        "patient_name": "Mary Moe",
        "firstName": "Ann",
        "insurance": [{"provider": "Acme", "number": "ABC-99887766"}],
        "referenceNumbers": ["Medicare: 12345678"],
        "items": [{"description": "X-Ray", "service_name": "X-Ray", "total": 10}],
        "branch": {"name": "Indiranagar"},
    }
    masked = mask_payload(raw)
    assert masked["id"] == "INV-1"
    assert masked["facility"] == "Riverside Clinic"
    assert masked["patient"] == {"name": "J*** D**", "policy_number": "POL-****89", "id": "****"}
    assert masked["patient_name"] == "M*** M**"
    assert masked["firstName"] == "A**"
    assert masked["insurance"][0]["number"] == "ABC-******66"
    assert "12345678" not in str(masked["referenceNumbers"])
    assert masked["items"] == raw["items"]
    # "name" alone could be a person: masked wherever it appears (a branch name loses out).
    assert masked["branch"] == {"name": "I**********"}
