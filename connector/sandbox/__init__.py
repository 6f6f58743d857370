"""Local fake vendor APIs ("the sandbox") that follow each vendor's documented contract.

Used by the demo, the integration tests and the benchmarks: `SandboxServer` runs one port per
dialect in a background thread, serving a deterministic `Dataset` with known defects.
"""

from ._dataset import (
    CANONICAL_STATUSES,
    EXPECTED_REASON,
    Dataset,
    SandboxInvoice,
    SandboxItem,
    generate_dataset,
    item_total,
)
from ._dialect import DIALECTS, Dialect, load_dialect
from ._server import SandboxOptions, SandboxServer, serve_forever

__all__ = [
    "CANONICAL_STATUSES",
    "DIALECTS",
    "EXPECTED_REASON",
    "Dataset",
    "Dialect",
    "SandboxInvoice",
    "SandboxItem",
    "SandboxOptions",
    "SandboxServer",
    "generate_dataset",
    "item_total",
    "load_dialect",
    "serve_forever",
]
