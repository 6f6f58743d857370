"""Precision and recall per sandbox dialect (issue 14, "Done when"): every dialect serves every
defect kind it can render, fee lines (`non_clinical_line`) included; synced over loopback HTTP
into a real SQLite store with the registry and patient links imported as an operator does,
every clean invoice is stored to the cent and every defective one quarantined with its
expected reason. With `non_clinical_category` set (MediTrak-contract sources: a rules file
mapping the vendor's fee words, since their category word is the vendor's decision) the fee
invoices are stored too, still to the cent."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from connector.sandbox import EXPECTED_REASON, SandboxOptions, SandboxServer, available_dialects
from connector.sandbox._dataset import FEE_KINDS
from connector.sandbox.meditrak import MEDITRAK_FEE_WORDS
from connector.sandbox.splose import SploseDialect
from connector.store import Store
from tests.conftest import (
    invoke_cli,
    seeded_sandbox_config,
)

FEE_DEFECT = "non_clinical_line"
# The shipped non-clinical rules the sandbox's fee wordings reach.
NON_CLINICAL_RULE_NAMES = (
    "cancellation fee",
    "missed appointment",
    "surcharge",
    "gift voucher",
    "admin fee",
    "report writing",
)
# Their category word is the vendor's: no description rule, no non-clinical rule runs for them.
MEDITRAK_CONTRACT = frozenset({"meditrak", "meditrak_import"})
DIALECTS = tuple(
    name
    for name in available_dialects()
    if name in MEDITRAK_CONTRACT | {"splose", "bio_ecko", "citabox", "invoice_api"}
)


@dataclass(frozen=True)
class Score:
    """Where one dialect's served invoices landed, judged against the truth."""

    served: int
    clean_stored_to_the_cent: int
    expected_stored: int
    quarantined_with_reason: int
    expected_quarantined: int
    quarantined: int
    stored: int

    @property
    def precision(self) -> float:
        """Of the invoices quarantined, the share that are defects with their reason."""
        return self.quarantined_with_reason / self.quarantined if self.quarantined else 1.0

    @property
    def recall(self) -> float:
        """Of the defects, the share quarantined with their reason."""
        found = self.quarantined_with_reason
        return found / self.expected_quarantined if self.expected_quarantined else 1.0

    def line(self, name: str) -> str:
        return (
            f"{name}: {self.served} served; stored to the cent {self.clean_stored_to_the_cent}/"
            f"{self.expected_stored}; quarantined with reason {self.quarantined_with_reason}/"
            f"{self.expected_quarantined}; precision {self.precision:.1%}, recall "
            f"{self.recall:.1%}"
        )


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    options = SandboxOptions(
        # Enough defects that each dialect bills every kind of fee (six, in turn).
        invoices=300,
        seed=1414,
        defect_rate=0.25,
        dialects=DIALECTS,
        # Every kind each dialect can render (the server keeps only those it supports).
        defect_kinds=dict.fromkeys(DIALECTS, tuple(EXPECTED_REASON)),
    )
    with SandboxServer(options) as running:
        if "splose" in DIALECTS:
            splose = running.dialect("splose")
            assert isinstance(splose, SploseDialect)
            splose.rate_limit = 100_000
        yield running


def sync_one(server: SandboxServer, name: str, tmp: Path, **source: Any) -> str:
    """The store URL after one `connector sync` of the dialect, registry and links imported."""
    config, url = seeded_sandbox_config(server, name, tmp, **source)
    result = invoke_cli(config, "sync")
    assert result.exit_code == 0, result.output
    return url


