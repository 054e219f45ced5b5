"""The table behind beaconing's decision (shared/detectors/beaconing.py, POISSON_MAD_FLOOR).

Connections that load causes arrive like a Poisson process: exponential intervals. For n intervals,
this prints the quantiles of MAD / median of n exponential intervals: the ratio beacons are judged by.
A pair beacons only when its ratio is below the 1e-5 quantile for its n, so traffic without a clock
passes the test about once in 100,000 tests.

Within one session the sensor keeps only the count, mean and coefficient of variation (std / mean,
population) of the gaps between a side's small packets, so the second table is the same null for the
CV of n exponential gaps (POISSON_CV_FLOOR).

    python bench/beacon_null.py          # about 10 s
"""

from __future__ import annotations

import numpy as np


def main(samples: int = 400_000, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    print("intervals  q(1e-3)  q(1e-4)  q(1e-5)")
    for n in (6, 7, 8, 10, 12, 16, 20, 24, 32, 48, 64):
        x = rng.exponential(1.0, (samples, n))
        median = np.median(x, axis=1)
        ratio = np.median(np.abs(x - median[:, None]), axis=1) / median
        print(f"{n:9d}  " + "  ".join(f"{np.quantile(ratio, q):.4f}" for q in (1e-3, 1e-4, 1e-5)))
    print("gaps  CV q(1e-3)  q(1e-4)  q(1e-5)")
    for n in (6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 128, 256):
        cv = np.concatenate([_cv(rng.exponential(1.0, (20_000, n))) for _ in range(samples // 20_000)])
        print(f"{n:4d}  " + "  ".join(f"{np.quantile(cv, q):.4f}" for q in (1e-3, 1e-4, 1e-5)))


def _cv(x: np.ndarray) -> np.ndarray:
    return x.std(axis=1) / x.mean(axis=1)


if __name__ == "__main__":
    main()
