"""The command tree is built in one visible place: `connector.cli.app.COMMAND_MODULES` lists
every command module, each module keeps its commands on its own `typer.Typer`, and the tree
(names and order in `connector --help`) is the one operators know."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import typer
import typer.main

import connector.cli
from connector.cli.app import COMMAND_MODULES, get_app

TOP_LEVEL = (
    "sync",
    "status",
    "export",
    "sandbox",
    "demo",
    "reprocess",
    "run",
    "backfill",
    "backfill-status",
    "serve",
    "validate",
    "report",
    "categories",
    "policies",
    "quarantine",
    "config",
    "schema",
    "mapping",
)
GROUPS = {
    "categories": ("explain",),
    "policies": ("import", "link", "list"),
    "quarantine": ("list", "show", "reasons"),
    "config": ("check",),
    "serve": ("hash-key",),
    "mapping": ("check",),
}


def test_the_tree_has_every_command_in_the_order_help_lists_them() -> None:
    root = typer.main.get_command(get_app())
    assert isinstance(root, typer.core.TyperGroup)
    assert tuple(root.commands) == TOP_LEVEL
    for group, subcommands in GROUPS.items():
        command = root.commands[group]
        assert isinstance(command, typer.core.TyperGroup)
        assert tuple(command.commands) == subcommands


def test_every_module_with_commands_is_in_the_one_list() -> None:
    with_commands = set()
    for info in pkgutil.iter_modules(connector.cli.__path__, "connector.cli."):
        module = importlib.import_module(info.name)
        if isinstance(getattr(module, "commands", None), typer.Typer):
            with_commands.add(module)
    assert with_commands == set(COMMAND_MODULES)


def test_no_command_module_registers_itself_or_probes_for_modules() -> None:
    for path in Path(connector.cli.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        attributes = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)} | {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        assert "find_spec" not in attributes, path
        if path.name != "app.py":
            # Only the tree builder adds commands to the root or knows it.
            assert "add_typer" not in attributes, path
            assert "connector.cli.app" not in imported, path


def test_python_dash_m_connector_is_the_same_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "connector", "--help"],
        capture_output=True,
        text=True,
        env={"COLUMNS": "200", "NO_COLOR": "1", "PATH": ""},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    listed = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("│ ")]
    assert [name for name in listed if name in TOP_LEVEL] == list(TOP_LEVEL)
