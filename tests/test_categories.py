"""Category rules: shipped English/Spanish rules, per-source maps, rule files merged in front,
the fallback category, `categories explain`, and every vendor's fixture payloads."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from connector.cli.app import get_app
from connector.config import build_config
from connector.errors import ConfigError, RecordError
from connector.issues import Reason, errors_only
from connector.model import Category
from connector.pipeline.categories import (
    FALLBACK_RULE,
    Categorizer,
    categorizer_for,
    fallback_warnings,
    load_rule_set,
    normalize_text,
)
from connector.pipeline.engine import RecordProcessor
from connector.pipeline.validation import validate_invoice
from mappings.meditrak_import import MAPPING as IMPORT_MAPPING

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RULES = load_rule_set()


def default_rules(*keys: str, fallback: Category | None = None) -> Categorizer:
    return RULES.categorizer(list(keys), fallback=fallback)


@pytest.mark.parametrize(
    ("description", "category", "rule"),
    [
        # Spanish, accents and case ignored
        ("Consulta médica general", Category.CONSULTATION, "keyword:consultation/consulta"),
        ("HEMOGRAMA COMPLETO", Category.LABORATORY, "keyword:laboratory/hemograma"),
        ("Radiografía de tórax", Category.RADIOLOGY, "keyword:radiology/radiografia"),
        ("Ultrasonido abdominal", Category.RADIOLOGY, "keyword:radiology/ultrasonido"),
        ("Atención de emergencia", Category.EMERGENCY, "keyword:emergency/emergencia"),
        ("Limpieza dental", Category.DENTAL, "keyword:dental/dental"),
        ("Sesión de fisioterapia", Category.PHYSIOTHERAPY, "keyword:physiotherapy/fisioterapia"),
        ("Medicamentos", Category.PHARMACY, "keyword:pharmacy/medicamentos"),
        ("Examen de la vista", Category.OPTICAL, "keyword:optical/vista"),
        ("Control prenatal", Category.OBSTETRICS, "keyword:obstetrics/prenatal"),
        ("Prueba de embarazo", Category.LABORATORY, "keyword:laboratory/prueba de embarazo"),
        ("Curación de herida", Category.SURGERY, "keyword:surgery/herida"),
        # English
        ("General Consultation", Category.CONSULTATION, "keyword:consultation/consultation"),
        ("Follow-up Visit", Category.CONSULTATION, "keyword:consultation/visit"),
        ("Full Blood Count", Category.LABORATORY, "keyword:laboratory/blood count"),
        ("Malaria Test", Category.LABORATORY, "keyword:laboratory/malaria"),
        ("X-Ray", Category.RADIOLOGY, "keyword:radiology/x ray"),
        ("MRI Scan", Category.RADIOLOGY, "keyword:radiology/mri"),
        ("Ultrasound", Category.RADIOLOGY, "keyword:radiology/ultrasound"),
        ("Pain Medication", Category.PHARMACY, "keyword:pharmacy/medication"),
        ("Emergency Room Fee", Category.EMERGENCY, "keyword:emergency/emergency"),
        ("Wound Care", Category.SURGERY, "keyword:surgery/wound"),
        ("Root Canal", Category.DENTAL, "keyword:dental/root canal"),
        ("Sports Massage", Category.PHYSIOTHERAPY, "keyword:physiotherapy/massage"),
        ("Postnatal Check", Category.OBSTETRICS, "keyword:obstetrics/postnatal"),
        ("Contact Lenses", Category.OPTICAL, "keyword:optical/contact lenses"),
        ("Eye Exam", Category.OPTICAL, "keyword:optical/eye"),
    ],
)
def test_description_keywords_english_and_spanish(
    description: str, category: Category, rule: str
) -> None:
    match = default_rules()(None, description)
    assert (match.category, match.rule) == (category, rule)


@pytest.mark.parametrize(
    ("description", "rule"),
    [
        ("Prenatal ultrasound", "keyword:obstetrics/ultrasound+prenatal"),
        ("Ultrasound scan, 20 weeks pregnancy", "keyword:obstetrics/ultrasound+pregnancy"),
        ("Ultrasonido obstétrico", "keyword:obstetrics/ultrasonido+obstetrico"),
        ("Ecografía de embarazo", "keyword:obstetrics/ecografia+embarazo"),
    ],
)
def test_ultrasound_during_pregnancy_is_obstetrics(description: str, rule: str) -> None:
    match = default_rules()(None, description)
    assert (match.category, match.rule) == (Category.OBSTETRICS, rule)


def test_exact_category_word_wins_before_any_rule() -> None:
    match = default_rules("bio_ecko")(" Laboratory ", "Prenatal ultrasound")
    assert (match.category, match.rule) == (Category.LABORATORY, "exact:category")


@pytest.mark.parametrize(
    ("keys", "word", "category", "rule"),
    [
        (("bio_ecko",), "General Medicine", Category.CONSULTATION, "map:bio_ecko/General Medicine"),
        (("bio_ecko",), "PATHOLOGY", Category.LABORATORY, "map:bio_ecko/Pathology"),
        (
            ("bio_ecko",),
            "Obstetrics and Gynaecology",
            Category.OBSTETRICS,
            "map:bio_ecko/Obstetrics and Gynaecology",
        ),
        (
            ("bio_ecko",),
            "obstetrics & gynaecology",
            Category.OBSTETRICS,
            "map:bio_ecko/Obstetrics & Gynaecology",
        ),
        (("bio_ecko",), "Ophthalmology", Category.OPTICAL, "map:bio_ecko/Ophthalmology"),
        (("bio_ecko",), "Casualty", Category.EMERGENCY, "map:bio_ecko/Casualty"),
        (("splose",), "appointment", Category.CONSULTATION, "map:splose/appointment"),
    ],
)
def test_source_maps_of_departments_and_item_types(
    keys: tuple[str, ...], word: str, category: Category, rule: str
) -> None:
    # The description would say otherwise: the exact map comes first.
    match = default_rules(*keys)(word, "Hemograma")
    assert (match.category, match.rule) == (category, rule)


def test_maps_belong_to_their_source() -> None:
    # Bio Ecko's department map is not CitaBox's: there the word only meets the keyword rules.
    match = default_rules("citabox")("Pathology", None)
    assert match.category is Category.LABORATORY
    assert match.rule == "keyword:laboratory/pathology@word"


def test_word_is_tried_by_keyword_rules_when_the_description_says_nothing() -> None:
    match = default_rules("bio_ecko")("Cardiac Surgery", "Bypass")
    assert (match.category, match.rule) == (Category.SURGERY, "keyword:surgery/surgery@word")


def test_meditrak_sources_never_guess_from_the_description() -> None:
    # MediTrak-contract sources send the category itself: a wrong word is a defect to report.
    for source in ("meditrak", "meditrak_import"):
        match = default_rules(source)("miscellaneous", "X-Ray")
        assert (match.category, match.rule) == (None, None)
        assert default_rules(source)("radiology", "X-Ray").rule == "exact:category"


def test_unmatched_item_has_no_category_and_no_rule() -> None:
    assert default_rules("citabox")(None, "Zumba avanzada").category is None
    assert default_rules("citabox")(None, None).category is None


def test_normalize_text_folds_accents_case_and_punctuation() -> None:
    assert normalize_text("  Radiografía  de TÓRAX!! ") == "radiografia de torax"
    assert normalize_text("Obstetrics & Gynaecology") == "obstetrics gynaecology"


# ----------------------------------------------------------------------------- rules files


def write(tmp_path: Path, text: str, name: str = "rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_extra_rules_file_is_merged_in_front_of_the_defaults(tmp_path: Path) -> None:
    extra = write(
        tmp_path,
        """
