"""Deterministic "truth" invoices behind every sandbox dialect.

A dataset is generated from (n, seed, options) alone, so tests and benchmarks can predict exactly
what the fake vendors serve; defects are only recorded here and applied by each dialect when it
renders, so the truth itself always stays clean.
"""

from __future__ import annotations

import gc
import random
import threading
import zlib
from bisect import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

CANONICAL_STATUSES: tuple[str, ...] = ("paid", "unpaid", "pending", "void")

# Defect kind -> the reason code the connector's validation is expected to report for it.
# What a line with the `unknown_category` defect is called: no category rule may claim it, and
# no non-clinical rule either (a source's `non_clinical_category` would then place it), so the
# defect stays a defect however good the rules get.
UNCATEGORISABLE_DESCRIPTION = "Miscellaneous item"

EXPECTED_REASON: dict[str, str] = {
    "unknown_category": "CATEGORY_UNMAPPED",
    "item_total_mismatch": "ITEM_TOTAL_MISMATCH",
    "no_items": "NO_ITEMS",
    "three_decimal_amount": "MONEY_PRECISION",
    "missing_invoice_number": "FIELD_MISSING",
    "bad_date": "FIELD_INVALID",
    "unknown_status": "STATUS_UNMAPPED",
    "invoice_total_mismatch": "INVOICE_TOTAL_MISMATCH",
    "unregistered_policy": "POLICY_UNKNOWN",
    # A fee, surcharge, voucher or admin / report charge: MediTrak has no category for it, so the
    # connector leaves it unmapped unless the source sets `non_clinical_category`.
    "non_clinical_line": "CATEGORY_UNMAPPED",
}

# The truth category of a non-clinical line: none of MediTrak's ten (`SandboxItem.fee` says
# which charge it is; each dialect words it in its vendor's own language).
NON_CLINICAL_CATEGORY = "non_clinical"
# Non-clinical charge kind -> (MediTrak-style English wordings, low and high price in cents, and
# whether the charge is billed alone: a no-show invoice bills only the fee, a surcharge or a
# report rides on the services it belongs to).
FEES: dict[str, tuple[tuple[str, ...], int, int, bool]] = {
    "cancellation": (("Late Cancellation Fee", "Cancellation Fee"), 3000, 9000, True),
    "missed_appointment": (("Missed Appointment Fee", "No-Show Fee"), 4000, 12000, True),
    "surcharge": (("Credit Card Surcharge", "After Hours Surcharge"), 200, 3500, False),
    "gift_voucher": (("Gift Voucher", "Gift Card"), 5000, 20000, True),
    "admin": (("Administration Fee", "Admin Fee"), 1000, 5000, False),
    "report_writing": (("Medical Report Fee", "Report Writing Fee"), 5000, 30000, False),
}
FEE_KINDS: tuple[str, ...] = tuple(FEES)

# The ten MediTrak item categories with descriptions and a plausible unit price range in cents.
CATEGORIES: dict[str, tuple[tuple[str, ...], int, int]] = {
    "consultation": (
        ("General Consultation", "Specialist Consultation", "Follow-up Visit"),
        2500,
        45000,
    ),
    "laboratory": (
        ("Full Blood Count", "Malaria Test", "HIV Test", "Urinalysis", "Lipid Panel"),
        500,
        15000,
    ),
    "radiology": (("X-Ray", "Ultrasound", "MRI Scan", "CT Scan"), 6000, 90000),
    "pharmacy": (("Antibiotics", "Pain Medication", "Insulin", "Antihistamines"), 500, 12000),
    "emergency": (("Emergency Room Fee", "Trauma Care", "Ambulance Transfer"), 15000, 90000),
    "surgery": (("Minor Surgery", "Wound Care", "Sutures", "Abscess Drainage"), 8000, 90000),
    "dental": (("Tooth Extraction", "Cleaning", "Root Canal", "Filling"), 4000, 60000),
    "physiotherapy": (("Physiotherapy Session", "Rehabilitation", "Sports Massage"), 3000, 20000),
    "obstetrics": (("Prenatal Care", "Ultrasound", "Delivery", "Postnatal Check"), 5000, 90000),
    "optical": (("Eye Exam", "Glasses", "Contact Lenses"), 2000, 40000),
}
_CATEGORY_NAMES = tuple(CATEGORIES)
_N_CATEGORIES = len(_CATEGORY_NAMES)

