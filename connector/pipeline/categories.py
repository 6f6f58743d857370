"""Category rules: which of MediTrak's ten categories a vendor line item belongs to, and why.

A rules file (YAML; the shipped defaults are `mappings/category_rules.yaml`, and a source may
put its own file in front of them) becomes one `Categorizer` per source: a pure
`CategoryRules` callable that mappings reach through `MappingContext.categorize`. Every
assignment names the rule that made it ("exact:category", "map:bio_ecko/Pathology",
"non-clinical:cancellation fee", "keyword:laboratory/hemograma", "fallback"), and
`Categorizer.explain` shows every rule tried, how its keyword matched and which rule won.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from connector.errors import ConfigError
from connector.issues import Issue, Reason
from connector.mapping.kit import CategoryMatch, exact_category
from connector.model import Category, Invoice, LineItem
from connector.pipeline.category_files import (
    LEXICON_MARK,
    MatcherModel,
    RulesDocument,
    RulesFile,
    parse_rules,
    read_rules_file,
)
from connector.pipeline.category_terms import (
    Description,
    Keyword,
    Terms,
    compile_keyword,
    normalize_text,
    words_of,
)

if TYPE_CHECKING:
    from connector.settings import SourceConfig

__all__ = [
    "CATEGORY_RULES_DOC",
    "FALLBACK_RULE",
    "NON_CLINICAL_RULE",
    "Categorizer",
    "RuleSet",
    "RulesDocument",
    "categorizer_for",
    "fallback_warnings",
    "load_rule_set",
    "normalize_text",
    "read_rules_file",
    "unmapped_message",
]

DEFAULT_RULES_PACKAGE = "mappings"
DEFAULT_RULES_FILE = "category_rules.yaml"
FALLBACK_RULE = "fallback"
# The rule name of a line the non-clinical rules recognised: "non-clinical:<kind>".
NON_CLINICAL_RULE = "non-clinical"
# Descriptions repeat heavily (clinics bill from price lists): remember this many answers.
_CACHE_LIMIT = 20_000


# The category section of docs/reason-codes.md (generated with the table, so they cannot drift).
CATEGORY_RULES_DOC = """\
## CATEGORY_UNMAPPED: how an item gets its category

Each line item is placed by the first of these that decides (the rules file,
`mappings/category_rules.yaml`, says the same in its header):

