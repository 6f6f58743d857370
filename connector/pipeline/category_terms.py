"""Keyword matching for the category rules: descriptions as words, and keywords that match a
word's plural, gender and stem variants in English and Spanish, with the reason each match holds.

A keyword is one or more words. Each word of it matches a word of the description when the
two are the same word, the same word up to a plural or gender ending ("sutura"/"suturas",
"quirúrgico"/"quirúrgica", "biopsy"/"biopsies"), or share an English or Spanish Snowball stem
long enough to mean something ("removal"/"remove", "extirpación"/"extirpar"). `word*` matches
any word starting with it, `*ending` any word of at least three more letters ending with it
(drug-name endings such as `*cillin`), and `=word` only the word itself and its plural.
Between the words of a keyword, little words of the description ("de", "of", "the") are
skipped: "retiro de puntos" matches "Retiro de los puntos".
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import snowballstemmer  # type: ignore[import-untyped]

_NON_WORD = re.compile(r"[\W_]+")
# Words a description may put between the words of a keyword without changing what it names.
STOPWORDS = frozenset(
    {"de", "del", "la", "las", "el", "los", "un", "una", "y", "e", "en", "para", "por", "con"}
    | {"al", "a", "of", "the", "and", "for", "in", "on", "with", "to", "at", "an"}
)
# A Snowball stem shorter than this says too little: Spanish "parto" (childbirth) and "parte"
# (a report) both stem to "part", "herida" (wound) to "her".
_MIN_STEM = {"en": 4, "es": 5}
_VOWELS = frozenset("aeiou")

Kind = Literal["word", "exact", "prefix", "suffix"]


def normalize_text(text: str) -> str:
    """Lower case, accents removed, every run of punctuation/space one space: the form in
    which words, keywords and descriptions are compared ("Radiografía" → "radiografia")."""
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _NON_WORD.sub(" ", bare.casefold()).strip()


_STEMMERS: dict[str, Any] = {
    "en": snowballstemmer.stemmer("english"),
    "es": snowballstemmer.stemmer("spanish"),
}


def _plural_free(word: str) -> set[str]:
    """The word and what it may be the plural of: English -s/-es/-ies, Spanish -s/-es."""
    forms = {word}
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        forms.add(word[:-1])
        if word.endswith("ies") and len(word) > 4:
            forms.add(word[:-3] + "y")
        if word.endswith("es") and len(word) > 4 and word[-3] not in _VOWELS:
            forms.add(word[:-2])
    return forms


@dataclass(frozen=True)
class WordForms:
    """One word as the matcher compares it."""

    word: str
    bare: frozenset[str]  # the word without plural ending, feminine -a read as masculine -o
    stems: tuple[tuple[str, str], ...]  # (language, Snowball stem) where long enough
    is_stopword: bool = False

    def index_keys(self) -> tuple[tuple[str, str], ...]:
        """The keys under which two words can meet: the same word, a shared bare form or a
        shared stem of one language (`word*` and `*ending` marks are looked up apart)."""
        return (("w", self.word), *(("b", bare) for bare in self.bare), *self.stems)


@lru_cache(maxsize=50_000)
def word_forms(word: str) -> WordForms:
    """The forms of one normalised word (cached: descriptions repeat, and so do words)."""
    bare: set[str] = set()
    for form in _plural_free(word):
        bare.add(form)
        if len(form) >= 5 and form.endswith("a"):
            bare.add(form[:-1] + "o")
    stems: list[tuple[str, str]] = []
    # Numbers, codes and short words have no stem worth comparing (and the pure-Python
    # stemmers are the dearest part of reading a new description).
    if len(word) >= _MIN_STEM["en"] and word.isalpha():
        for language, stemmer in _STEMMERS.items():
            stem = stemmer.stemWord(word)
            if len(stem) >= _MIN_STEM[language]:
                stems.append((language, stem))
    return WordForms(word, frozenset(bare), tuple(stems), word in STOPWORDS)


def _marked_forms(word: str) -> WordForms:
    """A `=word`, `word*` or `*ending` keyword word: compared as written, never stemmed."""
    return WordForms(word, frozenset({word}), (), word in STOPWORDS)


@dataclass(frozen=True)
class Description:
    """A description as the matcher reads it: its words, and the keys every keyword index is
    probed with (computed once per description, not once per rule)."""

    words: tuple[WordForms, ...]
    keys: frozenset[tuple[str, str]]
    heads: frozenset[str]  # the first one, two and three letters of each word
    tails: frozenset[str]  # the last three letters of each word


def words_of(text: str) -> Description:
    """A description (any form) as the words the matcher compares."""
    words = tuple(word_forms(w) for w in normalize_text(text).split())
    keys = frozenset(key for word in words for key in word.index_keys())
    heads = frozenset(word.word[:n] for word in words for n in (1, 2, 3))
    tails = frozenset(word.word[-3:] for word in words)
    return Description(words, keys, heads, tails)


@dataclass(frozen=True)
class KeywordWord:
    """One word of a keyword and how it may match a description's word."""

    text: str
    kind: Kind
    forms: WordForms

    def why(self, candidate: WordForms) -> str | None:
        """How `candidate` matches this word ("same word", "plural/gender", "English stem
        'remov'"...), or None."""
        word = candidate.word
        if word == self.text:
            return "same word"
        if self.kind == "prefix":
            return f"starts with {self.text!r}" if word.startswith(self.text) else None
        if self.kind == "suffix":
            fits = word.endswith(self.text) and len(word) >= len(self.text) + 3
            return f"ends with {self.text!r}" if fits else None
        if self.kind == "exact":
            return "plural" if self.text in _plural_free(word) else None
        if self.forms.bare & candidate.bare:
            return "plural/gender"
        for (language, stem), (other_language, other_stem) in _pairs(self.forms, candidate):
            if language == other_language and stem == other_stem:
                name = "English" if language == "en" else "Spanish"
                return f"{name} stem {stem!r}"
        return None


