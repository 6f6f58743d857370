"""What `connector validate` plugs into the engine's record processor: the category rules and
the policy check of `connector sync` (`connector.pipeline.wiring`), read from the store without
writing, and how much of the policy registry there was to check against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from connector.issues import Issue, Reason
from connector.mapping.kit import CategoryRules
from connector.model import Invoice
from connector.pipeline import wiring
from connector.pipeline.categories import fallback_warnings
from connector.pipeline.engine import RecordProcessor
from connector.pipeline.validation import PolicyCheck
from connector.policies import PolicyChecker, RegistrySnapshot
from connector.settings import AppConfig, SourceConfig
from connector.store import Store


@dataclass
class Checks:
    """What validation plugs into the record processor, and how the registry was found."""

    categorize: CategoryRules | None
    policy_check: PolicyCheck | None
    resolve_policy: Callable[[Invoice], Invoice] | None
    registry_policies: int
    registry_links: int
    registry_checked: bool
    notes: list[str] = field(default_factory=list)
    # The registry's rules, for the report's policy-resolution decisions (candidate standings).
    policy_checker: PolicyChecker | None = None


def build_checks(config: AppConfig, source: SourceConfig, store: Store | None) -> Checks:
    """Category rules and policy checks as `connector sync` wires them
    (`connector.pipeline.wiring`), read from the store without writing.

    With an empty (or absent) registry, policy numbers are checked for presence and format
    only: a vendor running this in its own CI has no copy of MediTrak's registry, and "every
    policy unknown" would hide every real finding."""
    notes: list[str] = []
    categorizers = wiring.build_categorizers(config)
    snapshot = RegistrySnapshot()
    readable = store is not None
    if store is not None:
        try:
            snapshot = wiring.policy_checker(config, store).snapshot
        except Exception as exc:  # an old or foreign store must not stop a dry run
            readable = False
            notes.append(
                f"policy registry unreadable ({type(exc).__name__}): policy numbers checked "
                "for presence and format only"
            )
    else:
        notes.append("no store yet: policy numbers checked for presence and format only")
    checker = PolicyChecker(snapshot, config.policies.pattern)
    checked = bool(snapshot.policies)
    if readable and not checked:
        notes.append(
            "the policy registry is empty: policy numbers checked for presence and format only "
            "(import it with `connector policies import` to check them against MediTrak's)"
        )

    def policy_check(invoice: Invoice) -> list[Issue]:
        issues = checker.check(invoice)
        if not checked:
            issues = [i for i in issues if i.code is not Reason.POLICY_UNKNOWN]
        return issues + fallback_warnings(invoice)

    return Checks(
        categorizers.get(source.name),
        policy_check,
        checker.resolve,
        len(snapshot.policies),
        len(snapshot.links),
        checked,
        notes,
        checker,
    )


def record_processor(source: SourceConfig, checks: Checks) -> RecordProcessor:
    """The engine's own processor for the source, with validate's checks plugged in."""
    return RecordProcessor.for_source(
        source,
        categorize=checks.categorize,
        policy_check=checks.policy_check,
        resolve_policy=checks.resolve_policy,
    )
