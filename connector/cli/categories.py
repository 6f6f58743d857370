"""`connector categories explain`: which category rule places an item, every rule tried, the
keyword, stem or lexicon entry that fired, and which rule won over which (precedence)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from connector.cli.common import err, load, out, state
from connector.errors import ConfigError
from connector.model import Category
from connector.pipeline.categories import Categorizer, categorizer_for, load_rule_set
from connector.sources.discovery import source_types

commands = typer.Typer(
    name="categories", help="Category rules: see which rule places an item.", no_args_is_help=True
)


def _explain_categorizer(
    source: str | None, rules: Path | None, non_clinical: Category | None
) -> Categorizer:
    if source is not None and state.config_path.exists():
        config = load()
        try:
            configured = config.source(source)
        except ConfigError:
            configured = None
        if configured is not None:
            changes: dict[str, object] = {}
            if rules is not None:
                changes["category_rules"] = str(rules)
            if non_clinical is not None:
                changes["non_clinical_category"] = non_clinical
            return categorizer_for(configured.model_copy(update=changes))
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
    return rule_set.categorizer([source] if source else [], non_clinical_category=non_clinical)


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
    non_clinical: Annotated[
        Category | None,
        typer.Option(
            "--non-clinical-category",
            help="Try a source setting `non_clinical_category` (where fees and other "
            "non-clinical lines go).",
        ),
    ] = None,
) -> None:
    """Print which category rule would place TEXT, every rule tried, how each keyword matched
    (same word, plural/gender, English/Spanish stem, lexicon entry) and which rule won."""
    try:
        categorizer = _explain_categorizer(source, rules, non_clinical)
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
        why = f" by rule {match.rule}" if match.rule else ""
        out.print(
            f"=> no category{why}: CATEGORY_UNMAPPED (quarantined)", highlight=False, markup=False
        )
        raise typer.Exit(1)
    out.print(f"=> {match.category.value}  (rule {match.rule})", highlight=False, markup=False)