def _pairs(one: WordForms, other: WordForms) -> Iterable[tuple[tuple[str, str], tuple[str, str]]]:
    for first in one.stems:
        for second in other.stems:
            yield first, second


def keyword_word(text: str) -> KeywordWord:
    if text.startswith("="):
        return KeywordWord(text[1:], "exact", _marked_forms(text[1:]))
    if text.endswith("*"):
        return KeywordWord(text[:-1], "prefix", _marked_forms(text[:-1]))
    if text.startswith("*"):
        return KeywordWord(text[1:], "suffix", _marked_forms(text[1:]))
    return KeywordWord(text, "word", word_forms(text))


def keyword_problem(term: str) -> str | None:
    """Why `term` cannot be a keyword ("uses more than one mark..."), or None."""
    words = split_keyword(term)
    if not words:
        return "has no letters or digits to match"
    for word in words:
        core = word.strip("=*")
        said = "" if len(words) == 1 else f"(word {word!r}) "
        if not core or normalize_text(core) != core:
            return f"{said}is not a plain word (marks: =word, word*, *ending)"
        if word.count("*") + word.count("=") > 1 or ("*" in word[1:-1]) or ("=" in word[1:]):
            return f"{said}uses more than one mark (=word, word*, *ending)"
        if word.startswith("*") and len(core) < 3:
            return f"{said}is an `*ending` shorter than three letters"
    return None


def split_keyword(term: str) -> list[str]:
    """The words of a keyword as written: marks kept, accents and case folded, and little
    words between two others dropped (the description may have other little words there).
    A little word at either end stays: "informe para" must not become "informe"."""
    words: list[str] = []
    for raw in term.split():
        front = raw[: len(raw) - len(raw.lstrip("=*"))]
        back = raw[len(raw.rstrip("*")) :]
        parts = normalize_text(raw.strip("=*")).split()
        if parts:
            # "x-ray*" is two words: the marks stay at the ends they were written at.
            parts[0] = front + parts[0]
            parts[-1] = parts[-1] + back
        words.extend(parts)
    return [
        w for i, w in enumerate(words) if i in (0, len(words) - 1) or w.strip("=*") not in STOPWORDS
    ]


