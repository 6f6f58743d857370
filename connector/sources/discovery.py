"""Source types by name: which adapter, config model and mapping serve each `type:`.

Entries are "module:attribute" strings imported on first use, so that adding a vendor is one
line here and no import side effects run for vendors a deployment does not use.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connector.mapping.kit import SourceMapping
    from connector.settings import SourceConfig
    from connector.sources.adapter import Adapter


@dataclass(frozen=True)
class SourceType:
    name: str
    adapter_path: str
    config_path: str
    mapping_path: str

    def adapter_class(self) -> type[Adapter]:
        return _load(self.adapter_path)  # type: ignore[no-any-return]

    def config_model(self) -> type[SourceConfig]:
        return _load(self.config_path)  # type: ignore[no-any-return]

    def mapping(self) -> SourceMapping:
        return _load(self.mapping_path)  # type: ignore[no-any-return]


_TYPES = {
    "meditrak": ("adapters.meditrak", "mappings.meditrak"),
    "meditrak_import": ("adapters.meditrak_import", "mappings.meditrak_import"),
    "splose": ("adapters.splose", "mappings.splose"),
    "bio_ecko": ("adapters.bio_ecko", "mappings.bio_ecko"),
    "citabox": ("adapters.citabox", "mappings.citabox"),
    "invoice_api": ("adapters.invoice_api", "mappings.invoice_api"),
}


def _load(path: str) -> Any:
    module_name, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


@cache
def source_types() -> dict[str, SourceType]:
    """Every source type whose adapter module is installed."""
    found: dict[str, SourceType] = {}
    for name, (adapter_module, mapping_module) in _TYPES.items():
        if importlib.util.find_spec(adapter_module) is None:
            continue
        found[name] = SourceType(
            name,
            adapter_path=f"{adapter_module}:Adapter",
            config_path=f"{adapter_module}:Config",
            mapping_path=f"{mapping_module}:MAPPING",
        )
    return found


def source_type(name: str) -> SourceType:
    return source_types()[name]
