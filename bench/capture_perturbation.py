"""Robustness of detection to the ways real third-party captures differ: how many labelled attacks stay
detected, and how many benign captures stay quiet, when each capture is cut, thinned, re-timed or
slightly reordered.

    python bench/capture_perturbation.py [--data ../shared/data] [--jobs 2] [--seed 17] [--only SUBSTRING]

For every capture of the labels.csv files under ``--data`` (as lab/evaluate.py reads them) it writes, in a
temporary directory, these variants (seeded, so a rerun builds the same files):

- ``rewritten``: every packet as read, written back as a nanosecond pcap (the control: what the rewrite
  alone changes);
- ``first_half`` / ``second_half``: the packets before / from the median timestamp (the second half joins
  every connection mid-stream);
- ``drop5``: 5% of the packets dropped at random;
- ``shift+3y`` / ``shift-3y``: every timestamp moved by three years (1,096 days) later / earlier (``n/a``
  for a capture that would start before 1970);
- ``swap2``: 2% of adjacent pairs swapped (each swap moves a packet one place; timestamps travel with it);
- ``snap96``: every packet cut to its first 96 bytes, as a capture taken with a short snap length.

Each variant is scored exactly as ``python -m lab.evaluate`` scores a capture (``kubesonar.compose.analyze``
cold, ``CaptureResult.verdict``). It prints one progress line per capture, then a table (one row per
capture, one column per variant: ``ok`` = detected with the right actor or benign and quiet, ``MISS`` =
attack not detected, ``FA`` = benign capture with a forbidden alert, with the alerts it raised), then per
variant the totals: attacks detected of attacks, benign captures with a forbidden alert of benign captures.
Packets are read with the sensor's own capture reader (so a capture it cannot read is not perturbed).
Run time: 15 to 40 s for the 51 labelled captures (408 analyses) on two cores (the first run compiles the kernels); ``--only`` narrows the set.
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # lab/ is not part of the package

SHIFT_NS = 1096 * 86_400 * 10**9  # three years (one leap day)
VARIANTS = ("rewritten", "first_half", "second_half", "drop5", "shift+3y", "shift-3y", "swap2", "snap96")
SNAPLEN = 96  # tcpdump's default before 4.0 (and still many appliances'): headers and a little payload


def _packets(path: Path) -> list[tuple[int, int, int, bytes]]:
    """(ts ns, linktype, wire length, bytes) of every packet, in file order."""
    from kubesonar.sensor.capture_file import read_capture

    packets = []
    for batch in read_capture(path):
        for i in range(len(batch)):
            start = int(batch.offset[i])
            data = batch.data[start:start + int(batch.caplen[i])].tobytes()
            packets.append((int(batch.ts[i]), int(batch.linktype[i]), int(batch.wirelen[i]), data))
    return packets


def _write(path: Path, packets: list[tuple[int, int, int, bytes]]) -> None:
    """A nanosecond pcap, or a pcapng with one interface per link type when the capture mixes them."""
    linktypes = sorted({p[1] for p in packets}) or [1]
    with open(path, "wb") as f:
        if len(linktypes) == 1:
            f.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262_144, linktypes[0]))
            for ts, _, wirelen, data in packets:
                seconds, ns = divmod(ts, 10**9)
                f.write(struct.pack("<IIII", seconds, ns, len(data), wirelen) + data)
            return
        f.write(struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28))
        interface = {}
        for number, linktype in enumerate(linktypes):
            tsresol = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)  # if_tsresol = 10^-9, end
            body = struct.pack("<HHI", linktype, 0, 262_144) + tsresol
            f.write(struct.pack("<II", 1, 12 + len(body)) + body + struct.pack("<I", 12 + len(body)))
            interface[linktype] = number
        for ts, linktype, wirelen, data in packets:
            padded = data + b"\0" * (-len(data) % 4)
            body = struct.pack("<IIIII", interface[linktype], ts >> 32, ts & 0xFFFFFFFF, len(data), wirelen) + padded
            f.write(struct.pack("<II", 6, 12 + len(body)) + body + struct.pack("<I", 12 + len(body)))


def _times(packets: list[tuple[int, int, int, bytes]]) -> list[int]:
    return [p[0] for p in packets] or [0]


def variants(packets: list[tuple[int, int, int, bytes]], seed: int) -> dict[str, list[tuple[int, int, int, bytes]] | None]:
    """Each variant's packets, None where a variant cannot be built from this capture."""
    rng = random.Random(seed)
    by_time = sorted(range(len(packets)), key=lambda i: packets[i][0])
    middle = len(by_time) // 2
    first = set(by_time[:middle])
    swapped = list(packets)
    i = 0
    while i < len(swapped) - 1:
        if rng.random() < 0.02:
            swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
            i += 2  # a pair is swapped once
        else:
            i += 1
    return {
        "rewritten": packets,
        "first_half": [p for i, p in enumerate(packets) if i in first],
        "second_half": [p for i, p in enumerate(packets) if i not in first],
        "drop5": [p for p in packets if rng.random() >= 0.05],
        "shift+3y": [(ts + SHIFT_NS, *rest) for ts, *rest in packets],
        # a pcap's time cannot go before 1970: such a capture has no earlier variant
        "shift-3y": [(ts - SHIFT_NS, *rest) for ts, *rest in packets] if min(_times(packets)) >= SHIFT_NS else None,
        "swap2": swapped,
        "snap96": [(ts, linktype, wirelen, data[:SNAPLEN]) for ts, linktype, wirelen, data in packets],
    }


