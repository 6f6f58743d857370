"""Tests for the sandbox's generated truth: determinism, shape, defects and changes."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from connector.sandbox import EXPECTED_REASON, SandboxServer, generate_dataset, item_total
from connector.sandbox._dataset import CATEGORIES

ALL_KINDS = tuple(EXPECTED_REASON)
REPO_ROOT = Path(__file__).resolve().parents[2]


def _as_tuples(n: int, seed: int, **kwargs: object) -> list[tuple[object, ...]]:
    dataset = generate_dataset(n, seed, defect_kinds=ALL_KINDS, **kwargs)  # type: ignore[arg-type]
    return [dataclasses.astuple(inv) for inv in dataset.invoices]


def test_same_seed_gives_identical_data() -> None:
    assert _as_tuples(500, 11) == _as_tuples(500, 11)


def test_different_seed_gives_different_data() -> None:
    assert _as_tuples(200, 11) != _as_tuples(200, 12)


def test_dialect_datasets_are_deterministic_across_servers() -> None:
    # Seeds per dialect are derived with crc32, not hash(), so they survive process restarts;
    # two servers in one process at least must agree.
    first = SandboxServer().dataset("meditrak")
    second = SandboxServer().dataset("meditrak")
    assert [dataclasses.astuple(i) for i in first] == [dataclasses.astuple(i) for i in second]
    other = SandboxServer().dataset("meditrak_import")
    assert [i.patient_name for i in first] != [i.patient_name for i in other]


def test_dialect_datasets_do_not_depend_on_hash_randomisation() -> None:
    script = (
        "import dataclasses, hashlib; from connector.sandbox import SandboxServer; "
        "d = SandboxServer().dataset('meditrak'); "
        "print(hashlib.sha256(repr([dataclasses.astuple(i) for i in d]).encode()).hexdigest())"
    )
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        result = subprocess.run(
            [sys.executable, "-c", script],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        digests.add(result.stdout.strip())
    assert len(digests) == 1


def test_invoice_shape() -> None:
    dataset = generate_dataset(2000, 5, defect_kinds=())
    ids = [inv.id for inv in dataset]
    assert ids == sorted(ids)
    assert ids[0] == "INV-000001"
    assert dataset.invoices[0].number == "2025-000001"
    patients: dict[str, str] = {}
    for inv in dataset:
        assert date(2025, 1, 1) <= inv.invoice_date <= date(2025, 12, 31)
        assert inv.updated_at.tzinfo is UTC
        assert inv.updated_at.date() >= inv.invoice_date
        assert inv.updated_at < datetime.now(UTC)
        assert inv.status in ("paid", "unpaid", "pending", "void")
        assert inv.policy_number.startswith("POL-") and len(inv.policy_number) == 10
        assert inv.policy_registered
        assert 1 <= len(inv.items) <= 4
        for item in inv.items:
            assert item.category in CATEGORIES
            assert item.description in CATEGORIES[item.category][0]
            assert item.quantity in (1, 2, 3)
            assert Decimal("5") <= item.unit_price <= Decimal("900")
            assert item.unit_price == item.unit_price.quantize(Decimal("0.01"))
        assert inv.total == sum(item_total(i) for i in inv.items)
        # One policy per patient.
        assert patients.setdefault(inv.patient_ref, inv.policy_number) == inv.policy_number
    statuses = Counter(inv.status for inv in dataset)
    assert statuses["paid"] + statuses["unpaid"] > len(dataset) * 0.7
    assert len(patients) < len(dataset)  # patients repeat


def test_some_invoices_share_their_update_second() -> None:
    dataset = generate_dataset(2000, 5, defect_kinds=())
    counts = Counter(inv.updated_at for inv in dataset)
    shared = sum(1 for n in counts.values() if n > 1)
    assert 0 < shared < len(dataset) * 0.1


def test_defects_are_assigned_round_robin_at_the_given_rate() -> None:
    dataset = generate_dataset(4000, 9, defect_rate=0.1, defect_kinds=ALL_KINDS)
    kinds = Counter(dataset.defects().values())
    assert set(kinds) == set(ALL_KINDS)
    assert 300 < sum(kinds.values()) < 500
    assert max(kinds.values()) - min(kinds.values()) <= 1


def test_no_defects_when_no_kinds() -> None:
    assert generate_dataset(500, 9, defect_rate=1.0, defect_kinds=()).defects() == {}


def test_unknown_defect_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown defect kinds"):
        generate_dataset(10, 1, defect_kinds=("nonsense",))


def test_statuses_can_be_restricted() -> None:
    dataset = generate_dataset(1000, 9, defect_kinds=(), statuses=("paid", "unpaid", "pending"))
    assert {inv.status for inv in dataset} == {"paid", "unpaid", "pending"}


def test_unregistered_policies_are_missing_from_the_registry_only_for_their_invoice() -> None:
    dataset = generate_dataset(1000, 4, defect_rate=0.2, defect_kinds=("unregistered_policy",))
    registered = {row["policy_number"] for row in dataset.registry_rows()}
    for inv in dataset:
        assert (inv.policy_number in registered) == (inv.defect != "unregistered_policy")
        assert inv.policy_registered == (inv.defect != "unregistered_policy")
    row = dataset.registry_rows()[0]
    assert set(row) == {"policy_number", "holder_name", "status", "valid_from", "valid_to"}
    assert (row["status"], row["valid_from"], row["valid_to"]) == (
        "active",
        "2020-01-01",
        "2030-12-31",
    )


def test_mutate_changes_content_and_bumps_updated_at() -> None:
    dataset = generate_dataset(50, 1, defect_kinds=())
    newest_before = dataset.max_updated_at()
    target = dataset.invoices[3]
    price_before, version_before = target.items[0].unit_price, dataset.version
    changed = dataset.mutate(target.id)
    assert changed is target
    assert target.items[0].unit_price != price_before
    assert target.updated_at >= newest_before
    assert target.updated_at.microsecond == 0
    assert dataset.version > version_before
    with pytest.raises(KeyError):
        dataset.mutate("INV-999999")


def test_add_and_delete() -> None:
    dataset = generate_dataset(50, 1, defect_kinds=())
    added = dataset.add()
    assert added.id == "INV-000051"
    assert added.defect is None and added.items
    assert dataset.get(added.id) is added
    assert dataset.invoices[-1] is added
    dataset.delete("INV-000010")
    assert dataset.get("INV-000010") is None
    assert "INV-000010" not in dataset.ids()
    assert dataset.add().id == "INV-000052"  # ids are never reused
    with pytest.raises(KeyError):
        dataset.delete("INV-000010")