1. **exact**: the vendor's word already is one of the ten categories (the vendor decided).
2. **non-clinical**: the description, or else the vendor's word / item type, names a charge that
   is no clinical service: a cancellation or late-cancellation fee, a missed appointment / no-show
   / did-not-attend fee, a surcharge (card, after hours, public holiday), a gift voucher, an admin
   or booking / registration fee, report, letter, certificate or form writing, late payment or
   interest, a deposit or refund, parking or postage. MediTrak has no category for these, so the
   item is `CATEGORY_UNMAPPED` with the message `non-clinical charge (<kind>): MediTrak has no
   category for it; ...`, never a guess. A fee word beats the service it names ("Missed
   appointment fee" is no consultation, "Cancellation fee - physio" no physiotherapy); a fee
   *for* a service rendered names no non-clinical kind and stays that service ("Emergency room
   fee" is emergency, "Consultation fee" consultation, "Dispensing fee" pharmacy).
   **Override**: a clinic that wants these lines sent anyway sets, on the source,
   `non_clinical_category: <category>` (one of the ten, checked when the config loads); the line
   then gets that category under the rule `non-clinical:<kind>`. The source's
   `fallback_category` is not used for non-clinical lines.
3. **map**: the vendor's word is in the source's map (Bio Ecko departments, Splose item types...).
4. **keyword / pattern rules**, in file order, on the description, then on the vendor's word.
   The order is the precedence: going over results, a prescription or medicines with the
   patient is a consultation ("Review of blood test results"); an imaging modality beats the
   organ or the test it looks at ("Thyroid ultrasound", "Ecografía hepática", "Dental X-ray"
   are radiology), except imaging in pregnancy, which is obstetrics ("Obstetric ultrasound",
   "Dating scan", "Ecografía de embarazo"), and therapeutic ultrasound, which is
   physiotherapy; then emergency; dental; a medicine named by its form ("Eye drops", "Vitamin
   B12 injection" are pharmacy); optical; a specialist's consultation ("Haematology
   consultation"); laboratory (a value that is also a medicine, such as a vitamin or iron, only
   next to a word saying it is measured: "Vitamin D level"); a skin check; surgery (minor
   procedures, removals, excisions, sutures, wound care); physiotherapy; obstetrics; pharmacy
   (generic names and their family endings: `*cillin`, `*prazole`, `*statin`...; a dose such as
   "500mg"); consultation (specialists, referrals); last resorts: a specialty named by its
   ending is a consultation ("Urología"), generic test words laboratory, any other therapy
   physiotherapy ("Termoterapia").
   Matching ignores accents and case, and a keyword's word also matches its plural and gender
   variants and words sharing its English or Spanish Snowball stem ("sutura" ~ "suturas",
   "quirúrgico" ~ "quirúrgica", "removal" ~ "remove").
5. the source's `fallback_category` (accepted with a warning), else `CATEGORY_UNMAPPED`.

`connector categories explain "TEXT" [--source NAME] [--word WORD]
[--non-clinical-category CATEGORY]` prints every rule tried, the keyword that fired and how
(same word, plural/gender, English or Spanish stem, the lexicon list it came from), the rule
that won and the later rules it beat. Exit status 1 when the item would be `CATEGORY_UNMAPPED`.
"""


# ----------------------------------------------------------------------------- compiled rules


@dataclass(frozen=True)
class DescriptionRule:
    """One keyword or pattern rule, compiled. `category` None: a non-clinical rule."""

    category: Category | None
    label: str
    origin: str
    keywords: Terms
    pattern: re.Pattern[str] | None
    requires: Terms
    excludes: Terms

    @property
    def title(self) -> str:
        """How `explain` names the rule when it does not match."""
        if self.category is None:
            return f"{NON_CLINICAL_RULE}:{self.label}"
        return f"{self.label} ({self.category.value})"

    def match(self, words: Description, normalized: str) -> tuple[str | None, str]:
        """(recorded rule name, None if no match) and a one-line reason for `explain`."""
        kind = f"{NON_CLINICAL_RULE}:{self.label}" if self.category is None else None
        if self.pattern is not None:
            if not self.pattern.search(normalized):
                return None, "pattern does not match"
            hit = kind or f"pattern:{self.category}/{self.label}"
            why = f"pattern {self.pattern.pattern!r} matched"
        else:
            found = self.keywords.first(words)
            if found is None:
                return None, "no keyword found"
            hit = kind or f"keyword:{self.category}/{found.found}"
            why = found.detail
        if self.requires:
            needed = self.requires.first(words)
            if needed is None:
                return None, f"{why}, but none of the required words"
            if kind is None:
                hit += f"+{needed.found}"
            why += f", and required {needed.detail}"
        if self.excludes:
            blocked = self.excludes.first(words)
            if blocked is not None:
                return None, f"{why}, but excluded: {blocked.detail}"
        return hit, why


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
    """The category rules of one source: call it like any `CategoryRules`.

    Precedence, first decision wins: the vendor word is one of the ten categories; a
    non-clinical rule recognises the description (or the vendor word) as a charge that is no
    clinical service, which stays unmapped unless the source sets `non_clinical_category`;
    the source's word map; the keyword and pattern rules in file order on the description,
    then on the vendor word; the source's fallback category; else unmapped.
    """

    def __init__(
        self,
        label: str,
        word_map: Mapping[str, _MapEntry],
        rules: Sequence[DescriptionRule],
        *,
        description_rules: bool = True,
        fallback: Category | None = None,
        non_clinical: Sequence[DescriptionRule] = (),
        non_clinical_category: Category | None = None,
    ) -> None:
        self.label = label
        self.word_map = dict(word_map)
        self.rules = tuple(rules) if description_rules else ()
        self.non_clinical = tuple(non_clinical) if description_rules else ()
        self.description_rules = description_rules
        self.fallback = fallback
        self.non_clinical_category = non_clinical_category
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
        texts = [
            (text, suffix, words_of(text), normalize_text(text))
            for text, suffix in ((description, ""), (word, "@word"))
            if text
        ]
        charge = self._non_clinical(texts, steps)
        if charge is not None:
            return charge
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
        winner: CategoryMatch | None = None
        for text, suffix, words, normalized in texts:
            for rule in self.rules:
                hit, why = rule.match(words, normalized)
                if hit is not None and winner is None:
                    winner = CategoryMatch(rule.category, hit + suffix)
                    if steps is None:
                        return winner
                    steps.append(RuleStep(hit + suffix, True, f"on {text!r}: {why}"))
                elif steps is not None:
                    _note_rule(steps, rule, hit, suffix, text, why, winner)
            if winner is not None:
                return winner
        if self.fallback is not None:
            if steps is not None:
                steps.append(RuleStep(FALLBACK_RULE, True, f"source fallback → {self.fallback}"))
            return CategoryMatch(self.fallback, FALLBACK_RULE)
        if steps is not None:
            steps.append(RuleStep(FALLBACK_RULE, False, "no fallback: CATEGORY_UNMAPPED"))
        return CategoryMatch(None, None)

    def _non_clinical(
        self,
        texts: Iterable[tuple[str, str, Description, str]],
        steps: list[RuleStep] | None,
    ) -> CategoryMatch | None:
        """A charge that is no clinical service: it beats every clinical word it names
        ("Missed appointment fee" is no appointment). The source's `non_clinical_category`
        decides where it goes; without one it stays unmapped, on purpose: never a guess."""
        for text, suffix, words, normalized in texts:
            for rule in self.non_clinical:
                hit, why = rule.match(words, normalized)
                if steps is not None:
                    detail = f"on {text!r}: {why}"
                    if hit is not None:
                        detail += self._beaten(words, normalized)
                        detail += (
                            f"; non_clinical_category → {self.non_clinical_category}"
                            if self.non_clinical_category is not None
                            else "; no non_clinical_category set: CATEGORY_UNMAPPED"
                        )
                    steps.append(RuleStep(hit + suffix if hit else rule.title, bool(hit), detail))
                if hit is not None:
                    return CategoryMatch(self.non_clinical_category, hit + suffix)
        if steps is not None and not self.non_clinical:
            steps.append(RuleStep(NON_CLINICAL_RULE, False, "disabled for this source"))
        return None

    def _beaten(self, words: Description, normalized: str) -> str:
        for rule in self.rules:
            hit, _why = rule.match(words, normalized)
            if hit is not None:
                return f"; precedence: a non-clinical charge beats {hit}"
        return ""


def _note_rule(
    steps: list[RuleStep],
    rule: DescriptionRule,
    hit: str | None,
    suffix: str,
    text: str,
    why: str,
    winner: CategoryMatch | None,
) -> None:
    """One explain line for a rule that does not decide: no match, or a match that an
    earlier rule beat (said, so that the precedence is visible)."""
    if hit is None:
        steps.append(RuleStep(rule.title, False, f"on {text!r}: {why}"))
    else:
        beaten_by = winner.rule if winner is not None else "an earlier rule"
        detail = f"on {text!r}: {why}; precedence: {beaten_by} comes first"
        steps.append(RuleStep(hit + suffix, False, detail))


def _no_word(word: str | None) -> str:
    return "no vendor word" if word is None else f"{word!r} is not one of the ten categories"


def unmapped_message(item: LineItem) -> str | None:
    """Why an item has no category when a rule decided so on purpose (a non-clinical
    charge), for the CATEGORY_UNMAPPED issue; None when no rule placed it."""
    rule = item.category_rule
    if item.category is not None or not rule or not rule.startswith(NON_CLINICAL_RULE + ":"):
        return None
    kind = rule.removeprefix(NON_CLINICAL_RULE + ":").removesuffix("@word")
    return (
        f"non-clinical charge ({kind}): MediTrak has no category for it; set "
        f"`non_clinical_category` on the source to send such lines as one of the ten categories"
    )


@dataclass(frozen=True)
class RuleSet:
    """Every rules file of a deployment merged: maps per source key and the ordered rules."""

    maps: Mapping[str, Mapping[str, _MapEntry]]
    description_rules: Mapping[str, bool]
    rules: tuple[DescriptionRule, ...]
    origins: tuple[str, ...]
    non_clinical: tuple[DescriptionRule, ...] = ()
    lexicon: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def categorizer(
        self,
        source_keys: Sequence[str],
        *,
        fallback: Category | None = None,
        non_clinical_category: Category | None = None,
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
            non_clinical=self.non_clinical,
            non_clinical_category=non_clinical_category,
        )

    def source_keys(self) -> list[str]:
        return sorted(set(self.maps) | set(self.description_rules))


# ----------------------------------------------------------------------------- loading


@cache
def default_rules_text() -> str:
    return resources.files(DEFAULT_RULES_PACKAGE).joinpath(DEFAULT_RULES_FILE).read_text("utf-8")


def _expand(
    terms: Iterable[str], lexicon: Mapping[str, Sequence[str]], where: str, problems: list[str]
) -> list[Keyword]:
    keywords: list[Keyword] = []
    for term in terms:
        if term.startswith(LEXICON_MARK):
            name = term[1:]
            if name not in lexicon:
                problems.append(f"{where}: no lexicon list {name!r}")
                continue
            keywords.extend(compile_keyword(entry, name) for entry in lexicon[name])
        else:
            keywords.append(compile_keyword(term))
    return keywords


@cache
def _default_rule_set() -> RuleSet:
    # Compiling the shipped rules (their stems and indexes) takes a good part of a second:
    # once per process, since they never change while it runs.
    return _load_rule_set(None)


def load_rule_set(extra: str | Path | RulesDocument | None = None) -> RuleSet:
    """The shipped defaults with `extra` (a source's own rules file, or that file as already
    read by `read_rules_file`) merged in front.

    Raises `ConfigError` naming every problem of every file at once.
    """
    return _default_rule_set() if extra is None else _load_rule_set(extra)


def _load_rule_set(extra: str | Path | RulesDocument | None) -> RuleSet:
    problems: list[str] = []
    parsed: list[tuple[str, RulesFile | None]] = []
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
    parsed.append((default_origin, parse_rules(default_origin, default_rules_text(), problems)))
    if problems:
        raise ConfigError(problems, origin="category rules")
    documents = [(origin, document) for origin, document in parsed if document is not None]
    maps: dict[str, dict[str, _MapEntry]] = {}
    description_rules: dict[str, bool] = {}
    # Earlier files win: walk them last-to-first so their entries overwrite the defaults'.
    for _origin, document in reversed(documents):
        for key, section in document.sources.items():
            target = maps.setdefault(key, {})
            for word, category in section.map.items():
                target[normalize_text(word)] = _MapEntry(category, f"map:{key}/{word}")
            if section.description_rules is not None:
                description_rules[key] = section.description_rules
    # A lexicon list named in several files: the earlier file's entries first, then the rest.
    lexicon: dict[str, list[str]] = {}
    for _origin, document in documents:
        for name, entries in document.lexicon.items():
            lexicon.setdefault(name, []).extend(entries)
    rules: list[DescriptionRule] = []
    non_clinical: list[DescriptionRule] = []
    for origin, document in documents:
        models: list[tuple[MatcherModel, Category | None, str, int]] = [
            (r, r.category, "rules", i) for i, r in enumerate(document.rules)
        ]
        models += [(r, None, "non_clinical", i) for i, r in enumerate(document.non_clinical)]
        for model, placed, group, index in models:
            where = f"{origin}: {group}[{index}]"
            compiled = DescriptionRule(
                category=placed,
                label=model.name or (placed.value if placed else group),
                origin=origin,
                keywords=Terms.of(_expand(model.keywords, lexicon, where, problems)),
                pattern=re.compile(model.pattern) if model.pattern is not None else None,
                requires=Terms.of(_expand(model.requires, lexicon, where, problems)),
                excludes=Terms.of(_expand(model.excludes, lexicon, where, problems)),
            )
            (rules if placed is not None else non_clinical).append(compiled)
    if problems:
        raise ConfigError(problems, origin="category rules")
    return RuleSet(
        maps,
        description_rules,
        tuple(rules),
        tuple(o for o, _ in parsed),
        tuple(non_clinical),
        {name: tuple(entries) for name, entries in lexicon.items()},
    )


def categorizer_for(source: SourceConfig, rule_set: RuleSet | None = None) -> Categorizer:
    """The categorizer of one configured source: its rules file in front of the defaults,
    its maps looked up under its type and then its name, its fallback category and its
    `non_clinical_category`."""
    extra: str | RulesDocument | None = getattr(source, "category_rules", None)
    if extra is not None:
        # Read when the config loaded (see `connector.config.build_config`): not read again.
        kept = source.loaded_category_rules()
        if isinstance(kept, RulesDocument):
            extra = kept
    if rule_set is None or extra is not None:
        rule_set = load_rule_set(extra)
    keys = [source.type] if source.type == source.name else [source.type, source.name]
    return rule_set.categorizer(
        keys,
        fallback=getattr(source, "fallback_category", None),
        non_clinical_category=getattr(source, "non_clinical_category", None),
    )


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