sources:
  bio_ecko:
    map:
      Pathology: radiology        # overrides the shipped entry
      Cardiology: surgery
rules:
  - name: zumba
    category: physiotherapy
    pattern: "zumba|aerobic"
  - category: dental
    keywords: [hemograma]       # silly, but first: proves the order
""",
    )
    rules = load_rule_set(extra)
    categorize = rules.categorizer(["bio_ecko"])
    assert categorize("Pathology", None).category is Category.RADIOLOGY
    assert categorize("Cardiology", None).rule == "map:bio_ecko/Cardiology"
    assert categorize("General Medicine", None).category is Category.CONSULTATION
    assert categorize(None, "Zumba avanzada").rule == "pattern:physiotherapy/zumba"
    assert categorize(None, "Hemograma").category is Category.DENTAL
    assert categorize(None, "Radiografía").category is Category.RADIOLOGY


def test_source_name_map_overrides_the_type_map(tmp_path: Path) -> None:
    extra = write(tmp_path, "sources:\n  clinic-2:\n    map:\n      Pathology: surgery\n")
    config = build_config(
        {
            "sources": [
                {
                    "type": "meditrak_import",
                    "name": "clinic-2",
                    "base_url": "http://127.0.0.1:1/api/",
                    "api_key": "k",
                    "category_rules": str(extra),
                }
            ]
        },
        env={},
    )
    categorize = categorizer_for(config.sources[0])
    assert categorize("Pathology", None).rule == "map:clinic-2/Pathology"
    # Still a MediTrak-contract source: the type's "no description rules" holds.
    assert categorize("misc", "X-Ray").category is None


def test_invalid_rules_file_lists_every_problem(tmp_path: Path) -> None:
    extra = write(
        tmp_path,
        """