def score(server: SandboxServer, name: str, url: str, stored_kinds: frozenset[str]) -> Score:
    """Precision and recall of one synced dialect; `stored_kinds` are defect kinds the config
    accepts on purpose (they are expected stored, to the cent, like clean invoices)."""
    dialect = server.dialect(name)
    key_of = getattr(dialect, "stored_key", dialect.vendor_id)
    truth = {key_of(inv): inv for inv in server.dataset(name).invoices}
    with Store(url) as store:
        stored = {inv.id: inv for inv in store.iter_invoices(name)}
        quarantined = {q.record_key: q for q in store.quarantine_entries(name)}
    expected_stored = {k for k, inv in truth.items() if inv.defect in (None, *stored_kinds)}
    expected_quarantined = set(truth) - expected_stored
    to_the_cent = {
        key
        for key in expected_stored & set(stored)
        if stored[key].total_amount == truth[key].total
        and sum(item.total for item in stored[key].items) == truth[key].total
    }
    with_reason = set()
    for key in expected_quarantined & set(quarantined):
        kind = truth[key].defect
        errors = {i.code.value for i in quarantined[key].issues if i.severity == "error"}
        if kind is not None and EXPECTED_REASON[kind] in errors:
            with_reason.add(key)
    assert set(stored) <= set(truth) and set(quarantined) <= set(truth)
    return Score(
        served=len(truth),
        clean_stored_to_the_cent=len(to_the_cent),
        expected_stored=len(expected_stored),
        quarantined_with_reason=len(with_reason),
        expected_quarantined=len(expected_quarantined),
        quarantined=len(quarantined),
        stored=len(stored),
    )


def assert_perfect(found: Score) -> None:
    assert found.clean_stored_to_the_cent == found.expected_stored == found.stored
    assert found.precision == found.recall == 1.0
    assert found.stored + found.quarantined == found.served


@pytest.mark.parametrize("name", DIALECTS)
def test_every_clean_invoice_is_stored_and_every_defect_quarantined_with_its_reason(
    server: SandboxServer, name: str, tmp_path: Path
) -> None:
    seeded = set(server.dataset(name).defects().values())
    # Every kind the dialect can render is seeded, the fee lines among them.
    assert seeded == set(server.dialect(name).supported_defects)
    fees = {item.fee for inv in server.dataset(name).invoices for item in inv.items if item.fee}
    assert fees == set(FEE_KINDS)
    found = score(server, name, sync_one(server, name, tmp_path), frozenset())
    print(found.line(name))
    assert_perfect(found)


def meditrak_fee_map(directory: Path, name: str) -> str:
    """A rules file mapping the fee words a MediTrak-contract vendor sends to consultation."""
    path = directory / "fee-rules.yaml"
    words = "".join(
        f"      {word}: consultation\n" for word in sorted(set(MEDITRAK_FEE_WORDS.values()))
    )
    path.write_text(f"version: 1\nsources:\n  {name}:\n    map:\n{words}", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("name", DIALECTS)
def test_with_a_non_clinical_category_fee_invoices_are_stored_to_the_cent(
    server: SandboxServer, name: str, tmp_path: Path
) -> None:
    if name in MEDITRAK_CONTRACT:
        source = {"category_rules": meditrak_fee_map(tmp_path, name)}
    else:
        source = {"non_clinical_category": "consultation"}
    url = sync_one(server, name, tmp_path, **source)
    found = score(server, name, url, frozenset({FEE_DEFECT}))
    print(found.line(f"{name} (fee lines accepted)"))
    assert_perfect(found)

    # Each fee line went to consultation by the operator's rule, and only the fee lines did.
    dialect = server.dialect(name)
    key_of = getattr(dialect, "stored_key", dialect.vendor_id)
    truth = {key_of(inv): inv for inv in server.dataset(name).invoices}
    if name in MEDITRAK_CONTRACT:
        fee_rules = {f"map:{name}/{word}" for word in MEDITRAK_FEE_WORDS.values()}
    else:
        fee_rules = {f"non-clinical:{kind}" for kind in NON_CLINICAL_RULE_NAMES}
    with Store(url) as store:
        for invoice in store.iter_invoices(name):
            placed = [item for item in invoice.items if item.category_rule in fee_rules]
            expected = sum(1 for item in truth[invoice.id].items if item.fee)
            assert len(placed) == expected, (invoice.id, invoice.items)
            assert all(item.category == "consultation" for item in placed)
