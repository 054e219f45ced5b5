"""The column-wise JSON-lines and CSV writers write what json.dumps and csv.DictWriter write, row by row."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from kubesonar.flow_text import write_csv, write_jsonl, write_jsonl_bytes
from kubesonar.sensor.offline import flows_from_captures
from kubesonar.shared.flow import FlowRecords

from conftest import PCAPS

# strings a template or a CSV row could mistake for its own syntax, and text JSON escapes
AWKWARD = ["", "%s", "100%", "%%(x)s", 'say "hi"', "a,b", "line\nbreak", "tab\there", "naïve ✓", "back\\slash"]


def _reference_jsonl(batches: list[FlowRecords]) -> str:
    return "".join(json.dumps(row) + "\n" for records in batches for row in records.iter_dicts())


def _reference_csv(batches: list[FlowRecords]) -> str:
    out, writer = io.StringIO(), None
    for records in batches:
        for row in records.iter_dicts():
            if writer is None:
                writer = csv.DictWriter(out, fieldnames=list(row))
                writer.writeheader()
            writer.writerow(row)
    return out.getvalue()


def _written(writer, batches: list[FlowRecords]) -> str:
    out = io.StringIO()
    writer(iter(batches), out)
    return out.getvalue()


def _capture_batches() -> list[FlowRecords]:
    # many DNS flows, then tunnelled ones (tunnel columns that vary): several batches
    paths = [PCAPS.parent / "more" / "dns_tunnel" / "spiderlabs_ismdoor_aaaa.pcap", PCAPS / "benign" / "ndpi_vxlan.pcap"]
    return list(flows_from_captures(paths))


def _awkward(records: FlowRecords, rng: np.random.Generator) -> FlowRecords:
    """The same records with string columns drawn from AWKWARD: some vary, one holds a single '%' text."""
    columns = dict(records.columns)
    n = len(records)
    for name in ("src_pod", "dst_labels", "tls_sni"):
        columns[name] = np.array([AWKWARD[k] for k in rng.integers(0, len(AWKWARD), n)], dtype=object)
    columns["src_namespace"] = np.array(["50% off"] * n, dtype=object)
    return FlowRecords(columns)


@pytest.mark.parametrize("writer, reference", [(write_jsonl, _reference_jsonl), (write_csv, _reference_csv)])
def test_writers_match_the_row_by_row_encoders(writer, reference):
    rng = np.random.default_rng(7)
    batches = _capture_batches()
    assert sum(map(len, batches)) > 10
    cases = [batches, [_awkward(b, rng) for b in batches], [batches[0].take(slice(0, 1))], [FlowRecords.empty()], []]
    for case in cases:
        assert _written(writer, case) == reference(case)


def test_a_batch_larger_than_one_write_is_written_whole():
    records = FlowRecords.concat(_capture_batches())
    many = records.take(np.arange(20_000) % len(records))
    assert _written(write_jsonl, [many]) == _reference_jsonl([many])


def test_small_batches_joined_before_writing_keep_their_order():
    records = FlowRecords.concat(_capture_batches())
    many = records.take(np.arange(12_000) % len(records))
    batches = [many.take(slice(start, start + 1_500)) for start in range(0, 12_000, 1_500)]
    assert _written(write_jsonl, batches) == _reference_jsonl([many])


def test_every_value_a_column_can_hold_is_written_as_json_dumps_writes_it():
    """Integers at their dtype's ends and between (negative ones too), times that repeat (within a
    column and from one column to the next) and ones that do not, tunnel addresses some rows lack, IPv6 ones: the digit-by-digit text must not drift."""
    rng = np.random.default_rng(11)
    n = 300
    records = FlowRecords.empty(n)
    columns = dict(records.columns)
    for name, values in columns.items():
        if values.dtype.kind in "iu" and name not in ("state", "end_reason"):
            info = np.iinfo(values.dtype)
            drawn = rng.integers(info.min, info.max, n, dtype=values.dtype, endpoint=True)
            ends = np.array([info.min, info.max, 0, 1, 9, 10, 99, 100], dtype=values.dtype)
            columns[name] = np.where(rng.random(n) < 0.3, rng.choice(ends, n), drawn)
    columns["first_ts"] = rng.integers(0, 2**62, n)
    columns["first_ts"][::5] = 10**9  # "1.0", narrower than the texts that replace it below
    columns["conn_start"] = np.where(rng.random(n) < 0.5, columns["first_ts"], columns["conn_start"])
    columns["last_ts"] = np.full(n, 1_767_225_600_017_150_000)
    columns["state"] = rng.integers(0, 7, n).astype(np.uint8)
    addresses = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    addresses[::3, :12] = np.frombuffer(b"\0" * 10 + b"\xff\xff", dtype=np.uint8)  # IPv4-mapped
    addresses[::4] = 0  # no tunnel
    columns["tunnel_src"] = addresses.view("V16").ravel()
    records = FlowRecords(columns)
    assert _written(write_jsonl, [records]) == _reference_jsonl([records])


def test_the_bytes_writer_writes_the_text_writers_lines():
    batches = _capture_batches()
    out = io.BytesIO()
    write_jsonl_bytes(iter(batches), out)
    assert out.getvalue() == _reference_jsonl(batches).encode("ascii")


def test_times_are_written_as_float_repr_writes_them():
    """Whole microseconds (the usual capture time, written from its digits), whole seconds, times
    under a second and near 2**33 s where that shortcut ends, and nanosecond ones, mixed in a column."""
    rng = np.random.default_rng(5)
    n = 400
    micros = 1_767_225_600_000_000 + rng.integers(0, 10**9, n)
    micros[::7] -= micros[::7] % 10**6  # whole seconds: "1767225600.0"
    micros[1::7] -= micros[1::7] % 1000  # trailing zeros
    ns = micros * 1000
    ns[2::7] += rng.integers(1, 1000, len(ns[2::7]))  # nanoseconds
    ns[3::7] = rng.integers(0, 10**9, len(ns[3::7]))  # under a second
    ns[4::7] = 2**33 * 10**9 + rng.integers(-(10**12), 10**12, len(ns[4::7])) // 1000 * 1000
    records = FlowRecords.empty(n)
    columns = dict(records.columns)
    columns["first_ts"], columns["last_ts"] = ns, ns[::-1].copy()
    records = FlowRecords(columns)
    assert _written(write_jsonl, [records]) == _reference_jsonl([records])


def test_times_written_by_the_kernel_are_float_repr_at_every_width():
    """The kernel's shortest digits against float.__repr__: any nanosecond from 1972 to int64's end,
    the ends of each power of two's range, and doubles exactly halfway between two decimals of the
    last place (Python's dtoa takes the even digit there)."""
    rng = np.random.default_rng(3)
    n = 20_000
    whole = rng.integers(2**26, 2**33, n)
    halves = 2 ** rng.integers(1, 14, n)
    edges = np.concatenate([np.arange(-3000, 3000) + 2**p * 10**9 for p in range(26, 34)])
    ns = np.concatenate([
        rng.integers(2**26 * 10**9, 2**63 - 1, n),
        whole * 10**9 + rng.integers(0, halves) * 10**9 // halves,
        edges, np.arange(2**63 - 3000, 2**63 - 1, dtype=np.int64), np.arange(10**9 - 50, 10**9 + 50),
    ])
    records = FlowRecords.empty(len(ns))
    columns = dict(records.columns)
    columns["last_ts"] = ns
    records = FlowRecords(columns)
    assert _written(write_jsonl, [records]) == _reference_jsonl([records])
