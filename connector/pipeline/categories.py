"""Category rules: which of MediTrak's ten categories a vendor line item belongs to, and why.

A rules file (YAML; the shipped defaults are `mappings/category_rules.yaml`, and a source may
put its own file in front of them) becomes one `Categorizer` per source: a pure
`CategoryRules` callable that mappings reach through `MappingContext.categorize`. Every
assignment names the rule that made it ("exact:category", "map:bio_ecko/Pathology",
"keyword:laboratory/hemograma", "fallback"), and `Categorizer.explain` shows every rule tried.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from connector.errors import ConfigError
from connector.issues import Issue, Reason
from connector.mapping.kit import CategoryMatch, exact_category
from connector.model import Category, Invoice

if TYPE_CHECKING:
    from connector.settings import SourceConfig

DEFAULT_RULES_PACKAGE = "mappings"
DEFAULT_RULES_FILE = "category_rules.yaml"
FALLBACK_RULE = "fallback"
# Descriptions repeat heavily (clinics bill from price lists): remember this many answers.
_CACHE_LIMIT = 20_000
_NON_WORD = re.compile(r"[\W_]+")


def normalize_text(text: str) -> str:
    """Lower case, accents removed, every run of punctuation/space one space: the form in
    which words, keywords and descriptions are compared ("Radiografía" → "radiografia")."""
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _NON_WORD.sub(" ", bare.casefold()).strip()


# ----------------------------------------------------------------------------- file models


class _SourceSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    map: dict[str, Category] = {}
    # None: not said here (a later file or the default, True, decides).
    description_rules: bool | None = None


class _RuleModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    category: Category
    name: str | None = None
    keywords: list[str] = []
    pattern: str | None = None
    requires: list[str] = []
    excludes: list[str] = []

    @model_validator(mode="after")
    def _one_matcher(self) -> _RuleModel:
        if bool(self.keywords) == (self.pattern is not None):
            raise ValueError("a rule needs either `keywords` or `pattern` (exactly one)")
        if self.pattern is not None:
            if not self.name:
                raise ValueError("a pattern rule needs a `name`")
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern {self.pattern!r} is not a valid regex: {exc}") from None
        for group in ("keywords", "requires", "excludes"):
            for term in getattr(self, group):
                if not isinstance(term, str) or not normalize_text(term.rstrip("*")):
                    raise ValueError(f"{group}: {term!r} has no letters or digits to match")
        return self


class _RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    sources: dict[str, _SourceSection] = {}
    rules: list[_RuleModel] = []


# ----------------------------------------------------------------------------- compiled rules


def _term_regex(term: str) -> re.Pattern[str]:
    prefix = term.endswith("*")
    words = normalize_text(term.rstrip("*"))
    body = re.escape(words).replace(r"\ ", " ")
    tail = r"\w*" if prefix else ""
    return re.compile(rf"(?<!\w){body}{tail}(?!\w)")


@dataclass(frozen=True)
class _Terms:
    """Keywords in the order written; `first` answers which one occurs in a normalised text."""

    terms: tuple[tuple[str, re.Pattern[str]], ...]

    @classmethod
    def of(cls, terms: Iterable[str]) -> _Terms:
        return cls(tuple((term, _term_regex(term)) for term in terms))

    def first(self, text: str) -> str | None:
        """The words that matched (the whole word for a `prefix*` term), or None."""
        for _term, regex in self.terms:
            found = regex.search(text)
            if found:
                return found.group(0)
        return None

    def __bool__(self) -> bool:
        return bool(self.terms)


@dataclass(frozen=True)
class DescriptionRule:
    """One keyword or pattern rule, compiled."""

    category: Category
    label: str
    origin: str
    keywords: _Terms
    pattern: re.Pattern[str] | None
    requires: _Terms
    excludes: _Terms

    def match(self, text: str) -> tuple[str | None, str]:
        """(recorded rule name, None if no match) and a one-line reason for `explain`."""
        if self.pattern is not None:
            if not self.pattern.search(text):
                return None, "pattern does not match"
            hit = f"pattern:{self.category.value}/{self.label}"
        else:
            term = self.keywords.first(text)
            if term is None:
                return None, "no keyword found"
            hit = f"keyword:{self.category.value}/{term}"
        if self.requires:
            needed = self.requires.first(text)
            if needed is None:
                return None, f"{hit} found, but none of the required words"
            hit += f"+{needed}"
        if self.excludes:
            blocked = self.excludes.first(text)
            if blocked is not None:
                return None, f"{hit} found, but excluded by {blocked!r}"
        return hit, "matched"


@dataclass(frozen=True)
class RuleStep:
    """One rule tried by `Categorizer.explain`."""

    rule: str
    matched: bool
    detail: str


@dataclass(frozen=True)
class Explanation:
    match: CategoryMatch
    steps: list[RuleStep] = field(default_factory=list)


@dataclass(frozen=True)
class _MapEntry:
    category: Category
    rule: str


class Categorizer:
    """The category rules of one source: call it like any `CategoryRules`."""

    def __init__(
        self,
        label: str,
        word_map: Mapping[str, _MapEntry],
        rules: Sequence[DescriptionRule],
        *,
        description_rules: bool = True,
        fallback: Category | None = None,
    ) -> None:
        self.label = label
        self.word_map = dict(word_map)
        self.rules = tuple(rules) if description_rules else ()
        self.description_rules = description_rules
        self.fallback = fallback
        self._cache: dict[tuple[str | None, str | None], CategoryMatch] = {}

    def __call__(self, word: str | None, description: str | None) -> CategoryMatch:
        key = (word, description)
        found = self._cache.get(key)
        if found is None:
            found = self._evaluate(word, description, None)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = found
        return found

    def explain(self, word: str | None, description: str | None) -> Explanation:
        steps: list[RuleStep] = []
        return Explanation(self._evaluate(word, description, steps), steps)

    def _evaluate(
        self, word: str | None, description: str | None, steps: list[RuleStep] | None
    ) -> CategoryMatch:
        exact = exact_category(word)
        if steps is not None:
            detail = "the word is a MediTrak category" if exact.rule else _no_word(word)
            steps.append(RuleStep("exact:category", exact.rule is not None, detail))
        if exact.category is not None:
            return exact
        if word is not None:
            entry = self.word_map.get(normalize_text(word))
            if steps is not None:
                if entry is None:
                    detail = f"{word!r} is not in the {self.label} map"
                    steps.append(RuleStep(f"map:{self.label}", False, detail))
                else:
                    steps.append(RuleStep(entry.rule, True, f"{word!r} → {entry.category}"))
            if entry is not None:
                return CategoryMatch(entry.category, entry.rule)
        elif steps is not None:
            steps.append(RuleStep(f"map:{self.label}", False, "no vendor word"))
        if not self.description_rules and steps is not None:
            steps.append(RuleStep("keyword/pattern", False, "disabled for this source"))
        for text, suffix in ((description, ""), (word, "@word")):
            if not text:
                continue
            normalized = normalize_text(text)
            for rule in self.rules:
                hit, why = rule.match(normalized)
                if steps is not None:
                    name = hit + suffix if hit else f"{rule.label} ({rule.category.value})"
                    steps.append(RuleStep(name, hit is not None, f"on {text!r}: {why}"))
                if hit is not None:
                    return CategoryMatch(rule.category, hit + suffix)
        if self.fallback is not None:
            if steps is not None:
                steps.append(RuleStep(FALLBACK_RULE, True, f"source fallback → {self.fallback}"))
            return CategoryMatch(self.fallback, FALLBACK_RULE)
        if steps is not None:
            steps.append(RuleStep(FALLBACK_RULE, False, "no fallback: CATEGORY_UNMAPPED"))
        return CategoryMatch(None, None)


def _no_word(word: str | None) -> str:
    return "no vendor word" if word is None else f"{word!r} is not one of the ten categories"


@dataclass(frozen=True)
class RuleSet:
    """Every rules file of a deployment merged: maps per source key and the ordered rules."""

    maps: Mapping[str, Mapping[str, _MapEntry]]
    description_rules: Mapping[str, bool]
    rules: tuple[DescriptionRule, ...]
    origins: tuple[str, ...]

    def categorizer(
        self, source_keys: Sequence[str], *, fallback: Category | None = None
    ) -> Categorizer:
        """The rules for a source known under these keys (type, then name: later keys win)."""
        word_map: dict[str, _MapEntry] = {}
        use_description = True
        for key in source_keys:
            word_map.update(self.maps.get(key, {}))
            use_description = self.description_rules.get(key, use_description)
        label = source_keys[-1] if source_keys else "default"
        return Categorizer(
            label,
            word_map,
            self.rules,
            description_rules=use_description,
            fallback=fallback,
        )

    def source_keys(self) -> list[str]:
        return sorted(set(self.maps) | set(self.description_rules))


# ----------------------------------------------------------------------------- loading


def _format_problem(origin: str, error: Any) -> str:
    location = ""
    for part in error["loc"]:
        location += f"[{part}]" if isinstance(part, int) else f".{part}" if location else part
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{origin}: {location or '(top)'}: {message}"


def _parse(origin: str, text: str, problems: list[str]) -> _RulesFile | None:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problems.append(f"{origin}: not valid YAML: {exc}")
        return None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        problems.append(f"{origin}: must be a mapping with `sources` and/or `rules`")
        return None
    try:
        parsed = _RulesFile.model_validate(document)
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


@cache
def default_rules_text() -> str:
    return resources.files(DEFAULT_RULES_PACKAGE).joinpath(DEFAULT_RULES_FILE).read_text("utf-8")


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
    rules: _RulesFile


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
    parsed = _parse(origin, text, problems)
    if parsed is None or problems:
        raise ConfigError(problems, origin="category rules")
    return RulesDocument(origin, mtime_ns, parsed)


def load_rule_set(extra: str | Path | RulesDocument | None = None) -> RuleSet:
    """The shipped defaults with `extra` (a source's own rules file, or that file as already
    read by `read_rules_file`) merged in front.

    Raises `ConfigError` naming every problem of every file at once.
    """
    problems: list[str] = []
    parsed: list[tuple[str, _RulesFile | None]] = []
    if isinstance(extra, RulesDocument):
        parsed.append((extra.path, extra.rules))
    elif extra is not None:
        try:
            read = read_rules_file(extra)
        except ConfigError as exc:
            problems.extend(exc.problems)
        else:
            parsed.append((read.path, read.rules))
    default_origin = f"{DEFAULT_RULES_PACKAGE}/{DEFAULT_RULES_FILE}"
    parsed.append((default_origin, _parse(default_origin, default_rules_text(), problems)))
    if problems:
        raise ConfigError(problems, origin="category rules")
    maps: dict[str, dict[str, _MapEntry]] = {}
    description_rules: dict[str, bool] = {}
    rules: list[DescriptionRule] = []
    # Earlier files win: walk them last-to-first so their entries overwrite the defaults'.
    for _origin, document in reversed(parsed):
        assert document is not None  # every parse failure was reported above
        for key, section in document.sources.items():
            target = maps.setdefault(key, {})
            for word, category in section.map.items():
                target[normalize_text(word)] = _MapEntry(category, f"map:{key}/{word}")
            if section.description_rules is not None:
                description_rules[key] = section.description_rules
    for origin, document in parsed:
        assert document is not None
        for rule in document.rules:
            label = rule.name or rule.category.value
            rules.append(
                DescriptionRule(
                    category=rule.category,
                    label=label,
                    origin=origin,
                    keywords=_Terms.of(rule.keywords),
                    pattern=re.compile(rule.pattern) if rule.pattern is not None else None,
                    requires=_Terms.of(rule.requires),
                    excludes=_Terms.of(rule.excludes),
                )
            )
    return RuleSet(maps, description_rules, tuple(rules), tuple(o for o, _ in parsed))


def categorizer_for(source: SourceConfig, rule_set: RuleSet | None = None) -> Categorizer:
    """The categorizer of one configured source: its rules file in front of the defaults,
    its maps looked up under its type and then its name, its fallback category."""
    extra: str | RulesDocument | None = getattr(source, "category_rules", None)
    if extra is not None:
        # Read when the config loaded (see `connector.config.build_config`): not read again.
        kept = source.loaded_category_rules()
        if isinstance(kept, RulesDocument):
            extra = kept
    if rule_set is None or extra is not None:
        rule_set = load_rule_set(extra)
    keys = [source.type] if source.type == source.name else [source.type, source.name]
    return rule_set.categorizer(keys, fallback=getattr(source, "fallback_category", None))


def fallback_warnings(invoice: Invoice) -> list[Issue]:
    """A warning per item that only the source's fallback category could place: the invoice
    is accepted, but a report can still list what the rules did not cover."""
    return [
        Issue(
            Reason.CATEGORY_UNMAPPED,
            f"items[{index}].category",
            f"no rule matched ({item.source_category or item.description!r}); "
            f"fallback category {item.category} used",
            severity="warning",
        )
        for index, item in enumerate(invoice.items)
        if item.category_rule == FALLBACK_RULE
    ]
