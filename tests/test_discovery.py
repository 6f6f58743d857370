"""Vendor discovery: built-in vendors found by their manifests, and every broken or clashing
manifest reported at once with the module or entry point that declared it.

Broken vendors live in throwaway packages under `tmp_path`, scanned in place of `adapters` or
found through an entry point of a `.dist-info` folder written beside them.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from connector.errors import ConfigError
from connector.sandbox import SandboxOptions, SandboxServer, available_dialects, load_dialect
from connector.sources import discovery
from connector.sources.adapter import Adapter
from connector.sources.discovery import SourceType, VendorManifest, source_type, source_types

BUILT_IN = ("meditrak", "meditrak_import", "splose", "bio_ecko", "citabox", "invoice_api")
# Built-in types without an API of their own to fake (the declarative `rest` source).
WITHOUT_DIALECT = ("rest",)


def manifest_text(type_name: str, **parts: object) -> str:
    """A MANIFEST reusing MediTrak's adapter, config and mapping unless `parts` say otherwise."""
    fields: dict[str, object] = {
        "type": type_name,
        "adapter": "adapters.meditrak:Adapter",
        "config": "adapters.meditrak:Config",
        "mapping": "mappings.meditrak:MAPPING",
        **parts,
    }
    listed = "".join(f"    {key}={value!r},\n" for key, value in fields.items())
    return (
        "from connector.sources.discovery import VendorManifest\n\n"
        f"MANIFEST = VendorManifest(\n{listed})\n"
    )


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An importable directory; discovery's cache is cleared on the way in and out."""
    monkeypatch.syspath_prepend(str(tmp_path))
    source_types.cache_clear()
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith(("fake_", "acme_")):
            del sys.modules[name]
    source_types.cache_clear()


def scanned_package(site: Path, monkeypatch: pytest.MonkeyPatch, modules: dict[str, str]) -> None:
    """A package of vendor modules scanned in place of the built-in `adapters`."""
    package = site / "fake_vendors"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    for name, text in modules.items():
        (package / f"{name}.py").write_text(text, encoding="utf-8")
    monkeypatch.setattr(discovery, "BUILTIN_PACKAGE", "fake_vendors")


def installed(site: Path, entry_points: str, modules: dict[str, str]) -> None:
    """Top-level modules plus a dist-info declaring `entry_points` (one `name = value` a line)."""
    for name, text in modules.items():
        (site / f"{name}.py").write_text(text, encoding="utf-8")
    info = site / "fake_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake_plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[invoice_connector.vendors]\n" + textwrap.dedent(entry_points), encoding="utf-8"
    )


def test_the_built_in_vendors_are_found_by_their_own_manifests() -> None:
    found = source_types()
    assert sorted(found) == sorted((*BUILT_IN, *WITHOUT_DIALECT))
    for name, kind in found.items():
        assert kind.origin == f"adapters.{name}"
        assert issubclass(kind.adapter_class(), Adapter)
        assert kind.config_model().model_fields["type"].default == name
        assert kind.mapping().vendor == name
        if name not in WITHOUT_DIALECT:
            assert load_dialect(name).name == name
    # The sandbox takes its dialects, in port order, from the same manifests.
    assert available_dialects() == BUILT_IN


