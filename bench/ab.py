"""A/B: the connector of two checkouts against ONE sandbox, interleaved, CPU and wall per sync.

    .venv/bin/python bench/ab.py --other /path/to/other/checkout [--n 50000] [--detail] [--rounds 3]

`bench/run.py` starts each checkout's own sandbox and reports wall time, which on a 2-core
machine moves ±15% from run to run. This script holds everything but the connector still: one
sandbox (this checkout's), the same records, the two connectors alternated, and the process
CPU (user + system, writer thread included) of each sync reported beside its wall time. Each
checkout runs with its own virtual env (`<checkout>/.venv/bin/python`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import DIALECT, sandbox  # noqa: E402  (the benchmark's own sandbox runner)

WORKER = HERE / "ab_worker.py"


def sync_once(checkout: Path, url: str, detail: bool, page_size: int) -> dict[str, float]:
    command = [str(checkout / ".venv/bin/python"), str(WORKER), url, str(detail), str(page_size)]
    done = subprocess.run(command, cwd=checkout, capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--other", type=Path, required=True, help="the checkout to compare with")
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--detail", action="store_true", help="a detail call per invoice")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    page_size = 100 if args.detail else 500
    sides = {"other": args.other.resolve(), "this": HERE.parent}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    with sandbox(args.n, 0) as url:
        for _ in range(args.rounds):
            for name, checkout in sides.items():
                result = sync_once(checkout, url, args.detail, page_size)
                runs[name].append(result)
                print(f"{name:5s} {json.dumps(result)}", flush=True)
    print(f"{DIALECT}, N={args.n}, {'detail' if args.detail else 'list only'}:")
    for name, results in runs.items():
        cpu = [r["cpu_s"] for r in results]
        wall = [r["wall_s"] for r in results]
        rss = statistics.median(r["rss_mb"] for r in results)
        # The minimum is the run least disturbed by the machine; the median shows the spread.
        print(
            f"  {name:5s} CPU min {min(cpu):.2f} s / median {statistics.median(cpu):.2f} s, "
            f"wall min {min(wall):.2f} s / median {statistics.median(wall):.2f} s, "
            f"peak RSS {rss:.1f} MB"
        )


if __name__ == "__main__":
    main()
