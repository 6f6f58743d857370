"""Local fake vendor APIs ("the sandbox") that follow each vendor's documented contract.

Used by the demo, the integration tests and the benchmarks: `SandboxServer` runs one port per
dialect in a background thread, serving a deterministic `Dataset` with known defects. Which
dialects exist is vendor discovery's answer (each manifest's `sandbox_dialect`); the rendering
and parsing helpers are exported for dialects written outside this package.
"""

from ._anomaly import ANOMALIES
from ._dataset import (
    CANONICAL_STATUSES,
    EXPECTED_REASON,
    Dataset,
    SandboxInvoice,
    SandboxItem,
    generate_dataset,
    item_total,
)
from ._dialect import (
    Dialect,
    ListShape,
    available_dialects,
    iso_z,
    json_response,
    load_dialect,
    money,
    parse_int,
    parse_iso_date,
    parse_iso_datetime,
    port_offset,
)
from ._server import SandboxOptions, SandboxServer, serve_forever

__all__ = [
    "ANOMALIES",
    "CANONICAL_STATUSES",
    "EXPECTED_REASON",
    "Dataset",
    "Dialect",
    "ListShape",
    "SandboxInvoice",
    "SandboxItem",
    "SandboxOptions",
    "SandboxServer",
    "available_dialects",
    "generate_dataset",
    "iso_z",
    "item_total",
    "json_response",
    "load_dialect",
    "money",
    "parse_int",
    "parse_iso_date",
    "parse_iso_datetime",
    "port_offset",
    "serve_forever",
]
