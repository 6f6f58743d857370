"""How the engine turns one vendor page into a batch: duplicates within a page."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from connector.config import AppConfig
from connector.issues import Reason
from connector.pipeline.engine import Engine
from connector.sources.adapter import SourcePage
from connector.sources.discovery import source_type
from connector.store import Store

FIXTURES = Path(__file__).parent / "fixtures"


def import_record() -> dict[str, object]:
    record = json.loads((FIXTURES / "meditrak_import_record.json").read_text())
    assert isinstance(record, dict)
    return record


def build(tmp_path: Path, records: list[object]) -> tuple[list[str], list[tuple[str, set[str]]]]:
    config = AppConfig.model_validate({"store": {"url": str(tmp_path / "s.db")}, "sources": []})
    source = (
        source_type("meditrak_import")
        .config_model()
        .model_validate(
            {
                "type": "meditrak_import",
                "name": "m",
                "base_url": "http://127.0.0.1:9/",
                "api_key": "k",
            }
        )
    )
    with Store(f"sqlite:///{tmp_path / 's.db'}") as store:
        engine = Engine(config, store)
        batch, _ = engine._build_batch(engine.processor(source), SourcePage(records, None))
    accepted = [a.invoice.id for a in batch.accepted]
    rejected = [(r.record_key, {i.code.value for i in r.issues}) for r in batch.rejected]
    return accepted, rejected


def test_an_identical_copy_in_one_page_is_harmless(tmp_path: Path) -> None:
    record = import_record()
    accepted, rejected = build(tmp_path, [record, copy.deepcopy(record)])
    assert accepted == [record["id"], record["id"]]
    assert rejected == []


def test_two_versions_of_one_id_in_one_page_quarantine_the_later(tmp_path: Path) -> None:
    record = import_record()
    changed = copy.deepcopy(record)
    changed["facility"] = "Another Clinic"
    accepted, rejected = build(tmp_path, [record, changed])
    assert accepted == [record["id"]]
    assert rejected == [(f"{record['id']}#duplicate", {Reason.DUPLICATE_IN_RUN.value})]
