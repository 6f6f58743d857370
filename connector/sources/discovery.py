"""Vendor discovery: which adapter, config model, mapping and sandbox dialect serve each `type:`.

A vendor declares itself with one `VendorManifest`; nothing in `connector/` lists vendors.
Built-in vendors put theirs in a module-level `MANIFEST` of their `adapters/<vendor>.py` and
are found by scanning the `adapters` package; a separately installed package declares an entry
point in the `invoice_connector.vendors` group that points at its manifest (see
docs/adding-a-source.md). The manifest's other parts are "module:attribute" strings imported on
first use, so a deployment pays only for the vendors it syncs.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from itertools import chain
from typing import TYPE_CHECKING, Any

from connector.errors import ConfigError

if TYPE_CHECKING:
    from connector.mapping.kit import SourceMapping
    from connector.settings import SourceConfig
    from connector.sources.adapter import Adapter

# The package scanned for built-in vendors, and the entry-point group of installed ones.
BUILTIN_PACKAGE = "adapters"
ENTRY_POINT_GROUP = "invoice_connector.vendors"

_TYPE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_OBJECT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class VendorManifest:
    """Everything the connector needs to know about one vendor, as lazy "module:attribute"
    paths: the config `type:` word, the adapter class, its config model, the mapping object and,
    optionally, the sandbox dialect class that fakes the vendor's API.

    `sandbox_port_offset` fixes the dialect's port when the sandbox runs on a fixed base port
    (base_port + offset); None gives it a free port instead.
    """

    type: str
    adapter: str
    config: str
    mapping: str
    sandbox_dialect: str | None = None
    sandbox_port_offset: int | None = None

    def problems(self) -> list[str]:
        """What is wrong with this manifest's declarations (nothing imported yet)."""
        found = []
        if not isinstance(self.type, str) or not _TYPE_NAME.match(self.type):
            found.append(f"type {self.type!r} must be lowercase letters, digits and '_'")
        paths = {"adapter": self.adapter, "config": self.config, "mapping": self.mapping}
        if self.sandbox_dialect is not None:
            paths["sandbox_dialect"] = self.sandbox_dialect
        for part, path in paths.items():
            if not isinstance(path, str) or not _OBJECT_PATH.match(path):
                found.append(f"{part} {path!r} is not a 'module:attribute' path")
        offset = self.sandbox_port_offset
        if offset is not None:
            if self.sandbox_dialect is None:
                found.append("sandbox_port_offset is set but there is no sandbox_dialect")
            if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
                found.append(f"sandbox_port_offset {offset!r} must be a non-negative integer")
        return found


@dataclass(frozen=True)
class SourceType:
    """A discovered vendor: its manifest and where it was declared (for error messages)."""

    manifest: VendorManifest
    origin: str

    @property
    def name(self) -> str:
        return self.manifest.type

    def adapter_class(self) -> type[Adapter]:
        from connector.sources.adapter import Adapter

        return self._load_class("adapter", self.manifest.adapter, Adapter)

    def config_model(self) -> type[SourceConfig]:
        from connector.settings import SourceConfig

        return self._load_class("config", self.manifest.config, SourceConfig)

    def mapping(self) -> SourceMapping:
        from connector.mapping.kit import SourceMapping

        mapping = self._load("mapping", self.manifest.mapping)
        if not isinstance(mapping, SourceMapping):
            raise self._error("mapping", self.manifest.mapping, "is not a SourceMapping")
        return mapping

    def sandbox_dialect_class(self) -> type[Any] | None:
        """The sandbox dialect class, or None when the vendor has none. The sandbox checks
        that it is a `Dialect` (this layer does not know the sandbox)."""
        path = self.manifest.sandbox_dialect
        if path is None:
            return None
        cls = self._load("sandbox_dialect", path)
        if not isinstance(cls, type):
            raise self._error("sandbox_dialect", path, "is not a class")
        return cls

    def _load_class(self, part: str, path: str, base: type[Any]) -> type[Any]:
        cls = self._load(part, path)
        if isinstance(cls, type) and issubclass(cls, base):
            return cls
        raise self._error(part, path, f"is not a subclass of {base.__name__}")

    def _load(self, part: str, path: str) -> Any:
        module_name, _, attribute = path.partition(":")
        # An ImportError raised inside the vendor's module is its own bug: it propagates as is.
        module = importlib.import_module(module_name)
        try:
            return getattr(module, attribute)
        except AttributeError:
            problem = f"names nothing: {module_name} has no {attribute}"
            raise self._error(part, path, problem) from None

    def _error(self, part: str, path: str, problem: str) -> ConfigError:
        return ConfigError(
            [f"vendor {self.name!r} ({self.origin}): {part} {path!r} {problem}"],
            origin="vendor discovery",
        )


def _builtin_manifests(problems: list[str]) -> Iterator[tuple[str, Any]]:
    """(module name, its MANIFEST) for every vendor module of the built-in package.

    Private modules (leading underscore) are helpers shared by vendors, not vendors. A public
    module without a MANIFEST is an error rather than skipped: a vendor must not vanish from
    the config because its manifest was forgotten.
    """
    package = importlib.import_module(BUILTIN_PACKAGE)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.ispkg:
            continue
        module_name = f"{BUILTIN_PACKAGE}.{info.name}"
        module = importlib.import_module(module_name)
        manifest = getattr(module, "MANIFEST", None)
        if manifest is None:
            problems.append(f"{module_name}: defines no MANIFEST (a VendorManifest)")
            continue
        yield module_name, manifest


def _installed_manifests(problems: list[str]) -> Iterator[tuple[str, Any]]:
    """(entry point description, the object it names) for every installed vendor package."""
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        origin = f"entry point {point.name} = {point.value}"
        try:
            manifest = point.load()
        except (ImportError, AttributeError) as exc:
            # An installed package is outside this project: name it and go on listing.
            problems.append(f"{origin}: cannot be loaded ({type(exc).__name__}: {exc})")
            continue
        if isinstance(manifest, VendorManifest) and manifest.type != point.name:
            problems.append(f"{origin}: names type {manifest.type!r}; name the entry point so")
            continue
        yield origin, manifest


@cache
def source_types() -> dict[str, SourceType]:
    """Every vendor: the built-in ones, then those of installed packages, by `type:` word.

    Raises ConfigError listing every broken or conflicting manifest at once.
    """
    problems: list[str] = []
    found: dict[str, SourceType] = {}
    # Lazily chained, so that problems are listed in the order of the modules declaring them.
    declared = chain(_builtin_manifests(problems), _installed_manifests(problems))
    for origin, manifest in declared:
        if not isinstance(manifest, VendorManifest):
            kind = type(manifest).__name__
            problems.append(f"{origin}: declares a {kind}, not a VendorManifest")
            continue
        own = manifest.problems()
        if own:
            problems.extend(f"{origin}: {problem}" for problem in own)
            continue
        known = found.get(manifest.type)
        if known is not None:
            # A package may also publish a built-in's manifest as an entry point: same object.
            if known.manifest is not manifest:
                problems.append(
                    f"{origin}: type {manifest.type!r} is already declared by {known.origin}"
                )
            continue
        found[manifest.type] = SourceType(manifest, origin)
    if problems:
        raise ConfigError(problems, origin="vendor discovery")
    return found


def source_type(name: str) -> SourceType:
    return source_types()[name]
