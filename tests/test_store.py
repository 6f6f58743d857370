"""The store on every backend (SQLite file, PostgreSQL): idempotent upsert, item replacement,
quarantine and its release, sync state, and the batch + checkpoint transaction."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select

from connector.errors import StoreError
from connector.issues import Issue, Reason
from connector.model import Category, Invoice, InvoiceStatus, LineItem, Patient
from connector.pipeline.engine import RecordProcessor
from connector.pipeline.validation import normalized
from connector.store import Accepted, Rejected, Store
from connector.store.schema import invoice_item
from connector.store.store import sqlite_url_for
from mappings import meditrak_import

FIXTURES = Path(__file__).with_name("fixtures")

SOURCE = "vendor"


def line(n: int, **overrides: Any) -> LineItem:
    fields: dict[str, Any] = {
        "category": Category.LABORATORY,
        "description": f"Test {n}",
        "quantity": Decimal("2"),
        "unit_price": Decimal("12.50"),
        "total": Decimal("25.00"),
        "source_category": "lab",
        "category_rule": "exact:category",
    }
    fields.update(overrides)
    return LineItem(**fields)


def make(invoice_id: str, *items: LineItem, **overrides: Any) -> Invoice:
    lines = items or (line(1),)
    fields: dict[str, Any] = {
        "source": SOURCE,
        "id": invoice_id,
        "invoice_number": f"N-{invoice_id}",
        "invoice_date": date(2025, 3, 1),
        "total_amount": sum((i.total for i in lines), Decimal(0)),
        "currency": "USD",
        "status": InvoiceStatus.PAID,
        "source_status": "paid",
        "facility": "Riverside Family Clinic",
        "patient": Patient(name="Ruth Mensah", policy_number="POL-123456", source_ref="PAT-9"),
        "items": lines,
        "source_updated_at": datetime(2025, 3, 2, 8, 30, tzinfo=UTC),
    }
    fields.update(overrides)
    return normalized(Invoice(**fields))


def accepted(invoice: Invoice) -> Accepted:
    return Accepted(invoice, invoice.content_hash())


def rejected(key: str, *codes: Reason, raw: Any = None) -> Rejected:
    issues = [Issue(code, "path", f"{code.value} here") for code in codes]
    return Rejected(key, raw if raw is not None else {"id": key}, None, issues)


def write(
    store: Store,
    run_id: int,
    good: list[Invoice] | None = None,
    bad: list[Rejected] | None = None,
    resume: dict[str, Any] | None = None,
) -> dict[str, int]:
    good = good or []
    bad = bad or []
    counts = store.write_batch(
        run_id,
        SOURCE,
        [accepted(i) for i in good],
        bad,
        fetched=len(good) + len(bad),
        resume=resume,
    )
    return counts.as_dict()


def stored(store: Store) -> dict[str, Invoice]:
    return {i.id: i for i in store.iter_invoices(SOURCE)}


def test_upsert_counts_new_changed_and_unchanged(store: Store) -> None:
    run = store.start_run(SOURCE, "sync", None)
    first = [make("A"), make("B"), make("C")]
    assert write(store, run, first) == {
        "fetched": 3,
        "inserted": 3,
        "updated": 0,
        "unchanged": 0,
        "quarantined": 0,
        "released": 0,
    }
    again = [make("A"), make("B", facility="Moved"), make("C"), make("D")]
    counts = write(store, run, again)
    assert (counts["inserted"], counts["updated"], counts["unchanged"]) == (1, 1, 2)
    assert write(store, run, again)["unchanged"] == 4
    assert store.count_invoices(SOURCE) == 4
    assert stored(store)["B"].facility == "Moved"
    (record,) = store.runs(SOURCE)
    assert record.counts == {
        "fetched": 11,
        "inserted": 4,
        "updated": 1,
        "unchanged": 6,
        "quarantined": 0,
        "released": 0,
        "batches": 3,
    }


def test_unchanged_records_cost_no_write(store: Store) -> None:
    run = store.start_run(SOURCE, "sync", None)
    write(store, run, [make("A")])
    later = store.start_run(SOURCE, "sync", None)
    write(store, later, [make("A")])
    # The row still names the run that last wrote it.
    with store.engine.connect() as conn:
        from connector.store.schema import invoice

        last_run = conn.execute(select(invoice.c.last_run_id)).scalar_one()
    assert last_run == run


def test_read_back_equals_what_was_written_to_the_cent(store: Store) -> None:
    big = Decimal("999999999.99")
    original = make(
        "A",
        line(1, quantity=Decimal("1.5"), unit_price=Decimal("33.33"), total=Decimal("50.00")),
        line(2, quantity=Decimal("3.000"), unit_price=Decimal("0.10"), total=Decimal("0.30")),
        line(3, quantity=Decimal("1"), unit_price=big, total=big),
        paid_amount=Decimal("20.5"),
        source_updated_at=datetime(2025, 3, 2, 8, 30, 15, 123456, tzinfo=UTC),
    )
    # Quantities are kept in their plain spelling whatever the backend answers.
    assert [str(i.quantity) for i in original.items] == ["1.5", "3", "1"]
    run = store.start_run(SOURCE, "sync", None)
    write(store, run, [original])
    (back,) = store.iter_invoices(SOURCE)
    assert back == original
    assert back.to_import_record() == original.to_import_record()
    assert back.content_hash() == original.content_hash() == store.content_hashes(SOURCE)["A"]
    assert str(back.total_amount) == "1000000050.29"
    assert str(back.paid_amount) == "20.50"
    assert back.source_updated_at is not None and back.source_updated_at.tzinfo is not None
    assert back.source_updated_at.utcoffset() == timedelta(0)
    assert [item.category for item in back.items] == [Category.LABORATORY] * 3


def test_items_are_replaced_together_with_their_invoice(store: Store) -> None:
    run = store.start_run(SOURCE, "sync", None)
    write(store, run, [make("A", line(1), line(2), line(3)), make("B", line(1), line(2))])
    smaller = make("A", line(9, category=Category.DENTAL, unit_price=Decimal("5.00"),
                             total=Decimal("10.00")))  # fmt: skip
    assert write(store, run, [smaller])["updated"] == 1
    invoices = stored(store)
    assert [(i.description, i.total) for i in invoices["A"].items] == [("Test 9", Decimal("10.00"))]
    assert invoices["A"].total_amount == Decimal("10.00")
    assert len(invoices["B"].items) == 2
    with store.engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(invoice_item)).scalar_one()
    assert rows == 3


def test_changed_invoices_of_one_batch_each_get_their_own_new_content(store: Store) -> None:
    """Changed rows are written by one executemany: no row may take another's values, every
    field is rewritten, and first_seen_at stays that of the first write."""
    run = store.start_run(SOURCE, "sync", None)
    ids = [f"C{n:03d}" for n in range(60)]
    write(store, run, [make(i) for i in ids])
    with store.engine.connect() as conn:
        from connector.store.schema import invoice

        query = select(invoice.c.source_id, invoice.c.first_seen_at)
        first_seen = {r.source_id: r.first_seen_at for r in conn.execute(query)}
    later = store.start_run(SOURCE, "sync", None)
    changed = [
        make(
            i,
            line(
                1, description=f"Changed {i}", unit_price=Decimal(n + 1), total=Decimal(2 * n + 2)
            ),
            invoice_number=f"M-{i}",
            invoice_date=date(2025, 4, 1) + timedelta(days=n),
            paid_amount=Decimal(n),
            status=InvoiceStatus.UNPAID,
            source_status="open",
            facility=f"Clinic {n}",
            patient=Patient(name=f"Name {n}", policy_number=f"POL-{n:06d}", source_ref=f"P{n}"),
            source_updated_at=datetime(2025, 5, 1, tzinfo=UTC) + timedelta(minutes=n),
        )
        for n, i in enumerate(ids)
    ]
    assert write(store, later, changed)["updated"] == len(ids)
    back = stored(store)
    for expected in changed:
        assert back[expected.id] == expected
        assert store.content_hashes(SOURCE)[expected.id] == expected.content_hash()
    with store.engine.connect() as conn:
        rows = {r.source_id: r for r in conn.execute(select(invoice))}
    assert {i: r.first_seen_at for i, r in rows.items()} == first_seen
    assert {r.last_run_id for r in rows.values()} == {later}


def test_last_copy_of_an_id_within_one_batch_wins(store: Store) -> None:
    run = store.start_run(SOURCE, "sync", None)
    counts = write(store, run, [make("A", facility="first"), make("A", facility="second")])
    assert (counts["inserted"], counts["unchanged"]) == (1, 0)
    assert stored(store)["A"].facility == "second"


def test_quarantine_counts_attempts_and_keeps_the_latest_issues(store: Store) -> None:
    run = store.start_run(SOURCE, "sync", None)
    write(store, run, bad=[rejected("X", Reason.NO_ITEMS), rejected("Y", Reason.FIELD_MISSING)])
    (x1, _y1) = store.quarantine_entries(SOURCE)
    later = store.start_run(SOURCE, "sync", None)
    counts = write(
        store,
        later,
        bad=[rejected("X", Reason.CATEGORY_UNMAPPED, Reason.ITEM_TOTAL_MISMATCH, raw={"v": 2})],
    )
    assert counts["quarantined"] == 1
    entries = {e.record_key: e for e in store.quarantine_entries(SOURCE)}
    assert entries["X"].attempts == 2
    assert entries["Y"].attempts == 1
    assert entries["X"].raw_payload == {"v": 2}
    assert {i.code for i in entries["X"].issues} == {
        Reason.CATEGORY_UNMAPPED,
        Reason.ITEM_TOTAL_MISMATCH,
    }
    assert entries["X"].first_seen_at == x1.first_seen_at
    assert entries["X"].last_seen_at >= x1.last_seen_at
    assert store.count_quarantined(SOURCE) == 2
    assert [e.record_key for e in store.quarantine_entries(SOURCE, reason="NO_ITEMS")] == []
    assert [e.record_key for e in store.quarantine_entries(reason="FIELD_MISSING")] == ["Y"]
    assert store.quarantine_by_reason() == {
        SOURCE: {"CATEGORY_UNMAPPED": 1, "ITEM_TOTAL_MISMATCH": 1, "FIELD_MISSING": 1}
    }


def test_warnings_are_kept_but_are_not_reason_codes(store: Store) -> None:
    run = store.start_run(SOURCE, "sync", None)
    issues = [
        Issue(Reason.NO_ITEMS, "items", "none"),
        Issue(Reason.POLICY_UNKNOWN, "patient.policy_number", "later", "warning"),
    ]
    store.write_batch(run, SOURCE, [], [Rejected("X", {}, None, issues)], fetched=1, resume=None)
    (entry,) = store.quarantine_entries(SOURCE)
    assert len(entry.issues) == 2
    assert store.quarantine_by_reason() == {SOURCE: {"NO_ITEMS": 1}}


def test_a_record_that_later_passes_is_released_from_quarantine(store: Store) -> None:
    run = store.start_run(SOURCE, "sync", None)
    write(store, run, [make("A")], [rejected("B", Reason.NO_ITEMS), rejected("C", Reason.NO_ITEMS)])
    counts = write(store, run, [make("A"), make("B")])
    assert (counts["released"], counts["inserted"], counts["unchanged"]) == (1, 1, 1)
    assert [e.record_key for e in store.quarantine_entries(SOURCE)] == ["C"]
    assert sorted(stored(store)) == ["A", "B"]
    assert store.runs(SOURCE)[0].counts["released"] == 1


def test_quarantine_is_per_source(store: Store) -> None:
    run = store.start_run(SOURCE, "sync", None)
    write(store, run, bad=[rejected("X", Reason.NO_ITEMS)])
    other = store.start_run("other", "sync", None)
    store.write_batch(other, "other", [], [rejected("X", Reason.NO_ITEMS)], fetched=1, resume=None)
    assert store.count_quarantined() == 2
    assert write(store, run, [make("X")])["released"] == 1
    assert [e.source for e in store.quarantine_entries()] == ["other"]


def test_checkpoint_is_written_with_its_batch(store: Store) -> None:
    run = store.start_run(SOURCE, "sync", None)
    write(store, run, [make("A")], resume={"position": {"index": 1}})
    assert store.get_state(SOURCE).resume == {"position": {"index": 1}}
    assert store.get_state(SOURCE).last_run_id == run


def test_a_failing_batch_leaves_neither_invoices_nor_checkpoint(store: Store) -> None:
    run = store.start_run(SOURCE, "sync", None)
    write(store, run, [make("A")], resume={"position": {"index": 1}})
    # A row the database refuses (NOT NULL invoice_number) makes the whole batch fail.
    broken = make("Z").model_copy(update={"invoice_number": None})
    with pytest.raises(StoreError, match="nothing of this batch was kept"):
        write(
            store,
            run,
            [make("B"), make("A", facility="changed"), broken],
            [rejected("Q", Reason.NO_ITEMS)],
            resume={"position": {"index": 2}},
        )
    assert sorted(stored(store)) == ["A"]
    assert stored(store)["A"].facility == "Riverside Family Clinic"
    assert store.count_quarantined() == 0
    assert store.get_state(SOURCE).resume == {"position": {"index": 1}}
    assert store.runs(SOURCE)[0].counts["batches"] == 1
    assert store.runs(SOURCE)[0].counts["inserted"] == 1
    # The store is still usable afterwards.
    assert write(store, run, [make("B")], resume=None)["inserted"] == 1
    assert store.get_state(SOURCE).resume is None


def test_finishing_a_run_moves_the_cursor_and_clears_the_resume_point(store: Store) -> None:
    assert store.get_state(SOURCE).cursor is None
    cursor = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
    run = store.start_run(SOURCE, "sync", None)
    write(store, run, [make("A")], resume={"position": {"index": 3}})
    store.finish_run(run, SOURCE, status="ok", cursor_after=cursor, clear_resume=True)
    state = store.get_state(SOURCE)
    assert (state.cursor, state.resume, state.last_run_id) == (cursor, None, run)
    record = store.runs(SOURCE)[0]
    assert (record.status, record.cursor_after, record.error) == ("ok", cursor, None)
    assert record.finished_at is not None


def test_a_failed_run_keeps_cursor_and_resume_point(store: Store) -> None:
    cursor = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
    first = store.start_run(SOURCE, "sync", None)
    store.finish_run(first, SOURCE, status="ok", cursor_after=cursor, clear_resume=True)
    run = store.start_run(SOURCE, "sync", cursor)
    write(store, run, [make("A")], resume={"position": {"index": 3}})
    store.finish_run(run, SOURCE, status="failed", error="vendor down")
    state = store.get_state(SOURCE)
    assert (state.cursor, state.resume) == (cursor, {"position": {"index": 3}})
    assert store.runs(SOURCE, limit=1)[0].error == "vendor down"


def test_runs_left_running_by_a_dead_process_are_marked_interrupted(store: Store) -> None:
    dead = store.start_run(SOURCE, "sync", None)
    other = store.start_run("other", "sync", None)
    assert store.mark_abandoned_runs(SOURCE) == 1
    by_id = {r.id: r for r in store.runs()}
    assert by_id[dead].status == "interrupted"
    assert by_id[other].status == "running"


def test_backfill_runs_do_not_touch_sync_state(store: Store) -> None:
    run = store.start_run(SOURCE, "backfill", None)
    store.write_batch(run, SOURCE, [accepted(make("A"))], [], fetched=1, resume={"x": 1},
                      track_state=False)  # fmt: skip
    store.finish_run(run, SOURCE, status="ok", track_state=False)
    assert store.all_states() == []
    assert store.count_invoices() == 1


def test_void_invoices_are_stored_but_can_be_left_out(store: Store) -> None:
    run = store.start_run(SOURCE, "sync", None)
    write(store, run, [make("A"), make("B", status=InvoiceStatus.VOID, source_status="rejected")])
    assert [i.id for i in store.iter_invoices(SOURCE)] == ["A", "B"]
    assert [i.id for i in store.iter_invoices(SOURCE, include_void=False)] == ["A"]
    assert [i.id for i in store.iter_invoices("nobody")] == []


def test_batches_larger_than_one_in_list_chunk(store: Store) -> None:
    run = store.start_run(SOURCE, "sync", None)
    # One more than the store's IN-list chunk (500), for invoices and quarantine alike.
    many = [make(f"I{n:05d}") for n in range(501)]
    rejects = [rejected(f"R{n:05d}", Reason.NO_ITEMS) for n in range(501)]
    assert write(store, run, many, rejects)["inserted"] == 501
    counts = write(store, run, many, rejects)
    assert (counts["unchanged"], counts["quarantined"]) == (501, 501)
    streamed = list(store.iter_invoices(SOURCE, chunk=200))
    assert [i.id for i in streamed] == sorted(i.id for i in many)
    assert all(len(i.items) == 1 for i in streamed)


def test_migrating_twice_is_harmless(store_url: str) -> None:
    with Store(store_url) as first:
        run = first.start_run(SOURCE, "sync", None)
        write(first, run, [make("A")])
    with Store(store_url) as second:
        second.migrate()
        assert second.count_invoices() == 1


def test_sqlite_file_is_created_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "store.db"
    with Store(sqlite_url_for(path)):
        pass
    assert path.stat().st_mode & 0o777 == 0o600


def test_sqlite_reads_do_not_block_each_other_or_writers(tmp_path: Path) -> None:
    url = sqlite_url_for(tmp_path / "store.db")
    with Store(url) as store, Store(url) as writer:
        run = store.start_run(SOURCE, "sync", None)
        write(store, run, [make(f"I{n}") for n in range(30)])
        streamed = store.iter_invoices(SOURCE, chunk=10)
        first = next(streamed)
        # While the stream holds its read transaction, another connection writes.
        other_run = writer.start_run(SOURCE, "sync", None)
        assert write(writer, other_run, [make("NEW")])["inserted"] == 1
        rest = list(streamed)
    assert len([first, *rest]) == 30


def test_an_unreachable_database_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory", encoding="utf-8")
    with pytest.raises(StoreError):
        Store(sqlite_url_for(blocker / "store.db"))


def test_over_long_vendor_text_is_quarantined_instead_of_failing_the_batch(store: Store) -> None:
    """PostgreSQL refuses text longer than its column: such a record must not take the whole
    batch (and with it every later run of the source) down."""
    processor = RecordProcessor(
        meditrak_import.MAPPING, meditrak_import.MAPPING.context(SOURCE, currency="USD")
    )
    good = orjson.loads((FIXTURES / "meditrak_import_record.json").read_bytes())
    long_id = {**good, "id": "X" * 250}
    long_text = {**good, "id": "B", "facility": "F" * 400}
    long_text["items"] = [{**good["items"][0], "description": "d" * 1500}, good["items"][1]]
    accepted, rejected = [], []
    for raw in (good, long_id, long_text):
        ok, bad, _ = processor.process(raw)
        accepted += [ok] if ok else []
        rejected += [bad] if bad else []
    run = store.start_run(SOURCE, "sync", None)
    store.write_batch(run, SOURCE, accepted, rejected, fetched=3, resume={"p": 1})
    assert list(store.content_hashes(SOURCE)) == ["INV-001"]
    keys = {e.record_key: e for e in store.quarantine_entries(SOURCE)}
    assert len(keys) == 2 and "B" in keys
    (digest,) = [k for k in keys if k != "B"]
    assert digest.startswith("sha256:")
    assert {i.path for i in keys["B"].issues} == {"facility", "items[0].description"}
    assert store.get_state(SOURCE).resume == {"p": 1}


def test_a_lease_lock_left_by_a_killed_local_process_is_taken_over(tmp_path: Path) -> None:
    from connector.store.coordination import LeaseSourceLock
    from connector.store.schema import source_lock

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    lease = timedelta(minutes=5)
    with Store(sqlite_url_for(tmp_path / "s.db")) as store:

        def held_by(owner: str) -> None:
            now = datetime.now(UTC)
            with store.engine.begin() as conn:
                conn.execute(source_lock.delete())
                conn.execute(
                    source_lock.insert().values(
                        source=SOURCE, owner=owner, acquired_at=now, expires_at=now + lease
                    )
                )

        held_by(f"{host}:{dead.pid}:abcd1234")
        assert LeaseSourceLock(store, SOURCE, lease).acquire()
        # A live process, or one on another host, keeps its lease.
        held_by(f"{host}:{os.getppid()}:abcd1234")
        assert not LeaseSourceLock(store, SOURCE, lease).acquire()
        held_by(f"elsewhere.example:{dead.pid}:abcd1234")
        assert not LeaseSourceLock(store, SOURCE, lease).acquire()
