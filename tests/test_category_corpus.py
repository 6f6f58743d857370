"""How well the shipped category rules place real-world-style descriptions, in English and
Spanish, measured on two halves of a corpus. The tuning side: `tuning.yaml`, written alongside
the rules, and `heldout-1.yaml` and `heldout-2.yaml`, earlier held-out rounds measured at 98.1 %
and 98.6 % before their misses were fixed. The held-out side: `unseen-3.yaml`, written by
someone who had read neither the rules nor the other files (it measures generalisation, so the
rules are never tuned on it). Each must reach 99 %; a failure lists every miss."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from connector.model import CATEGORY_VALUES
from connector.pipeline.categories import Categorizer, load_rule_set

CORPUS = Path(__file__).resolve().parent / "fixtures" / "category_corpus"
REQUIRED_ACCURACY = 0.99
UNMAPPED = "unmapped"
LANGUAGES = ("en", "es")


@dataclass(frozen=True)
class Entry:
    text: str
    lang: str
    expect: str


def read_corpus(path: Path) -> list[Entry]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(document, dict) and document.get("version") == 1, f"{path.name}: version 1"
    entries = []
    for index, item in enumerate(document.get("items") or []):
        assert isinstance(item, dict), f"{path.name}: items[{index}] is not a mapping"
        entry = Entry(str(item["text"]), str(item["lang"]), str(item["expect"]))
        assert entry.lang in LANGUAGES, f"{path.name}: items[{index}].lang {entry.lang!r}"
        assert entry.expect in (*CATEGORY_VALUES, UNMAPPED), (
            f"{path.name}: items[{index}].expect {entry.expect!r}"
        )
        entries.append(entry)
    return entries


def free_text_categorizer() -> Categorizer:
    """The shipped rules as a description-only source uses them (CitaBox: no vendor word,
    no fallback, no `non_clinical_category`)."""
    return load_rule_set().categorizer(["citabox"])


def placed(categorizer: Categorizer, text: str) -> str:
    match = categorizer(None, text)
    return match.category.value if match.category is not None else UNMAPPED


def measure(name: str) -> tuple[float, int, list[str]]:
    """(accuracy, entries, one line per miss) of one corpus half."""
    path = CORPUS / name
    if not path.exists():
        pytest.skip(f"{path.relative_to(CORPUS.parent.parent)} is not written yet")
    entries = read_corpus(path)
    categorizer = free_text_categorizer()
    misses = []
    for entry in entries:
        got = placed(categorizer, entry.text)
        if got != entry.expect:
            rule = categorizer(None, entry.text).rule
            said = f"expected {entry.expect}, got {got} ({rule})"
            misses.append(f"  [{entry.lang}] {entry.text!r}: {said}")
    accuracy = (len(entries) - len(misses)) / len(entries) if entries else 0.0
    return accuracy, len(entries), misses


def assert_accurate(name: str) -> None:
    accuracy, total, misses = measure(name)
    print(f"{name}: {accuracy:.1%} of {total} descriptions placed as expected")
    assert total > 0, f"{name} has no items"
    assert accuracy >= REQUIRED_ACCURACY, (
        f"{name}: {accuracy:.1%} ({total - len(misses)}/{total}), below "
        f"{REQUIRED_ACCURACY:.0%}; misses:\n" + "\n".join(misses)
    )


def test_tuning_half_is_at_least_99_percent() -> None:
    assert_accurate("tuning.yaml")


def test_first_held_out_round_is_at_least_99_percent_since_its_misses_were_fixed() -> None:
    assert_accurate("heldout-1.yaml")


def test_second_held_out_round_is_at_least_99_percent_since_its_misses_were_fixed() -> None:
    assert_accurate("heldout-2.yaml")


def test_unseen_half_is_at_least_99_percent() -> None:
    assert_accurate("unseen-3.yaml")


def test_tuning_half_covers_both_languages_every_category_and_non_clinical_lines() -> None:
    entries = read_corpus(CORPUS / "tuning.yaml")
    assert len(entries) >= 200
    languages = Counter(entry.lang for entry in entries)
    assert min(languages[lang] for lang in LANGUAGES) >= 0.4 * len(entries)
    expected = Counter(entry.expect for entry in entries)
    assert set(expected) == {*CATEGORY_VALUES, UNMAPPED}
    assert expected[UNMAPPED] >= 0.08 * len(entries)


# Splose's appointment lines start with the date and time ("Wed 30 Aug 2023, 09:00am - ..."),
# in English or Spanish: no day or month abbreviation may be taken for a keyword ("Oct" is no
# optical coherence tomography, "Mar" no sea).
DATE_PREFIXES = (
    "Mon 2 Oct 2023, 09:00am - ",
    "Sat 6 May 2023, 11:30am - ",
    "Tue 14 Mar 2023, 04:00pm - ",
    "Sun 31 Dec 2023, 10:00am - ",
    "Thu 1 Jun 2023, 12:00pm - ",
    "Fri 8 Sep 2023, 08:15am - ",
    "Wed 9 Nov 2022, 03:45pm - ",
    "Mon 3 Apr 2023 - ",
    "Wed 19 Jul 2023 - ",
    "Tue 22 Feb 2023 - ",
    "Thu 26 Jan 2023 - ",
    "Fri 25 Aug 2023 - ",
    "Lun 1 Ene 2024, 9:00 - ",
    "Mar 2 Jul 2024 - ",
    "Mié 3 Abr 2024 - ",
    "Jue 5 Ago 2024 - ",
    "Vie 6 Dic 2024 - ",
    "Sáb 7 Feb 2024 - ",
    "Dom 8 Sep 2024 - ",
)


def test_a_splose_date_prefix_never_changes_the_category() -> None:
    categorizer = free_text_categorizer()
    changed = []
    for index, entry in enumerate(read_corpus(CORPUS / "tuning.yaml")):
        alone = placed(categorizer, entry.text)
        # Two prefixes per entry, in turn: every prefix meets every kind of line.
        count = len(DATE_PREFIXES)
        for prefix in (DATE_PREFIXES[index % count], DATE_PREFIXES[(index * 7 + 3) % count]):
            dated = placed(categorizer, prefix + entry.text)
            if dated != alone:
                changed.append(f"  {prefix + entry.text!r}: {dated}, alone {alone}")
    assert not changed, "\n".join(changed)
