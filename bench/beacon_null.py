"""The table behind beaconing's decision (shared/detectors/beaconing.py, POISSON_MAD_FLOOR).

Connections that load causes arrive like a Poisson process: exponential intervals. For n intervals,
this prints the quantiles of MAD / median of n exponential intervals: the ratio beacons are judged by.
A pair beacons only when its ratio is below the 1e-5 quantile for its n, so traffic without a clock
passes the test about once in 100,000 tests.

Within one session the sensor keeps only the count, mean and coefficient of variation (std / mean,
population) of the gaps between a side's small packets, so the second table is the same null for the
CV of n exponential gaps (POISSON_CV_FLOOR).

The third table is the null of a session's burst timer (flow schema 6, MIN_BEATS): small packets arrive
as a Poisson process at a given rate, the sensor's own kernel merges them into bursts (1 s) and follows
the timer (sensor/flow_kernel.py _track_beat); per session of 2,048 packets, the most beats any run
reached with no more bursts between them than on the beat, and how often that is at least m.

    python bench/beacon_null.py          # about a minute
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


    print("small packets/s  sessions  P(most beats >= m) for m = 7 .. 12")
    for rate in (0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0):
        best = _most_beats(rate, 2_048, samples, seed)
        print(f"{rate:15.2f}  {len(best):8d}  " + "  ".join(f"{np.mean(best >= m):.1e}" for m in range(7, 13)))


def _most_beats(rate: float, packets: int, sessions: int, seed: int) -> np.ndarray:
    from numba import njit  # the sensor's own njit leaves numba's runtime out: this loop allocates

    from kubesonar.sensor.flow_kernel import BURST_NS, _track_beat
    from kubesonar.sensor.flow_layout import BEAT_A, N_COLS

    @njit
    def run(rate, packets, sessions, seed):
        np.random.seed(seed)
        most = np.zeros(sessions, dtype=np.int64)
        num = np.zeros((1, N_COLS), dtype=np.int64)
        for k in range(sessions):
            num[0, BEAT_A] = 0
            t, last_small, burst = 0, -1, -1
            for _ in range(packets):
                t += np.int64(np.random.exponential(1.0 / rate) * 1e9) + 1
                if last_small < 0 or t - last_small > BURST_NS:
                    if burst >= 0:
                        _track_beat(0, 0, t, t - burst, num)
                        word = num[0, BEAT_A]
                        beats, between = (word >> 16) & 0xFFFF, word & 0xFFFF
                        if between <= beats and (word >> 32) >= 1_000_000:
                            most[k] = max(most[k], beats)
                    burst = t
                last_small = t
        return most

    return run(rate, packets, sessions, seed)


def _cv(x: np.ndarray) -> np.ndarray:
    return x.std(axis=1) / x.mean(axis=1)


if __name__ == "__main__":
    main()
