"""The one place a fully wired `Engine` is built for the CLI, the daemon and the demo.

`build_engine` loads the policy registry snapshot once, builds each source's category rules
(failing with one `ConfigError` that lists every problem of every rules file), and plugs the
policy resolution and checks into the engine. The registry check is always on here: with an
empty registry every invoice is quarantined as POLICY_UNKNOWN / POLICY_MISSING, which is
exactly what MediTrak would do with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from connector.errors import ConfigError
from connector.issues import Issue
from connector.mapping.kit import CategoryRules
from connector.model import Invoice
from connector.pipeline.categories import (
    Categorizer,
    RuleSet,
    categorizer_for,
    fallback_warnings,
    load_rule_set,
)
from connector.pipeline.engine import Engine
from connector.policies import PolicyChecker
from connector.settings import AppConfig, SourceConfig
from connector.store import Store
from connector.store.policies import load_registry


def build_categorizers(config: AppConfig) -> dict[str, Categorizer]:
    """Source name → its categorizer; every rules-file problem of every source at once."""
    problems: list[str] = []
    defaults: RuleSet | None = None
    try:
        defaults = load_rule_set()
    except ConfigError as exc:
        problems.extend(exc.problems)
    categorizers: dict[str, Categorizer] = {}
    if defaults is not None:
        for source in config.sources:
            try:
                categorizers[source.name] = categorizer_for(source, defaults)
            except ConfigError as exc:
                problems.extend(f"sources ({source.name}): {p}" for p in exc.problems)
    if problems:
        # The same default-file problem would be reported once per source: say it once.
        raise ConfigError(list(dict.fromkeys(problems)), origin="category rules")
    return categorizers


def policy_checker(config: AppConfig, store: Store) -> PolicyChecker:
    """The policy rules over the registry as it is now in the store."""
    return PolicyChecker(load_registry(store), config.policies.pattern)


def build_engine(config: AppConfig, store: Store, **engine_kwargs: Any) -> Engine:
    """An engine with category rules, policy resolution and the registry check wired in.

    `engine_kwargs` go to `Engine` (e.g. `transport_factory`) and may override the wiring.
    """
    categorizers = build_categorizers(config)
    checker = policy_checker(config, store)

    def categorize(source: SourceConfig) -> CategoryRules | None:
        found = categorizers.get(source.name)
        return found if found is not None else categorizer_for(source)

    def invoice_checks(invoice: Invoice) -> list[Issue]:
        return checker.check(invoice) + fallback_warnings(invoice)

    resolve: Callable[[Invoice], Invoice] = checker.resolve
    wired: dict[str, Any] = {
        "policy_check": invoice_checks,
        "categorize": categorize,
        "resolve_policy": resolve,
    }
    return Engine(config, store, **{**wired, **engine_kwargs})
