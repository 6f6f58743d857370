"""The category rules file format: its YAML models, their checks, and one file read and parsed.

`connector.pipeline.categories` merges parsed files (a source's own in front of the shipped
`mappings/category_rules.yaml`) into the rules a source runs; this module only says what a
valid file is, and names every problem of an invalid one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from connector.errors import ConfigError
from connector.model import Category
from connector.pipeline.category_terms import keyword_problem, normalize_text

# `@name` in a keyword list stands for every entry of the lexicon list `name`.
LEXICON_MARK = "@"
_LEXICON_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def _term_problems(group: str, terms: list[str]) -> list[str]:
    problems = []
    for term in terms:
        if not isinstance(term, str):
            problems.append(f"{group}: {term!r} is not text")
        elif term.startswith(LEXICON_MARK):
            if not _LEXICON_NAME.match(term[1:]):
                problems.append(f"{group}: {term!r} is not a lexicon name (@lower_case_name)")
        else:
            problem = keyword_problem(term)
            if problem is not None:
                problems.append(f"{group}: {term!r} {problem}")
    return problems


class SourceSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    map: dict[str, Category] = {}
    # None: not said here (a later file or the default, True, decides).
    description_rules: bool | None = None


class MatcherModel(BaseModel):
    """What keyword and pattern rules and non-clinical rules share: how they match."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    keywords: list[str] = []
    pattern: str | None = None
    requires: list[str] = []
    excludes: list[str] = []

    @model_validator(mode="after")
    def _one_matcher(self) -> MatcherModel:
        if bool(self.keywords) == (self.pattern is not None):
            raise ValueError("a rule needs either `keywords` or `pattern` (exactly one)")
        if self.pattern is not None:
            if not self.name:
                raise ValueError("a pattern rule needs a `name`")
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern {self.pattern!r} is not a valid regex: {exc}") from None
        problems = []
        for group in ("keywords", "requires", "excludes"):
            problems.extend(_term_problems(group, getattr(self, group)))
        if problems:
            raise ValueError("; ".join(problems))
        return self


class RuleModel(MatcherModel):
    category: Category


class NonClinicalModel(MatcherModel):
    """A kind of charge that is no clinical service (a cancellation fee, a gift voucher...)."""

    name: str


class RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    sources: dict[str, SourceSection] = {}
    lexicon: dict[str, list[str]] = {}
    non_clinical: list[NonClinicalModel] = []
    rules: list[RuleModel] = []

    @model_validator(mode="after")
    def _lexicon_entries(self) -> RulesFile:
        problems = []
        for name, entries in self.lexicon.items():
            if not _LEXICON_NAME.match(name):
                problems.append(f"lexicon: {name!r} is not a lexicon name (lower_case_name)")
            nested = [e for e in entries if e.startswith(LEXICON_MARK)]
            if nested:
                problems.append(f"lexicon.{name}: entries cannot name other lists ({nested[0]})")
            problems.extend(_term_problems(f"lexicon.{name}", entries))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def lexicon_names_used(self) -> set[str]:
        used = set()
        for rule in (*self.non_clinical, *self.rules):
            for term in (*rule.keywords, *rule.requires, *rule.excludes):
                if term.startswith(LEXICON_MARK):
                    used.add(term[1:])
        return used


def _format_problem(origin: str, error: Any) -> str:
    location = ""
    for part in error["loc"]:
        location += f"[{part}]" if isinstance(part, int) else f".{part}" if location else part
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{origin}: {location or '(top)'}: {message}"


def parse_rules(origin: str, text: str, problems: list[str]) -> RulesFile | None:
    """One rules file's text parsed and checked; its problems appended to `problems`."""
    try:
        # libyaml's loader where installed: the shipped rules file is long.
        document = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        problems.append(f"{origin}: not valid YAML: {exc}")
        return None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        problems.append(f"{origin}: must be a mapping with `sources` and/or `rules`")
        return None
    try:
        parsed = RulesFile.model_validate(document)
    except ValidationError as exc:
        problems.extend(_format_problem(origin, e) for e in exc.errors())
        return None
    for key, section in parsed.sources.items():
        seen: dict[str, tuple[str, Category]] = {}
        for word, category in section.map.items():
            normalized = normalize_text(word)
            if not normalized:
                problems.append(f"{origin}: sources.{key}.map: {word!r} has nothing to match")
            elif normalized in seen and seen[normalized][1] != category:
                other = seen[normalized][0]
                problems.append(
                    f"{origin}: sources.{key}.map: {word!r} and {other!r} are the same word "
                    f"but map to {category.value} and {seen[normalized][1].value}"
                )
            seen.setdefault(normalized, (word, category))
    return parsed


@dataclass(frozen=True)
class RulesDocument:
    """One rules file read and validated, not yet merged with the defaults.

    What a loaded config keeps of a source's `category_rules`, so that the file is read once,
    when the config loads, and every run uses the rules that were checked then. `mtime_ns` is
    the file's modification time taken before reading it: the daemon compares it with the
    file's to notice an edit (and reloads, which validates the new file before using it).
    """

    path: str
    mtime_ns: int
    rules: RulesFile


def read_rules_file(path: str | Path) -> RulesDocument:
    """Read and validate one rules file; `ConfigError` naming every problem of it (missing or
    unreadable file, YAML syntax, structure, unknown categories, bad patterns...)."""
    origin = str(path)
    try:
        mtime_ns = Path(path).stat().st_mtime_ns
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        problem = f"{origin}: cannot read the category rules file: {exc.strerror}"
        raise ConfigError([problem], origin="category rules") from None
    except UnicodeDecodeError as exc:
        problem = f"{origin}: cannot read the category rules file: not UTF-8 text ({exc.reason})"
        raise ConfigError([problem], origin="category rules") from None
    problems: list[str] = []
    parsed = parse_rules(origin, text, problems)
    if parsed is None or problems:
        raise ConfigError(problems, origin="category rules")
    return RulesDocument(origin, mtime_ns, parsed)