@dataclass(frozen=True)
class Keyword:
    """One keyword as written in a rules file (`source` names the lexicon it came from)."""

    written: str
    words: tuple[KeywordWord, ...]
    source: str | None = None

    def find(self, text: Sequence[WordForms]) -> tuple[str, list[str]] | None:
        """(the description's words that matched, how each matched), or None."""
        first, rest = self.words[0], self.words[1:]
        for start, candidate in enumerate(text):
            how = first.why(candidate)
            if how is None:
                continue
            reasons, position = [how], start + 1
            for word in rest:
                while (
                    position < len(text)
                    and text[position].is_stopword
                    and word.why(text[position]) is None
                ):
                    position += 1
                if position >= len(text):
                    break
                step = word.why(text[position])
                if step is None:
                    break
                reasons.append(step)
                position += 1
            else:
                return " ".join(w.word for w in text[start:position]), reasons
        return None

    def describe(self, found: str, reasons: list[str]) -> str:
        said = f"keyword {self.written!r}"
        if self.source:
            said += f" (lexicon {self.source})"
        if all(reason == "same word" for reason in reasons):
            return f"{said} matched {found!r}"
        return f"{said} matched {found!r} ({'; '.join(reasons)})"


def compile_keyword(written: str, source: str | None = None) -> Keyword:
    words = tuple(keyword_word(w) for w in split_keyword(written))
    return Keyword(written, words, source)


@dataclass(frozen=True)
class TermHit:
    """Which keyword matched what, and a sentence saying why."""

    keyword: Keyword
    found: str
    detail: str


class Terms:
    """Keywords in the order written; `first` answers which one occurs in a description.

    Indexed by the forms of each keyword's first word, so that a description is compared only
    with the keywords that may match it: Splose descriptions start with the appointment's date
    and time, so nearly every one is new to the categorizer's cache."""

    def __init__(self, keywords: Iterable[Keyword]) -> None:
        self.keywords = tuple(keywords)
        self._by_key: dict[tuple[str, str], list[int]] = {}
        self._prefixes: dict[str, list[int]] = {}
        self._suffixes: dict[str, list[int]] = {}
        for index, keyword in enumerate(self.keywords):
            first = keyword.words[0]
            if first.kind == "prefix":
                self._prefixes.setdefault(first.text[:3], []).append(index)
            elif first.kind == "suffix":
                self._suffixes.setdefault(first.text[-3:], []).append(index)
            elif first.kind == "exact":
                self._by_key.setdefault(("w", first.text), []).append(index)
                self._by_key.setdefault(("b", first.text), []).append(index)
            else:
                for key in first.forms.index_keys():
                    self._by_key.setdefault(key, []).append(index)

    @classmethod
    def of(cls, keywords: Iterable[Keyword]) -> Terms:
        return cls(keywords)

    def _candidates(self, text: Description) -> list[int]:
        found: set[int] = set()
        # Set intersections first: most rules share no key with a given description.
        for key in self._by_key.keys() & text.keys:
            found.update(self._by_key[key])
        for head in self._prefixes.keys() & text.heads:
            found.update(self._prefixes[head])
        for tail in self._suffixes.keys() & text.tails:
            found.update(self._suffixes[tail])
        return sorted(found)

    def first(self, text: Description) -> TermHit | None:
        for index in self._candidates(text):
            keyword = self.keywords[index]
            found = keyword.find(text.words)
            if found is not None:
                return TermHit(keyword, found[0], keyword.describe(*found))
        return None

    def __bool__(self) -> bool:
        return bool(self.keywords)

    def __len__(self) -> int:
        return len(self.keywords)
