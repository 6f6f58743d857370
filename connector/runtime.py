"""Process-wide tuning for long syncs, applied once by each entry point (CLI, benchmark)."""

from __future__ import annotations

import gc

# A sync allocates a few dozen short-lived containers per record (payload dicts, models,
# row tuples) that reference counting frees; almost none form cycles. At the default
# generation-0 threshold of 700 the collector ran every few records and cost 15-20% of a
# list-only sync's CPU (docs/performance.md). Cycles are still collected, just in larger
# steps; memory stays flat (scenario d of the benchmark).
GEN0_THRESHOLD = 50_000


def tune_garbage_collector() -> None:
    """Freeze what is alive now (imports, config: it lives as long as the process) out of
    the collector's sight, and let the collector run less often."""
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, GEN0_THRESHOLD), gen1, gen2)
