"""The layering of the code, checked on its import graph.

Every `import` statement counts, wherever it is written (module top, function body or a
`TYPE_CHECKING` block): a circle hidden in a function is still a circle. Packages import only
downward, in the order of `LAYERS`; vendor files (`adapters/`, `mappings/`) sit on the layers
they need and nothing of the project imports them by name (discovery finds them).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("connector", "adapters", "mappings")

# Highest first. A module may import modules of its own layer group and of any group below it.
# Groups in one tuple are side by side: they may not import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("connector.__main__",),
    ("connector.cli",),
    ("connector.daemon",),
    # The HTTP server: below the daemon, which can host it (`connector.serve.host`).
    ("connector.serve",),
    # Tools over the whole stack: integration reports and the fake vendor APIs.
    ("connector.validate", "connector.reports", "connector.sandbox"),
    ("connector.config",),
    ("connector.pipeline",),
    ("connector.sources", "connector.store"),
    # The domain: pure code over the canonical model (the mapping kit, the policy registry).
    ("connector.mapping", "connector.policies"),
    # Leaves: settings, vocabulary, errors, logging; each imports at most the ones below it.
    ("connector.settings", "connector.logging"),
    ("connector.errors", "connector.schedule", "connector.masking"),
    ("connector.issues", "connector.model", "connector.runtime"),
)
# Vendor code: its layer and what it may import.
VENDOR_ALLOWED = {
    "adapters": (
        "connector.sources",
        "connector.mapping",
        "connector.settings",
        "connector.errors",
        "connector.issues",
        "connector.model",
        "mappings",
    ),
    "mappings": (
        "connector.mapping",
        "connector.model",
        "connector.errors",
        "connector.issues",
        "connector.settings",
        "mappings",
    ),
}


def project_modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    module = node.module or ""
                # `from package import submodule` is an import of the submodule.
                targets = [
                    f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module
                    for alias in node.names
                ]
            for target in targets:
                # `import a.b.c` also runs a and a.b: the nearest project module counts.
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
        graph.setdefault(name, set())
    return graph


def _group(module: str) -> tuple[int, str] | None:
    for level, groups in enumerate(LAYERS):
        for group in groups:
            if module == group or module.startswith(group + "."):
                return level, group
    return None


def test_every_module_of_connector_has_a_layer() -> None:
    unplaced = [m for m in project_modules() if m.startswith("connector.") and _group(m) is None]
    assert unplaced == []


def test_there_is_no_import_circle() -> None:
    graph = import_graph()
    circles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                circles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert circles == [], "\n".join(" -> ".join(c) for c in circles)


def test_imports_point_only_down_the_layers() -> None:
    wrong = []
    for module, targets in import_graph().items():
        if module.startswith(("adapters", "mappings")):
            allowed = VENDOR_ALLOWED[module.partition(".")[0]]
            wrong += [
                f"{module} -> {t}" for t in targets if not t.startswith(allowed) and t != module
            ]
            continue
        here = _group(module)
        if here is None:
            continue
        for target in targets:
            if target.startswith(("adapters", "mappings")):
                wrong.append(f"{module} -> {target} (vendor code is found by discovery)")
                continue
            there = _group(target)
            if there is None:
                continue
            if there[0] < here[0] or (there[0] == here[0] and there[1] != here[1]):
                wrong.append(f"{module} -> {target}")
    assert wrong == [], "\n".join(sorted(wrong))


MAX_MODULE_LINES = 700


def test_no_module_is_over_700_lines() -> None:
    """Big mixed modules were split by job (validate, store, CLI): keep them that way."""
    sizes = {
        name: len(path.read_text(encoding="utf-8").splitlines())
        for name, path in project_modules().items()
    }
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def test_no_project_module_is_treated_as_optional() -> None:
    """The project's own modules are imported, never probed: a missing one is a broken
    install that must fail loudly, not a feature quietly switched off."""
    probing = []
    for name, path in project_modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "find_spec":
                probing.append(f"{name}: find_spec")
            if (
                isinstance(node, ast.ExceptHandler)
                and isinstance(node.type, ast.Name)
                and node.type.id in ("ImportError", "ModuleNotFoundError")
            ):
                probing.append(f"{name}: except {node.type.id}")
    assert probing == []