FACILITIES: tuple[str, ...] = (
    "CFB Medical Hospital",
    "Riverside Family Clinic",
    "St. Anne's Medical Centre",
    "Northgate Health Practice",
    "Lakeview Specialist Clinic",
    "Harbour Street Surgery",
)

_FIRST_NAMES = (
    "John", "Mary", "James", "Patricia", "Robert", "Jennifer", "Michael", "Linda", "David",
    "Elizabeth", "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah",
    "Charles", "Karen", "Daniel", "Nancy", "Matthew", "Lisa", "Anthony", "Margaret", "Mark",
    "Sandra", "Grace", "Samuel", "Amina", "Kwame", "Fatima", "Peter", "Ruth", "Brian", "Esther",
    "Kevin", "Joyce", "George",
)  # fmt: skip
_LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Wilson",
    "Anderson", "Taylor", "Thomas", "Moore", "Jackson", "Martin", "Lee", "Thompson", "White",
    "Harris", "Clark", "Lewis", "Walker", "Hall", "Young", "King", "Wright", "Scott", "Green",
    "Baker", "Adams", "Mensah", "Okafor", "Mwangi", "Nelson", "Carter", "Mitchell", "Roberts",
    "Turner", "Phillips", "Campbell",
)  # fmt: skip

_STATUS_WEIGHTS = {"paid": 55, "unpaid": 30, "pending": 10, "void": 5}
_QUANTITIES = (Decimal(1), Decimal(2), Decimal(3))
_QUANTITY_CUMULATIVE = (0.7, 0.9)  # 70 % one, 20 % two, 10 % three
_QUANTITY_COPIES = (7, 2, 1)  # the same weights for the generated price list
_PRICES_PER_DESCRIPTION = 12
_ITEM_COUNT_WEIGHTS = (45, 30, 15, 10)  # 1..4 items

_YEAR_START = date(2025, 1, 1)
_YEAR_DAYS = 365
_EPOCH_2025 = datetime(2025, 1, 1, tzinfo=UTC)
# Generated updates stay well before "now" so that a mutation (stamped with the wall clock) is
# always the newest change an incremental sync can see.
_MAX_UPDATE_LAG_S = 20 * 86400
_SHARED_SECOND_RATE = 0.02
_CENT = Decimal("0.01")


@dataclass(slots=True)
class SandboxItem:
    """One invoice line as the truth knows it."""

    category: str
    description: str
    quantity: Decimal
    unit_price: Decimal
    # The non-clinical charge kind (a key of FEES) of a fee line, None for a clinical service.
    fee: str | None = None


def fee_wording(choices: Sequence[str], key: str) -> str:
    """One of a dialect's wordings for a fee line, chosen by `key` (the invoice id) so that
    every render of the invoice agrees."""
    return choices[zlib.crc32(key.encode()) % len(choices)]


def item_total(item: SandboxItem) -> Decimal:
    """Quantity times unit price, rounded to cents."""
    return (item.quantity * item.unit_price).quantize(_CENT)


@dataclass(slots=True)
class SandboxInvoice:
    """One invoice of the truth; `defect` says how dialects must corrupt it when rendering."""

    id: str
    number: str
    invoice_date: date
    updated_at: datetime
    status: str
    facility: str
    patient_ref: str
    patient_name: str
    policy_number: str
    policy_registered: bool
    items: list[SandboxItem]
    defect: str | None = None

    @property
    def total(self) -> Decimal:
        return sum((item_total(item) for item in self.items), Decimal("0.00"))


