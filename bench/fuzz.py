"""Longer fuzzing runs of the campaigns CI runs briefly (tests/fuzz/): many seeds, a time budget each.

    python bench/fuzz.py --seconds 600                  # every campaign, 10 minutes each
    python bench/fuzz.py --target capture --seed 7 --cases 100000

Prints cases, inputs refused with a clean error, and every finding (a rule break) with the seed and case
that reproduce it; exits 1 when there is any finding.
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fuzz.campaign import CAMPAIGNS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=sorted(CAMPAIGNS), action="append")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=300)
    args = parser.parse_args()
    found = 0
    for target in args.target or sorted(CAMPAIGNS):
        report = CAMPAIGNS[target](args.seed, args.cases, args.seconds)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{target}: {report.cases} cases in {report.seconds:.0f} s, {report.refused} refused cleanly, "
              f"{len(report.findings)} findings, peak RSS {peak:.0f} MB")
        for finding in report.findings:
            print("  " + finding)
        found += len(report.findings)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
