"""Fuzzing campaigns, in process, with fixed seeds: each feeds mutated inputs to one reader and records
every outcome that breaks the rule (any input: a result, or the project's own error; never another
exception, nor longer than :data:`CASE_SECONDS`). ``bench/fuzz.py`` runs them longer."""

from __future__ import annotations

import random
import signal
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fuzz import batch_mutator, capture_mutator, config_mutator

CASE_SECONDS = 60
# how far memory in use may climb over a campaign: each input is read with bounded memory, and what one
# case held must be freed when it is done (a reference cycle kept every faulty capture's flow table)
GROWTH_BOUND_MB = 256


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0]) / 1024


@dataclass
class Report:
    target: str
    cases: int = 0
    refused: int = 0  # inputs refused with the project's error (fine)
    findings: list[str] = field(default_factory=list)  # rule breaks, one line each with the seed
    seconds: float = 0.0


class _Hang(Exception):
    pass


@contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    def fire(*_):
        raise _Hang(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _run(target: str, seed: int, cases: int, seconds: float, one: Callable[[random.Random, Path], bool]) -> Report:
    from kubesonar.shared.errors import KubeSonarError

    report = Report(target)
    started = time.perf_counter()
    floor_mb = _rss_mb()
    with tempfile.TemporaryDirectory(prefix=f"kubesonar-fuzz-{target}-") as tmp:
        for case in range(cases):
            if time.perf_counter() - started > seconds:
                break
            rng = random.Random(f"{target}/{seed}/{case}")
            try:
                with _deadline(CASE_SECONDS):
                    if not one(rng, Path(tmp)):
                        report.refused += 1
            except KubeSonarError:
                report.refused += 1
            except Exception as exc:
                where = traceback.extract_tb(exc.__traceback__)[-1]
                report.findings.append(f"{target} seed {seed} case {case}: {type(exc).__name__}: {exc} "
                                       f"({Path(where.filename).name}:{where.lineno})")
            report.cases += 1
            grown_mb = _rss_mb() - floor_mb
            if grown_mb > GROWTH_BOUND_MB:
                report.findings.append(f"{target} seed {seed} case {case}: memory in use grew {grown_mb:.0f} MB "
                                       f"over {report.cases} cases (bound {GROWTH_BOUND_MB} MB)")
                break
    report.seconds = time.perf_counter() - started
    return report


def captures(seed: int, cases: int, seconds: float) -> Report:
    """Mutated pcap/pcapng through the offline sensor; faults must land in the stats as CaptureErrors."""
    from kubesonar.sensor.observe import warm_up
    from kubesonar.sensor.offline import CaptureStats, read_captures

    bases = capture_mutator.seeds()
    warm_up()  # numba compiling the kernels (a cold cache: ~150 MB) is not a case's memory

    def one(rng: random.Random, tmp: Path) -> bool:
        path = tmp / "case.cap"
        path.write_bytes(capture_mutator.mutate(rng.choice(bases), rng))
        stats = CaptureStats()
        for _ in read_captures([path], stats=stats):
            pass
        return not stats.errors

    return _run("capture", seed, cases, seconds, one)


def batches(seed: int, cases: int, seconds: float) -> Report:
    """Mutated batch messages (CRC and compression redone) through decoding and the whole core."""
    from kubesonar.functions.local.notifier import CollectingNotifier
    from kubesonar.functions.local.store import LocalObjectStore
    from kubesonar.shared.batch import BatchHeader, decode_batch, encode_batch
    from kubesonar.shared.flow import FlowRecords
    from kubesonar.shared.pipeline import Dependencies, process_batch
    from kubesonar.shared.ports import SystemClock

    flows = FlowRecords.empty(40)
    flows.columns["first_ts"] = np.arange(40, dtype=np.int64) * 10**9 + 1_700_000_000 * 10**9
    flows.columns["last_ts"] = flows.columns["first_ts"] + 5
    flows.columns["dst_port"] = np.arange(40).astype(np.uint16) + 20
    flows.columns["packets_out"] = np.ones(40, dtype=flows.columns["packets_out"].dtype)
    (base,) = encode_batch(BatchHeader("c", "n", "n/1", 1, 0, 1, counters={"packets": 40}), flows, level=1)
    stores: dict[str, Dependencies] = {}

    def one(rng: random.Random, tmp: Path) -> bool:
        if rng.random() < 0.5:  # valid on the wire, hostile in its values
            sequence = rng.randrange(1 << 40)
            (message,) = encode_batch(BatchHeader("c", "n", "n/1", sequence, rng.choice([0, -(1 << 63), (1 << 63) - 1]),
                                                  (1 << 63) - 1), batch_mutator.hostile_flows(rng), level=1)
        else:
            message = batch_mutator.mutate(base, rng)
        batch = decode_batch(message)
        deps = stores.setdefault("deps", Dependencies(LocalObjectStore(tmp / "state"), CollectingNotifier(),
                                                      SystemClock()))
        process_batch(batch, deps)
        return True

    return _run("batch", seed, cases, seconds, one)


def configs(seed: int, cases: int, seconds: float) -> Report:
    """Malformed allowlists, watchlists and pod lists through their loaders."""
    from kubesonar.shared.allowlist import load_allowlist
    from kubesonar.shared.flow import FlowRecords
    from kubesonar.shared.inventory import PodInventory
    from kubesonar.shared.watchlist import parse_watchlist

    def one(rng: random.Random, tmp: Path) -> bool:
        kind = rng.randrange(3)
        if kind == 0:
            (tmp / "allow.yaml").write_bytes(config_mutator.mutate_allowlist(rng))
            load_allowlist(tmp / "allow.yaml")
        elif kind == 1:
            parse_watchlist(config_mutator.mutate_json(config_mutator.GOOD_WATCHLIST, rng), "fuzz")
        else:
            (tmp / "pods.json").write_bytes(config_mutator.mutate_json(config_mutator.GOOD_PODS, rng))
            PodInventory.load(tmp / "pods.json").enrich(FlowRecords.empty(3))
        return True

    return _run("config", seed, cases, seconds, one)


CAMPAIGNS: dict[str, Callable[[int, int, float], Report]] = {"capture": captures, "batch": batches, "config": configs}