colour: blue
sources:
  bio_ecko:
    map:
      Pathology: lab
      Radiology: radiology
      RADIOLOGY: surgery
rules:
  - category: laboratory
  - category: dentistry
    keywords: [tooth]
  - category: radiology
    pattern: "([unclosed"
    name: broken
  - category: surgery
    pattern: "cut"
  - category: optical
    keywords: ["***"]
""",
    )
    with pytest.raises(ConfigError) as caught:
        load_rule_set(extra)
    text = str(caught.value)
    problems = caught.value.problems
    assert all(p.startswith(str(extra)) for p in problems)
    for needle in (
        "colour",
        "sources.bio_ecko.map.Pathology",
        "rules[0]: a rule needs either `keywords` or `pattern`",
        "rules[1].category",
        "not a valid regex",
        "a pattern rule needs a `name`",
        "has no letters or digits",
    ):
        assert needle in text, needle
    assert len(problems) >= 7


def test_duplicate_map_words_are_reported(tmp_path: Path) -> None:
    extra = write(
        tmp_path, "sources:\n  x:\n    map:\n      Radiology: radiology\n      RADIOLOGY: surgery\n"
    )
    with pytest.raises(ConfigError, match="same word"):
        load_rule_set(extra)


def test_unreadable_or_malformed_rules_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_rule_set(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_rule_set(write(tmp_path, "rules: [\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_rule_set(write(tmp_path, "- 1\n- 2\n"))


def test_config_rejects_an_unknown_fallback_category() -> None:
    with pytest.raises(ConfigError, match="fallback_category"):
        build_config(
            {
                "sources": [
                    {
                        "type": "meditrak_import",
                        "name": "x",
                        "base_url": "http://127.0.0.1:1/api/",
                        "api_key": "k",
                        "fallback_category": "misc",
                    }
                ]
            },
            env={},
        )


# ----------------------------------------------------------------------------- fallback


def import_record(category: str) -> dict[str, Any]:
    return {
        "id": "INV-1",
        "invoice_number": "2025-000001",
        "invoice_date": "2025-03-01",
        "total_amount": "40.00",
        "status": "paid",
        "patient": {"name": "John Doe", "policy_number": "POL-123456"},
        "items": [
            {
                "category": category,
                "description": "Something odd",
                "quantity": 1,
                "unit_price": "40.00",
                "total": "40.00",
            }
        ],
    }


def processor(fallback: Category | None) -> RecordProcessor:
    context = IMPORT_MAPPING.context(
        "clinic",
        currency="USD",
        categorize=default_rules("meditrak_import", fallback=fallback),
    )
    return RecordProcessor(IMPORT_MAPPING, context, policy_check=fallback_warnings)


def test_unmapped_item_is_quarantined_as_category_unmapped() -> None:
    accepted, rejected, _ = processor(None).process(import_record("miscellaneous"))
    assert accepted is None and rejected is not None
    codes = [(i.code, i.severity) for i in rejected.issues]
    assert codes == [(Reason.CATEGORY_UNMAPPED, "error")]


def test_fallback_category_accepts_the_invoice_with_a_warning() -> None:
    accepted, rejected, _ = processor(Category.CONSULTATION).process(import_record("miscellaneous"))
    assert rejected is None and accepted is not None
    item = accepted.invoice.items[0]
    assert (item.category, item.category_rule) == (Category.CONSULTATION, FALLBACK_RULE)
    issues = validate_invoice(accepted.invoice, fallback_warnings)
    assert not errors_only(issues)
    assert [(i.code, i.severity, i.path) for i in issues] == [
        (Reason.CATEGORY_UNMAPPED, "warning", "items[0].category")
    ]


def test_fallback_is_not_used_when_a_rule_matches() -> None:
    accepted, _, _ = processor(Category.CONSULTATION).process(import_record("radiology"))
    assert accepted is not None
    assert accepted.invoice.items[0].category_rule == "exact:category"
    assert fallback_warnings(accepted.invoice) == []


# ----------------------------------------------------------------------------- explain CLI


def test_categories_explain_prints_the_rules_tried_and_the_match(tmp_path: Path) -> None:
    runner = CliRunner()
    config = tmp_path / "none.yaml"
    result = runner.invoke(
        get_app(),
        ["-c", str(config), "categories", "explain", "Radiografía de tórax", "--source", "citabox"],
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "rules for citabox" in lines[0]
    assert any(line.strip().startswith("-") and "exact:category" in line for line in lines)
    assert any("laboratory" in line and "no keyword found" in line for line in lines)
    assert any(line.strip().startswith("MATCH") and "radiografia" in line for line in lines)
    assert lines[-1] == "=> radiology  (rule keyword:radiology/radiografia)"


def test_categories_explain_with_word_and_unmatched_text(tmp_path: Path) -> None:
    runner = CliRunner()
    app = get_app()
    cfg = ["-c", str(tmp_path / "none.yaml")]
    mapped = runner.invoke(
        app, [*cfg, "categories", "explain", "anything", "-s", "bio_ecko", "-w", "Pathology"]
    )
    assert mapped.exit_code == 0, mapped.output
    assert mapped.output.splitlines()[-1] == "=> laboratory  (rule map:bio_ecko/Pathology)"
    unmatched = runner.invoke(app, [*cfg, "categories", "explain", "Zumba"])
    assert unmatched.exit_code == 1
    assert "CATEGORY_UNMAPPED" in unmatched.output
    unknown = runner.invoke(app, [*cfg, "categories", "explain", "X", "-s", "nope"])
    assert unknown.exit_code == 2


def test_categories_explain_uses_the_configured_source(tmp_path: Path) -> None:
    extra = write(tmp_path, "rules:\n  - category: optical\n    keywords: [zumba]\n")
    config = tmp_path / "connector.yaml"
    config.write_text(
        "sources:\n"
        "  - type: citabox\n"
        "    name: clinic-cr\n"
        "    base_url: http://127.0.0.1:1/\n"
        "    email: a@b.c\n"
        "    password: pw\n"
        "    clinic_id: c1\n"
        f"    category_rules: {extra}\n"
        "    fallback_category: consultation\n",
        encoding="utf-8",
    )
    if importlib.util.find_spec("adapters.citabox") is None:
        pytest.skip("the CitaBox adapter is not installed yet")
    runner = CliRunner()
    app = get_app()
    result = runner.invoke(
        app, ["-c", str(config), "categories", "explain", "Zumba", "-s", "clinic-cr"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "=> optical  (rule keyword:optical/zumba)"
    fallback = runner.invoke(
        app, ["-c", str(config), "categories", "explain", "Yoga", "-s", "clinic-cr"]
    )
    assert fallback.output.splitlines()[-1] == "=> consultation  (rule fallback)"


# ----------------------------------------------------------------------------- vendor fixtures


def vendor_mapping(vendor: str) -> Any:
    if importlib.util.find_spec(f"mappings.{vendor}") is None:
        pytest.skip(f"mappings/{vendor}.py is not written yet")
    module = importlib.import_module(f"mappings.{vendor}")
    return module.MAPPING


def map_fixture(vendor: str, raw: Any) -> Any:
    mapping = vendor_mapping(vendor)
    ctx = mapping.context(vendor, currency="USD", categorize=default_rules(vendor))
    return mapping.to_canonical(raw, ctx)


def load_fixture(vendor: str, name: str) -> Any:
    return json.loads((FIXTURES / vendor / name).read_text(encoding="utf-8"))


# Per vendor fixture: (category, rule) of every item, in order.
EXPECTED: dict[tuple[str, str], list[tuple[Category, str]]] = {
    ("bio_ecko", "detail_documented.json"): [
        (Category.CONSULTATION, "map:bio_ecko/General Medicine"),
        (Category.SURGERY, "exact:category"),
        (Category.PHARMACY, "exact:category"),
    ],
    ("bio_ecko", "detail_inter_state.json"): [
        (Category.RADIOLOGY, "exact:category"),
        (Category.PHYSIOTHERAPY, "exact:category"),
    ],
    ("splose", "invoice_doc_example.json"): [
        (Category.CONSULTATION, "keyword:consultation/assessment"),
    ],
    ("splose", "invoice_mixed.json"): [
        (Category.CONSULTATION, "keyword:consultation/consultation"),
        (Category.PHYSIOTHERAPY, "keyword:physiotherapy/physiotherapy"),
        (Category.CONSULTATION, "keyword:consultation/visit"),
        (Category.PHARMACY, "keyword:pharmacy/medication"),
        (Category.PHYSIOTHERAPY, "keyword:physiotherapy/rehabilitation"),
    ],
    ("citabox", "documented_example.json"): [
        (Category.CONSULTATION, "keyword:consultation/consulta"),
    ],
    ("invoice_api", "invoice_discount_amount.json"): [
        (Category.SURGERY, "map:invoice_api/PROCEDURE"),
        (Category.SURGERY, "map:invoice_api/PROCEDURE"),
    ],
    ("invoice_api", "invoice_discount_percent.json"): [
        (Category.LABORATORY, "map:invoice_api/LAB"),
        (Category.LABORATORY, "map:invoice_api/LAB"),
        (Category.LABORATORY, "map:invoice_api/LAB"),
    ],
}


@pytest.mark.parametrize(("vendor", "name"), sorted(EXPECTED))
def test_vendor_fixture_categories_and_rules(vendor: str, name: str) -> None:
    if not (FIXTURES / vendor / name).exists():
        pytest.skip(f"fixture {vendor}/{name} is not there yet")
    invoice = map_fixture(vendor, load_fixture(vendor, name))
    assert [(i.category, i.category_rule) for i in invoice.items] == EXPECTED[(vendor, name)]


CITABOX_QUIRKS = {
    "late_evening_in_san_jose": (Category.EMERGENCY, "keyword:emergency/emergencia"),
    "naive_timestamps_are_clinic_time": (Category.RADIOLOGY, "keyword:radiology/radiografia"),
    "draft_has_no_consecutive_yet": (Category.DENTAL, "keyword:dental/dental"),
    "partial_payment_keeps_paid_amount": (
        Category.PHYSIOTHERAPY,
        "keyword:physiotherapy/fisioterapia",
    ),
    "hacienda_rejected_and_unpaid_is_pending": (
        Category.LABORATORY,
        "keyword:laboratory/hemograma",
    ),
    "amount_as_whole_float_and_string": (Category.PHARMACY, "keyword:pharmacy/medicamentos"),
}


@pytest.mark.parametrize("case", sorted(CITABOX_QUIRKS))
def test_citabox_spanish_free_text_services(case: str) -> None:
    if not (FIXTURES / "citabox" / "quirks.json").exists():
        pytest.skip("citabox quirks fixture is not there yet")
    quirks = load_fixture("citabox", "quirks.json")
    if case not in quirks:
        pytest.skip(f"citabox quirk {case!r} was renamed")
    invoice = map_fixture("citabox", quirks[case]["record"])
    assert [(i.category, i.category_rule) for i in invoice.items] == [CITABOX_QUIRKS[case]]


@pytest.mark.parametrize("vendor", ["bio_ecko", "splose", "citabox", "invoice_api"])
def test_every_vendor_fixture_item_records_its_rule(vendor: str) -> None:
    """Whatever the fixture: a categorised item names the rule that placed it, and the
    shipped rules place every item of every well-formed fixture."""
    vendor_mapping(vendor)
    mapped = 0
    for path in sorted((FIXTURES / vendor).glob("*.json")):
        if path.name.endswith(".expected.json"):
            continue
        raw = json.loads(path.read_text(encoding="utf-8"))
        try:
            invoice = map_fixture(vendor, raw)
        except (RecordError, TypeError, ValueError, KeyError, AttributeError):
            continue  # not one invoice payload (collections of cases, patients, summaries)
        for item in invoice.items:
            assert item.category is not None, (path.name, item.description)
            assert item.category_rule is not None
            assert item.category_rule.split(":")[0] in ("exact", "map", "keyword", "pattern")
            mapped += 1
    if mapped == 0:
        pytest.skip(f"no {vendor} fixture maps to an invoice with items yet")


# ----------------------------------------------------------------------------- variants, precedence


@pytest.mark.parametrize(
    ("description", "category", "how"),
    [
        # plural and gender variants of a keyword word
        ("Suturas", Category.SURGERY, "sutur"),
        ("Bridges", Category.DENTAL, "plural/gender"),
        ("Lunares", Category.SURGERY, "plural/gender"),
        ("Biopsies", Category.SURGERY, "biops"),
        # a shared Snowball stem
        ("Ear wax removed", Category.SURGERY, "English stem 'remov'"),
        # a drug-family ending from the lexicon
        ("Flucloxacillin 500mg", Category.PHARMACY, "lexicon"),
        ("Atorvastatina 20", Category.PHARMACY, "ends with 'statina'"),
    ],
)
def test_keywords_match_plural_gender_stem_and_ending_variants(
    description: str, category: Category, how: str
) -> None:
    explanation = default_rules().explain(None, description)
    assert explanation.match.category is category
    fired = next(step for step in explanation.steps if step.matched)
    assert how in fired.detail


@pytest.mark.parametrize(
    ("description", "category"),
    [
        # an imaging modality beats the organ or the test it looks at
        ("Thyroid ultrasound", Category.RADIOLOGY),
        ("Liver ultrasound", Category.RADIOLOGY),
        ("Ecografía hepática", Category.RADIOLOGY),
        ("MRI of the eye orbit", Category.RADIOLOGY),
        ("Dental X-ray", Category.RADIOLOGY),
        # ...except in pregnancy, and as a physiotherapy treatment
        ("Obstetric ultrasound", Category.OBSTETRICS),
        ("Fetal ultrasound", Category.OBSTETRICS),
        ("Ecografía del embarazo 20 semanas", Category.OBSTETRICS),
        ("Therapeutic ultrasound", Category.PHYSIOTHERAPY),
        # a medicine's form beats the organ it treats
        ("Eye drops", Category.PHARMACY),
        ("Gotas óticas", Category.PHARMACY),
        # a measured value is laboratory, the same value as a product is pharmacy
        ("Vitamin D level", Category.LABORATORY),
        ("Vitamin D 1000 IU capsules", Category.PHARMACY),
        # removing something is surgery; looking at it a consultation
        ("Mole removal", Category.SURGERY),
        ("Mole check", Category.CONSULTATION),
        # a specialist's consultation, though the department word belongs elsewhere
        ("Haematology consultation", Category.CONSULTATION),
        ("Haematology", Category.LABORATORY),
    ],
)
def test_documented_precedence(description: str, category: Category) -> None:
    assert default_rules()(None, description).category is category


def test_explain_says_which_later_rule_lost() -> None:
    explanation = default_rules().explain(None, "Ultrasound-guided biopsy")
    assert explanation.match.rule == "keyword:radiology/ultrasound"
    beaten = [s for s in explanation.steps if not s.matched and "precedence:" in s.detail]
    assert any(
        s.rule == "keyword:surgery/biopsy"
        and "keyword:radiology/ultrasound comes first" in s.detail
        for s in beaten
    ), [s.detail for s in beaten]


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        (
            "lexicon:\n  Bad-Name: [x]\n  mine: ['*ab', 'ok*']\n",
            ["'Bad-Name' is not a lexicon name", "'*ab' is an `*ending` shorter than three"],
        ),
        (
            "non_clinical:\n  - keywords: [fee]\nrules:\n  - category: dental\n"
            "    keywords: ['=*tooth']\n",
            ["non_clinical[0].name", "'=*tooth' uses more than one mark"],
        ),
        (
            "non_clinical:\n  - name: parking\n    keywords: ['@nowhere']\n",
            ["non_clinical[0]: no lexicon list 'nowhere'"],
        ),
    ],
)
def test_rules_files_check_lexicons_and_keyword_marks(
    tmp_path: Path, text: str, needles: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_rule_set(write(tmp_path, text))
    for needle in needles:
        assert needle in str(caught.value), (needle, str(caught.value))


def test_a_rules_file_adds_lexicon_entries_and_non_clinical_kinds(tmp_path: Path) -> None:
    extra = write(
        tmp_path,
        """
lexicon:
  drug_names: [panadol]
non_clinical:
  - name: locker hire
    keywords: [locker*]
""",
    )
    categorize = load_rule_set(extra).categorizer(["citabox"])
    assert categorize(None, "Panadol").category is Category.PHARMACY
    assert categorize(None, "Locker hire").rule == "non-clinical:locker hire"
    assert categorize(None, "Amoxicillin").category is Category.PHARMACY
