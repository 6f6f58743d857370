"""A vendor added by new files only: docs/adding-a-source.md followed as written.

The Acme Billing package (tests/fixtures/vendor_plugin/acme_billing: adapter, config, mapping,
sandbox dialect, manifest) is copied into a temporary directory beside the `.dist-info` folder
an installer would write, whose entry point in the `invoice_connector.vendors` group names the
manifest. The sandbox serves Acme through the package's own dialect and the real `connector`
executable syncs it into a SQLite file. No file of the project is written.
"""

from __future__ import annotations

import importlib
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from subprocess import CompletedProcess

from connector.cli.demo import sandbox_sources
from connector.model import InvoiceStatus
from connector.sandbox import SandboxOptions, SandboxServer, item_total
from connector.settings import StoreSettings
from connector.sources.discovery import source_type, source_types
from connector.store import Store
from tests.conftest import FAST_HTTP, seed_registry, write_config

PACKAGE = Path(__file__).resolve().parent / "fixtures" / "vendor_plugin" / "acme_billing"
ENTRY_POINTS = "[invoice_connector.vendors]\nacme_billing = acme_billing.manifest:MANIFEST\n"
STATUS_OF_STATE = {
    "paid": InvoiceStatus.PAID,
    "unpaid": InvoiceStatus.UNPAID,
    "pending": InvoiceStatus.PENDING,
    "void": InvoiceStatus.VOID,
}


def install(site: Path, *, with_entry_point: bool = True) -> Path:
    """What `pip install acme_billing` leaves in site-packages: the package and its metadata."""
    shutil.copytree(PACKAGE, site / "acme_billing", ignore=shutil.ignore_patterns("__pycache__"))
    info = site / "acme_billing-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: acme_billing\nVersion: 0.1\n", encoding="utf-8"
    )
    if with_entry_point:
        (info / "entry_points.txt").write_text(ENTRY_POINTS, encoding="utf-8")
    return site


@contextmanager
def on_sys_path(site: Path) -> Iterator[None]:
    """`site` importable in this process, with discovery's cache cleared on the way in and out."""
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    source_types.cache_clear()
    try:
        yield
    finally:
        sys.path.remove(str(site))
        for name in [m for m in sys.modules if m == "acme_billing" or m.startswith("acme_")]:
            del sys.modules[name]
        importlib.invalidate_caches()
        source_types.cache_clear()


def test_an_installed_vendor_package_syncs_with_the_real_executable(
    tmp_path: Path, connector: Callable[..., CompletedProcess[str]]
) -> None:
    site = install(tmp_path / "site")
    with on_sys_path(site):
        acme = source_type("acme_billing")
        assert acme.origin == "entry point acme_billing = acme_billing.manifest:MANIFEST"
        options = SandboxOptions(invoices=60, seed=11, defect_rate=0.0, dialects=("acme_billing",))
        with SandboxServer(options) as server:
            sources = sandbox_sources(server, acme_billing={"page_size": 25, "http": FAST_HTTP})
            document = {"store": {"url": "store.db"}, "sources": sources}
            config_path = write_config(tmp_path / "connector.yaml", document)
            url = StoreSettings(url="store.db").sqlalchemy_url(tmp_path)
            seed_registry(server, url)

            # A user's process: the package is found through PYTHONPATH and its entry point.
            synced = connector("--config", str(config_path), "sync", env={"PYTHONPATH": str(site)})
            assert synced.returncode == 0, synced.stdout + synced.stderr

            truth = {invoice.id: invoice for invoice in server.dataset("acme_billing").invoices}
            with Store(url) as store:
                stored = {invoice.id: invoice for invoice in store.iter_invoices("acme_billing")}
                assert store.count_quarantined("acme_billing") == 0
    assert set(stored) == set(truth) and len(truth) == 60
    for invoice_id, invoice in stored.items():
        served = truth[invoice_id]
        assert invoice.invoice_number == served.number
        assert invoice.invoice_date == served.invoice_date
        assert invoice.total_amount == served.total
        assert invoice.facility == served.facility
        assert invoice.status is STATUS_OF_STATE[served.status]
        assert invoice.patient.policy_number == served.policy_number
        assert [item.total for item in invoice.items] == [item_total(i) for i in served.items]
        assert sum((item.total for item in invoice.items), Decimal("0.00")) == served.total
        assert [item.category for item in invoice.items] == [i.category for i in served.items]


def test_the_package_alone_is_not_a_vendor_without_its_entry_point(tmp_path: Path) -> None:
    # The control for the test above: discovery found Acme by its entry point, nothing else.
    site = install(tmp_path / "site", with_entry_point=False)
    with on_sys_path(site):
        assert importlib.import_module("acme_billing.manifest").MANIFEST.type == "acme_billing"
        assert "acme_billing" not in source_types()
        assert {"meditrak", "splose", "invoice_api"} <= set(source_types())