@dataclass(frozen=True, slots=True)
class _Patient:
    ref: str
    name: str
    policy_number: str


def _utc_now_seconds() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@dataclass
class Dataset:
    """The invoices one dialect serves, ordered by id, safe to change from any thread."""

    invoices: list[SandboxInvoice]
    seed: int
    currency: str = "USD"
    id_prefix: str = "INV-"
    id_width: int = 6
    statuses: tuple[str, ...] = CANONICAL_STATUSES
    patients: list[_Patient] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Bumped on every change so that dialects can cache filtered views safely.
    version: int = 0
    _by_id: dict[str, SandboxInvoice] = field(default_factory=dict, repr=False)
    _next_number: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        self._by_id = {inv.id: inv for inv in self.invoices}
        self._next_number = len(self.invoices) + 1
        if not self.patients:
            self.patients = [_Patient("PAT-0001", "John Doe", "POL-456789")]
        # Separate stream so add() stays deterministic without disturbing generation.
        self._rng = random.Random(self.seed ^ 0x5EED)

    def __len__(self) -> int:
        return len(self.invoices)

    def __iter__(self) -> Iterator[SandboxInvoice]:
        return iter(self.invoices)

    def get(self, invoice_id: str) -> SandboxInvoice | None:
        return self._by_id.get(invoice_id)

    def ids(self) -> list[str]:
        with self.lock:
            return [inv.id for inv in self.invoices]

    def max_updated_at(self) -> datetime:
        with self.lock:
            return max((inv.updated_at for inv in self.invoices), default=_EPOCH_2025)

    def _stamp(self) -> datetime:
        # Never go backwards: an incremental sync using `>= watermark` must see every change.
        newest = max((inv.updated_at for inv in self.invoices), default=_EPOCH_2025)
        return max(_utc_now_seconds(), newest)

    def mutate(self, invoice_id: str) -> SandboxInvoice:
        """Make a real content change (first item's price) and bump `updated_at`."""
        with self.lock:
            invoice = self._by_id.get(invoice_id)
            if invoice is None:
                raise KeyError(invoice_id)
            if invoice.items:
                first = invoice.items[0]
                bump = Decimal(self._rng.randint(100, 5000)).scaleb(-2)
                first.unit_price = (first.unit_price + bump).quantize(_CENT)
            else:
                invoice.items.append(_make_item(self._rng))
            invoice.updated_at = self._stamp()
            self.version += 1
            return invoice

    def add(self) -> SandboxInvoice:
        """Append a new clean invoice with the next id, updated now."""
        with self.lock:
            number = self._next_number
            self._next_number += 1
            now = self._stamp()
            patient = self.patients[self._rng.randrange(len(self.patients))]
            invoice = SandboxInvoice(
                id=f"{self.id_prefix}{number:0{self.id_width}d}",
                number=f"{now.year}-{number:06d}",
                invoice_date=now.date(),
                updated_at=now,
                status=_pick_status(self._rng, self.statuses),
                facility=FACILITIES[self._rng.randrange(len(FACILITIES))],
                patient_ref=patient.ref,
                patient_name=patient.name,
                policy_number=patient.policy_number,
                policy_registered=True,
                items=[_make_item(self._rng) for _ in range(_pick_item_count(self._rng))],
            )
            self.invoices.append(invoice)
            self._by_id[invoice.id] = invoice
            self.version += 1
            return invoice

    def delete(self, invoice_id: str) -> None:
        with self.lock:
            invoice = self._by_id.pop(invoice_id)
            self.invoices.remove(invoice)
            self.version += 1

    def defects(self) -> dict[str, str]:
        """Invoice id -> defect kind, for every defective invoice currently served."""
        with self.lock:
            return {inv.id: inv.defect for inv in self.invoices if inv.defect is not None}

    def registry_rows(self) -> list[dict[str, str]]:
        """The MediTrak policy registry: one active row per registered policy in use."""
        with self.lock:
            holders: dict[str, str] = {}
            for inv in self.invoices:
                if inv.policy_registered:
                    holders.setdefault(inv.policy_number, inv.patient_name)
        return [
            {
                "policy_number": number,
                "holder_name": holders[number],
                "status": "active",
                "valid_from": "2020-01-01",
                "valid_to": "2030-12-31",
            }
            for number in sorted(holders)
        ]