def _score(job: tuple[dict[str, str], str, int]) -> tuple[str, dict[str, tuple[str, str]], float]:
    """Every variant of one labelled capture: variant -> (verdict, alerts raised)."""
    from kubesonar.compose import analyze
    from lab.evaluate import CaptureResult
    from lab.raised import raised

    row, data, seed = job
    started = time.monotonic()
    packets = _packets(Path(data) / row["path"])
    seed_of_capture = seed ^ int.from_bytes(row["path"].encode()[-8:].rjust(8, b"\0"), "big")
    out = {}
    with tempfile.TemporaryDirectory(prefix="kubesonar-perturb-") as tmp:
        for name, chosen in variants(packets, seed_of_capture).items():
            if chosen is None:
                out[name] = ("n/a", "")
                continue
            path = Path(tmp) / f"{name}.pcap"
            _write(path, chosen)
            r = CaptureResult(row["path"], row["category"], row["expected_alert"], row["actor_ip"])
            r.alerts = raised(analyze([str(path)]).alerts)
            out[name] = (r.verdict, ", ".join(f"{a.text()}@{a.ip}" for a in r.alerts))
    return row["path"], out, time.monotonic() - started


def _cell(verdict: str) -> str:
    return {"detected": "ok", "pass": "ok", "missed": "MISS", "false alarm": "FA", "n/a": "n/a"}[verdict]


def main() -> None:
    from lab.evaluate import label_rows

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--only", default="", help="score only captures whose path contains this")
    args = parser.parse_args()

    rows = [r for r in label_rows(args.data) if args.only in r["path"]]
    by_path = {r["path"]: r for r in rows}
    results: dict[str, dict[str, tuple[str, str]]] = {}
    started = time.monotonic()
    jobs = [(row, str(args.data), args.seed) for row in rows]
    with ProcessPoolExecutor(args.jobs) as pool:
        for done, (path, out, seconds) in enumerate(pool.map(_score, jobs), 1):
            results[path] = out
            print(f"[{done}/{len(rows)}] {path}: {seconds:.1f} s", file=sys.stderr, flush=True)

    print(f"| capture | expected | {' | '.join(VARIANTS)} |")
    print(f"|---|---|{'---|' * len(VARIANTS)}")
    for path, out in results.items():
        cells = [_cell(out[v][0]) + (f" ({out[v][1] or 'none'})" if _cell(out[v][0]) in ("MISS", "FA") else "")
                 for v in VARIANTS]
        print(f"| {path} | {by_path[path]['expected_alert'].replace('|', ' or ')} | {' | '.join(cells)} |")
    print()
    print("| variant | attacks detected | benign captures with a forbidden alert |")
    print("|---|---:|---:|")
    for v in VARIANTS:
        verdicts = np.array([results[p][v][0] for p in results])
        attacks = np.isin(verdicts, ["detected", "missed"])
        benign = np.isin(verdicts, ["pass", "false alarm"])
        print(f"| {v} | {(verdicts == 'detected').sum()} of {attacks.sum()} | "
              f"{(verdicts == 'false alarm').sum()} of {benign.sum()} |")
    print(f"\n{len(rows)} captures x {len(VARIANTS)} variants in {time.monotonic() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