def test_every_broken_manifest_is_listed_at_once_with_its_module(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scanned_package(
        site,
        monkeypatch,
        {
            "_shared": "HELPER = 1\n",  # private: a helper for vendors, not a vendor
            "fine": manifest_text("fine"),
            "forgotten": "class Adapter: ...\n",
            "not_a_manifest": "MANIFEST = {'type': 'dict'}\n",
            "bad_paths": manifest_text(
                "bad_paths", adapter="adapters.meditrak.Adapter", sandbox_port_offset=-1
            ),
            "twin_one": manifest_text("twin"),
            "twin_two": manifest_text("twin"),
        },
    )
    with pytest.raises(ConfigError) as caught:
        source_types()
    assert caught.value.origin == "vendor discovery"
    assert caught.value.problems == [
        "fake_vendors.bad_paths: adapter 'adapters.meditrak.Adapter' is not a "
        "'module:attribute' path",
        "fake_vendors.bad_paths: sandbox_port_offset is set but there is no sandbox_dialect",
        "fake_vendors.bad_paths: sandbox_port_offset -1 must be a non-negative integer",
        "fake_vendors.forgotten: defines no MANIFEST (a VendorManifest)",
        "fake_vendors.not_a_manifest: declares a dict, not a VendorManifest",
        "fake_vendors.twin_two: type 'twin' is already declared by fake_vendors.twin_one",
    ]


def test_a_module_that_fails_to_import_is_not_skipped(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scanned_package(site, monkeypatch, {"broken": "import fake_missing_dependency\n"})
    with pytest.raises(ModuleNotFoundError, match="fake_missing_dependency"):
        source_types()


def test_entry_points_add_vendors_and_their_problems_name_the_entry_point(
    site: Path,
) -> None:
    installed(
        site,
        """\
        fake_extra = fake_extra:MANIFEST
        meditrak = fake_clash:MANIFEST
        fake_gone = fake_not_installed:MANIFEST
        fake_misnamed = fake_extra:MANIFEST
        """,
        {"fake_extra": manifest_text("fake_extra"), "fake_clash": manifest_text("meditrak")},
    )
    with pytest.raises(ConfigError) as caught:
        source_types()
    assert caught.value.problems == [
        "entry point fake_gone = fake_not_installed:MANIFEST: cannot be loaded "
        "(ModuleNotFoundError: No module named 'fake_not_installed')",
        "entry point fake_misnamed = fake_extra:MANIFEST: names type 'fake_extra'; name the "
        "entry point so",
        "entry point meditrak = fake_clash:MANIFEST: type 'meditrak' is already declared by "
        "adapters.meditrak",
    ]


def test_an_entry_point_vendor_joins_the_built_in_ones(site: Path) -> None:
    installed(
        site, "fake_extra = fake_extra:MANIFEST\n", {"fake_extra": manifest_text("fake_extra")}
    )
    assert set(source_types()) == {*BUILT_IN, *WITHOUT_DIALECT, "fake_extra"}
    assert source_type("fake_extra").origin == "entry point fake_extra = fake_extra:MANIFEST"
    assert source_type("fake_extra").mapping().vendor == "meditrak"


def test_a_manifest_path_to_the_wrong_thing_names_the_vendor_and_its_origin() -> None:
    def kind(
        adapter: str = "adapters.meditrak:Adapter", mapping: str = "mappings.meditrak:MAPPING"
    ) -> SourceType:
        manifest = VendorManifest("odd", adapter, "adapters.meditrak:Config", mapping)
        return SourceType(manifest, "fake.module")

    with pytest.raises(ConfigError, match=r"vendor 'odd' \(fake.module\): mapping .* names noth"):
        kind(mapping="mappings.meditrak:NOPE").mapping()
    with pytest.raises(ConfigError, match=r"adapter 'adapters\.meditrak:Config' is not a subclass"):
        kind(adapter="adapters.meditrak:Config").adapter_class()
    with pytest.raises(ConfigError, match="is not a SourceMapping"):
        kind(mapping="mappings.meditrak:STATUS_MAP").mapping()
    assert kind().sandbox_dialect_class() is None


def test_two_dialects_cannot_share_a_port_offset(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dialect = (
        "from connector.sandbox.meditrak_import import MediTrakImportDialect\n\n"
        "class Twin(MediTrakImportDialect):\n    name = {name!r}\n\n"
    )
    modules = {
        name: dialect.format(name=name)
        + manifest_text(name, sandbox_dialect=f"fake_vendors.{name}:Twin", sandbox_port_offset=1)
        for name in ("fake_a", "fake_b")
    }
    scanned_package(site, monkeypatch, modules)
    options = SandboxOptions(invoices=3, base_port=41000, dialects=("fake_a", "fake_b"))
    with pytest.raises(ValueError, match="'fake_a' and 'fake_b' share port offset 1"):
        SandboxServer(options)
    # Without a fixed base port each takes a free port: no clash.
    with SandboxServer(SandboxOptions(invoices=3, dialects=("fake_a", "fake_b"))) as server:
        assert server.port("fake_a") != server.port("fake_b")