def _pick_status(rng: random.Random, statuses: Sequence[str]) -> str:
    weights = [_STATUS_WEIGHTS.get(s, 5) for s in statuses]
    return rng.choices(statuses, weights)[0]


def _pick_item_count(rng: random.Random) -> int:
    return rng.choices((1, 2, 3, 4), _ITEM_COUNT_WEIGHTS)[0]


def _make_item(rng: random.Random) -> SandboxItem:
    # random() arithmetic instead of randrange(): randrange is ~5x slower and dominates the cost
    # of generating 100k invoices.
    rand = rng.random
    category = _CATEGORY_NAMES[int(rand() * _N_CATEGORIES)]
    descriptions, low, high = CATEGORIES[category]
    return SandboxItem(
        category=category,
        description=descriptions[int(rand() * len(descriptions))],
        quantity=_QUANTITIES[bisect(_QUANTITY_CUMULATIVE, rand())],
        unit_price=Decimal(low + int(rand() * (high - low + 1))) * _CENT,
    )


def _make_patients(rng: random.Random, count: int) -> list[_Patient]:
    width = max(4, len(str(count)))
    # Registered policies come from 100000-899999; unregistered ones use 900000+ so they can
    # never collide with a patient's real policy.
    policies = rng.sample(range(100000, 900000), count)
    return [
        _Patient(
            ref=f"PAT-{i + 1:0{width}d}",
            name=f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}",
            policy_number=f"POL-{policies[i]}",
        )
        for i in range(count)
    ]


def _item_templates(rng: random.Random) -> list[tuple[str, str, Decimal, Decimal]]:
    """A price list: (category, description, quantity, unit price) rows to draw items from.

    Clinics bill from price lists, and drawing from a prepared list keeps generation of 100k
    invoices fast (no Decimal construction per item). Quantities are repeated to weight them.
    """
    templates: list[tuple[str, str, Decimal, Decimal]] = []
    for category, (descriptions, low, high) in CATEGORIES.items():
        for description in descriptions:
            for _ in range(_PRICES_PER_DESCRIPTION):
                price = Decimal(rng.randint(low, high)) * _CENT
                for quantity, copies in zip(_QUANTITIES, _QUANTITY_COPIES, strict=True):
                    templates.extend([(category, description, quantity, price)] * copies)
    return templates


def generate_dataset(
    n: int,
    seed: int,
    *,
    defect_rate: float = 0.05,
    defect_kinds: Sequence[str],
    currency: str = "USD",
    id_prefix: str = "INV-",
    statuses: Sequence[str] = CANONICAL_STATUSES,
) -> Dataset:
    """Build `n` invoices, fully determined by the arguments.

    Each invoice independently becomes defective with probability `defect_rate`; the kinds are
    handed out round-robin over `defect_kinds` so that every kind shows up in small datasets.
    `statuses` restricts the canonical statuses generated (e.g. a dialect that cannot say "void").
    """
    unknown = [kind for kind in defect_kinds if kind not in EXPECTED_REASON]
    if unknown:
        raise ValueError(f"unknown defect kinds: {unknown}")
    if not statuses or any(s not in CANONICAL_STATUSES for s in statuses):
        raise ValueError(f"statuses must be a non-empty subset of {CANONICAL_STATUSES}")
    # The loop only allocates objects that live as long as the dataset, so cyclic GC passes
    # triggered by the allocation count are pure overhead (about a third of the time at 100k).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        invoices, patients = _generate_invoices(
            n, random.Random(seed), defect_rate, tuple(defect_kinds), id_prefix, tuple(statuses)
        )
    finally:
        if gc_was_enabled:
            gc.enable()
    return Dataset(
        invoices=invoices,
        seed=seed,
        currency=currency,
        id_prefix=id_prefix,
        id_width=_id_width(n),
        statuses=tuple(statuses),
        patients=patients,
    )


