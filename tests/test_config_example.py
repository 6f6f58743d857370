"""config.example.yaml documents every source type and must stay a valid configuration."""

from __future__ import annotations

import re
from pathlib import Path

from connector.config import load_config
from connector.sources.discovery import source_types

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"


def test_the_example_config_loads_with_its_variables_set() -> None:
    names = set(re.findall(r"\$\{([A-Z_]+)\}", EXAMPLE.read_text(encoding="utf-8")))
    config = load_config(EXAMPLE, env={name: f"value-of-{name}" for name in names})
    assert {s.type for s in config.sources} == set(source_types())
    for source in config.sources:
        assert source.secrets(), f"{source.name} should take its secret from the environment"
        assert all(secret.startswith("value-of-") for secret in source.secrets())


def test_every_source_setting_is_documented() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for source_type in source_types().values():
        for field in source_type.config_model().model_fields:
            assert re.search(rf"\b{field}\b", text), f"{source_type.name}.{field} is undocumented"
