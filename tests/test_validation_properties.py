"""Property-based tests (hypothesis): validation and the policy check are total functions.

Any canonical invoice — statuses missing, odd Decimals (zero, negative, tiny, many places,
up to the mapping layer's amount ceiling), empty items, missing names and policies — is
either accepted, and then a valid MediTrak import record, or rejected with at least one
error-severity reason code. Neither step ever raises.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.issues import Issue, Reason, errors_only
from connector.mapping.types import MAX_AMOUNT
from connector.model import Category, ImportRecord, Invoice, InvoiceStatus, LineItem, Patient
from connector.pipeline.categories import FALLBACK_RULE, fallback_warnings, load_rule_set
from connector.pipeline.validation import normalized, validate_invoice
from connector.policies import PolicyChecker, PolicyRecord, RegistrySnapshot, Standing

POLICY_REASONS = {
    Reason.POLICY_MISSING,
    Reason.POLICY_FORMAT,
    Reason.POLICY_UNKNOWN,
    Reason.POLICY_INACTIVE,
}
REGISTRY = RegistrySnapshot(
    policies={
        "POL-1001": PolicyRecord("POL-1001", "John Doe", "active", None, None),
        "POL-1002": PolicyRecord("POL-1002", "Mary Moe", "active", date(2025, 1, 1), None),
        "POL-1003": PolicyRecord("POL-1003", None, "inactive", None, date(2025, 12, 31)),
        "POL-1004": PolicyRecord("POL-1004", "Ann", "active", None, date(2024, 12, 31)),
    },
    links={("src", "p-1"): "POL-1001", ("src", "p-2"): "POL-1003", ("src", "p-3"): "POL-9"},
)
CHECKER = PolicyChecker(REGISTRY)
RULES = load_rule_set()

# Money as sources really send it, plus anything a mapping bug could let through below the
# ceiling every mapping enforces (the model itself refuses NaN and infinities).
_BELOW_MAX = MAX_AMOUNT - Decimal("0.01")
odd_decimals = st.one_of(
    st.decimals(min_value=0, max_value=10_000, places=2),
    st.decimals(min_value=-10_000, max_value=10_000, places=4),
    st.decimals(min_value=-_BELOW_MAX, max_value=_BELOW_MAX, allow_nan=False),
    st.sampled_from(
        [
            Decimal(0),
            Decimal("0.00"),
            Decimal("-0.00"),
            _BELOW_MAX,
            Decimal("1E-30"),
            Decimal("1.005"),
            Decimal("12.50000"),
            Decimal("-3"),
        ]
    ),
)
texts = st.one_of(st.none(), st.just(""), st.just("   "), st.text(max_size=30))
policies = st.one_of(
    st.none(),
    st.sampled_from(["", " ", "POL-1001", "POL-1002", "POL-1003", "POL-1004", "POL-", "pol-1001"]),
    st.from_regex(r"POL-\d{1,8}", fullmatch=True),
    st.text(max_size=20),
)
dates = st.one_of(st.none(), st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 12, 31)))


@st.composite
def line_items(draw: st.DrawFn) -> LineItem:
    category = draw(st.one_of(st.none(), st.sampled_from(list(Category))))
    rule = draw(st.sampled_from([None, "exact:category", FALLBACK_RULE, "keyword:x/y"]))
    return LineItem(
        category=category,
        description=draw(texts),
        quantity=draw(odd_decimals),
        unit_price=draw(odd_decimals),
        total=draw(odd_decimals),
        source_category=draw(texts),
        category_rule=rule,
    )


@st.composite
def consistent_items(draw: st.DrawFn) -> LineItem:
    """Items whose arithmetic holds, so that accepted invoices are actually generated."""
    quantity = draw(st.sampled_from([Decimal(1), Decimal(2), Decimal("0.5"), Decimal(3)]))
    unit_price = draw(st.decimals(min_value=0, max_value=5_000, places=2))
    return LineItem(
        category=draw(st.sampled_from(list(Category))),
        description=draw(st.sampled_from(["X-Ray", "Consulta médica general", "Hemograma"])),
        quantity=quantity,
        unit_price=unit_price,
        total=(quantity * unit_price).quantize(Decimal("0.01")),
        category_rule=draw(st.sampled_from(["exact:category", FALLBACK_RULE])),
    )


@st.composite
def invoices(draw: st.DrawFn) -> Invoice:
    items = draw(
        st.one_of(
            st.lists(line_items(), max_size=4),
            st.lists(consistent_items(), min_size=1, max_size=3),
        )
    )
    consistent = draw(st.booleans())
    total = sum((i.total for i in items), Decimal(0)) if consistent and items else None
    if total is not None and not total.is_finite():
        total = None
    return Invoice(
        source=draw(st.sampled_from(["src", "other"])),
        id=draw(st.text(min_size=1, max_size=20)),
        invoice_number=draw(st.one_of(st.just("N-1"), texts)),
        invoice_date=draw(dates),
        total_amount=total if total is not None else draw(odd_decimals),
        paid_amount=draw(st.one_of(st.none(), odd_decimals)),
        currency=draw(st.sampled_from(["USD", "CRC", "INR"])),
        status=draw(st.one_of(st.none(), st.sampled_from(list(InvoiceStatus)))),
        source_status=draw(texts),
        facility=draw(texts),
        patient=Patient(
            name=draw(st.one_of(st.just("John Doe"), texts)),
            policy_number=draw(policies),
            source_ref=draw(st.one_of(st.none(), st.sampled_from(["p-1", "p-2", "p-3", "p-x"]))),
        ),
        items=tuple(items),
    )


def checks(invoice: Invoice) -> list[Issue]:
    return CHECKER.check(invoice) + fallback_warnings(invoice)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(invoices())
def test_any_invoice_is_accepted_or_has_an_error_reason(invoice: Invoice) -> None:
    resolved = CHECKER.resolve(invoice)
    issues = validate_invoice(resolved, checks)
    assert all(isinstance(i, Issue) and isinstance(i.code, Reason) for i in issues)
    errors = errors_only(issues)
    if errors:
        return
    # Accepted: the stored form is a valid MediTrak import record, with a registered policy.
    record = ImportRecord.model_validate(normalized(resolved).to_import_record())
    assert record.patient.policy_number in REGISTRY.policies
    assert all(item.category is not None for item in resolved.items)
    # Warnings never block: only a fallback category (CATEGORY_UNMAPPED) or candidate
    # policies that disagree (POLICY_CONFLICT) produce them.
    for issue in issues:
        assert issue.severity == "warning"
        assert issue.code in (Reason.CATEGORY_UNMAPPED, Reason.POLICY_CONFLICT)
        if issue.code is Reason.POLICY_CONFLICT:
            assert len({c.number for c in resolved.patient.policy_candidates}) > 1


@settings(max_examples=400, deadline=None)
@given(invoices())
def test_policy_check_never_raises_and_only_reports_policy_reasons(invoice: Invoice) -> None:
    resolved = CHECKER.resolve(invoice)
    all_issues = CHECKER.check(resolved)
    issues = errors_only(all_issues)
    assert len(issues) <= 1
    assert all(i.code in POLICY_REASONS for i in issues)
    # The only warning: candidates that disagree (here the record's policy and the link).
    warnings = [i for i in all_issues if i.severity == "warning"]
    disagree = len({c.number for c in resolved.patient.policy_candidates}) > 1
    assert [w.code for w in warnings] == ([Reason.POLICY_CONFLICT] if disagree else [])
    number = (resolved.patient.policy_number or "").strip()
    if not issues:
        policy = REGISTRY.policies[number]
        assert policy.status == "active"
        assert resolved.invoice_date is None or policy.valid_on(resolved.invoice_date)
    elif not number:
        assert issues[0].code is Reason.POLICY_MISSING
    # Resolution only chooses among the record's policy and the link (docs/sources.md):
    # nothing else about the invoice changes, and an active candidate is never passed over.
    sent = (invoice.patient.policy_number or "").strip()
    ref = invoice.patient.source_ref
    linked = REGISTRY.links.get((invoice.source, ref)) if ref else None
    offered = {n for n in (sent, linked) if n}
    if not offered:
        assert resolved == invoice
        return
    assert number in offered
    billed = invoice.patient.model_copy(update={"policy_number": number})
    assert resolved.model_dump() == invoice.model_copy(update={"patient": billed}).model_dump()
    active = [n for n in offered if CHECKER.standing(n, invoice.invoice_date) is Standing.ACTIVE]
    if active:
        assert not issues
    if linked in active:
        assert number == linked


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), st.one_of(st.none(), st.text(max_size=30)))
def test_categorizer_is_total(description: str, word: str | None) -> None:
    match = RULES.categorizer(["bio_ecko"])(word, description)
    # Every category comes with the rule that gave it; no category comes with no rule, or with
    # the non-clinical rule that left the line unmapped on purpose (named in its message).
    if match.category is not None:
        assert match.rule is not None
    else:
        assert match.rule is None or match.rule.startswith("non-clinical:")


def test_amounts_beyond_decimal_precision_are_reported_not_raised() -> None:
    item = LineItem(
        category=Category.LABORATORY,
        description="Hemograma",
        quantity=Decimal("0.01"),
        unit_price=Decimal("1E+40"),
        total=Decimal("0.00"),
    )
    invoice = Invoice(
        source="src",
        id="1",
        invoice_number="N-1",
        invoice_date=date(2025, 1, 1),
        total_amount=Decimal("0.00"),
        currency="USD",
        status=InvoiceStatus.PAID,
        source_status="paid",
        patient=Patient(name="John Doe", policy_number="POL-1001"),
        items=(item,),
    )
    codes = {i.code for i in validate_invoice(invoice, checks)}
    assert Reason.AMOUNT_INVALID in codes