def _id_width(n: int) -> int:
    return max(6, len(str(n)))


def _generate_invoices(
    n: int,
    rng: random.Random,
    defect_rate: float,
    kinds: tuple[str, ...],
    id_prefix: str,
    statuses: tuple[str, ...],
) -> tuple[list[SandboxInvoice], list[_Patient]]:
    rand = rng.random
    patients = _make_patients(rng, max(1, n // 4))
    n_patients = len(patients)
    templates = _item_templates(rng)
    n_templates = len(templates)
    width = _id_width(n)

    # Invoice dates rise with the id, as a real billing system numbers them.
    day_offsets = sorted(int(rand() * _YEAR_DAYS) for _ in range(n))
    statuses_drawn = rng.choices(statuses, [_STATUS_WEIGHTS[s] for s in statuses], k=n)
    item_counts = rng.choices((1, 2, 3, 4), _ITEM_COUNT_WEIGHTS, k=n)
    dates = [_YEAR_START + timedelta(days=d) for d in range(_YEAR_DAYS)]
    # Issued during office hours (from 08:00), then updated up to ~20 days later.
    day_starts = [_EPOCH_2025 + timedelta(days=d, seconds=28800) for d in range(_YEAR_DAYS)]
    n_facilities = len(FACILITIES)
    defects_given = 0

    invoices: list[SandboxInvoice] = []
    append = invoices.append
    for i in range(n):
        offset = day_offsets[i]
        patient = patients[int(rand() * n_patients)]
        defect: str | None = None
        if kinds and rand() < defect_rate:
            defect = kinds[defects_given % len(kinds)]
            defects_given += 1
        policy_number = patient.policy_number
        registered = True
        if defect == "unregistered_policy":
            # A fresh number outside the patients' range: only this invoice is affected.
            policy_number = f"POL-{900000 + defects_given % 100000}"
            registered = False
        number = i + 1
        append(
            SandboxInvoice(
                f"{id_prefix}{number:0{width}d}",
                f"2025-{number:06d}",
                dates[offset],
                day_starts[offset] + timedelta(seconds=int(rand() * _MAX_UPDATE_LAG_S)),
                statuses_drawn[i],
                FACILITIES[int(rand() * n_facilities)],
                patient.ref,
                patient.name,
                policy_number,
                registered,
                [SandboxItem(*templates[int(rand() * n_templates)]) for _ in range(item_counts[i])],
                defect,
            )
        )

    # A few invoices deliberately share their update second with a neighbour: keyset or
    # watermark logic that assumes unique timestamps must not lose one of them.
    for i in range(1, n):
        if rand() < _SHARED_SECOND_RATE:
            prev, cur = invoices[i - 1], invoices[i]
            shared = max(prev.updated_at, cur.updated_at)
            prev.updated_at = cur.updated_at = shared
    # Last, so that drawing the fees leaves every other invoice as it would be without them.
    add_fee_lines(invoices, rng)
    return invoices, patients


def add_fee_lines(invoices: Sequence[SandboxInvoice], rng: random.Random) -> None:
    """Give every `non_clinical_line` invoice its fee, the kinds in turn: a charge billed alone
    replaces the services, the others are added after them."""
    given = 0
    for invoice in invoices:
        if invoice.defect != "non_clinical_line":
            continue
        kind = FEE_KINDS[given % len(FEE_KINDS)]
        given += 1
        wordings, low, high, alone = FEES[kind]
        fee = SandboxItem(
            NON_CLINICAL_CATEGORY,
            wordings[rng.randrange(len(wordings))],
            Decimal(1),
            Decimal(rng.randint(low, high)) * _CENT,
            kind,
        )
        invoice.items = [fee] if alone else [*invoice.items, fee]
