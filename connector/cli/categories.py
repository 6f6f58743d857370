"""`connector categories explain`: which category rule places an item, and every rule tried."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from connector.cli.common import err, load, out, state
from connector.errors import ConfigError
from connector.pipeline.categories import Categorizer, categorizer_for, load_rule_set
from connector.sources.discovery import source_types

commands = typer.Typer(
    name="categories", help="Category rules: see which rule places an item.", no_args_is_help=True
)


def _explain_categorizer(source: str | None, rules: Path | None) -> Categorizer:
    if source is not None and state.config_path.exists():
        config = load()
        try:
            configured = config.source(source)
        except ConfigError:
            configured = None
        if configured is not None:
            if rules is not None:
                configured = configured.model_copy(update={"category_rules": str(rules)})
            return categorizer_for(configured)
    rule_set = load_rule_set(rules)
    known_keys = sorted({*rule_set.source_keys(), *source_types()})
    if source is not None and source not in known_keys:
        known = ", ".join(known_keys)
        raise ConfigError(
            [
                f"no configured source {source!r}, and the rules know no source by that name "
                f"(source types and rules keys: {known})"
            ],
            origin="categories explain",
        )
    return rule_set.categorizer([source] if source else [])


@commands.command("explain")
def categories_explain(
    text: Annotated[str, typer.Argument(help="The item description to categorise.")],
    source: Annotated[
        str | None,
        typer.Option("--source", "-s", help="Source name (from the config) or type."),
    ] = None,
    word: Annotated[
        str | None,
        typer.Option("--word", "-w", help="The vendor's code / item type / department."),
    ] = None,
    rules: Annotated[
        Path | None, typer.Option("--rules", help="An extra rules file to try in front.")
    ] = None,
) -> None:
    """Print which category rule would place TEXT, and every rule tried before it."""
    try:
        categorizer = _explain_categorizer(source, rules)
    except ConfigError as exc:
        err.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(2) from None
    explanation = categorizer.explain(word, text)
    said = f", word {word!r}" if word is not None else ""
    out.print(f"{text!r}{said} (rules for {categorizer.label})", highlight=False, markup=False)
    for step in explanation.steps:
        mark = "MATCH" if step.matched else "  -  "
        out.print(f"  {mark}  {step.rule:<44} {step.detail}", highlight=False, markup=False)
    match = explanation.match
    if match.category is None:
        out.print("=> no category: CATEGORY_UNMAPPED (quarantined)", highlight=False)
        raise typer.Exit(1)
    out.print(f"=> {match.category.value}  (rule {match.rule})", highlight=False, markup=False)
