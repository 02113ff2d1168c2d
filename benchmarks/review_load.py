"""The review app under load on 127.0.0.1: decisions per second and the 95th-percentile response
time (GET the next item + POST the decision) for N concurrent reviewer clients.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/review_load.py [--clients 20] [--items 500] [--overlap 2]
"""

import argparse
import tempfile
from pathlib import Path

from idglow.review.load import run_load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--overlap", type=int, default=2)
    parser.add_argument("--lease-seconds", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        report, store = run_load(Path(folder), args.clients, args.items, args.overlap, args.lease_seconds)
        print(
            f"{report.clients} clients, {report.items} items x overlap {report.overlap}: {report.decisions} decisions "
            f"in {report.seconds:.1f} s = {report.decisions_per_second:.1f} decisions/s; "
            f"p95 {report.p95_ms:.0f} ms per item (GET + POST); {report.abandoned} claims abandoned, "
            f"{store.reclaimed_leases()} leases reclaimed"
        )


if __name__ == "__main__":
    main()
