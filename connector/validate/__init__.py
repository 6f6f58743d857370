"""`connector validate`: a dry run that tells a vendor whether its API is ready for MediTrak.

For one configured source it checks the connection step by step (`probe`: DNS, TCP, TLS, login
and refresh, list and detail endpoints, derived from the exchanges `recording` notes), reads a
sample of records through the source's own adapter and the engine's record processor
(`sample`, with the sync's checks from `checks`), measures contract compliance per canonical
field and mapping coverage (`compliance`, attributing vendor paths through the mapping's
declared `field_sources`, `fields`), and assembles the verdict and the fixes that would unblock
the most records (`report`). Nothing is written to the store.

The result is a plain JSON-ready dict following `connector.validation-report/1`
(docs/validation-report.md); `connector.reports` renders it.
"""

from connector.validate.report import (
    EXIT_NOT_READY,
    EXIT_READY,
    EXIT_UNREACHABLE,
    SCHEMA,
)
from connector.validate.run import validate_source
from connector.validate.sample import DEFAULT_SAMPLE, ValidateOptions

__all__ = [
    "DEFAULT_SAMPLE",
    "EXIT_NOT_READY",
    "EXIT_READY",
    "EXIT_UNREACHABLE",
    "SCHEMA",
    "ValidateOptions",
    "validate_source",
]
