"""The batch format: exact round trips, size limits, and hostile input that must fail cleanly."""

from __future__ import annotations

import gc
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubesonar.shared.batch import (
    EVENT_GRID_LIMIT,
    MIN_LIMIT,
    SQS_LIMIT,
    BatchHeader,
    decode_batch,
    encode_batch,
)
from kubesonar.shared.errors import BatchFormatError
from kubesonar.shared.flow import (
    FLOW_COLUMNS,
    SCHEMA_4_NAMES,
    SCHEMA_5_NAMES,
    SCHEMA_6_NAMES,
    SCHEMA_7_NAMES,
    SCHEMA_COLUMNS,
    FlowRecords,
)

U = st.integers


def _column(draw, col, n, rng):
    """A column of n values: hypothesis picks the shape (constant, extremes, random), numpy fills it fast."""
    mode = draw(st.sampled_from(["random", "constant", "extremes", "sorted"]))
    if col.dtype == "O":
        words = draw(st.lists(st.text(max_size=12), min_size=1, max_size=4))
        return np.array([words[i] for i in rng.integers(0, len(words), n)], dtype=object)
    if col.dtype == "V16":
        raw = rng.integers(0, 256, (n, 16), dtype=np.uint8)
        if mode == "constant":
            raw[:] = raw[:1] if n else raw
        return raw.view("V16").ravel().copy()
    info = np.iinfo(np.dtype(col.dtype))
    if mode == "constant":
        return np.full(n, draw(U(int(info.min), int(info.max))), dtype=col.dtype)
    if mode == "extremes":
        return rng.choice(np.array([info.min, info.max, 0, 1] if info.min < 0 else [0, 1, info.max], dtype=col.dtype), n)
    values = rng.integers(info.min, info.max, n, dtype=col.dtype, endpoint=True)
    return np.sort(values) if mode == "sorted" else values


@st.composite
def flow_records(draw, max_rows=40):
    n = draw(U(0, max_rows))
    rng = np.random.default_rng(draw(U(0, 2**32 - 1)))
    return FlowRecords({c.name: _column(draw, c, n, rng) for c in FLOW_COLUMNS})


_NAMES = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,28}[A-Za-z0-9])?", fullmatch=True)


@st.composite
def headers(draw):
    return BatchHeader(
        cluster=draw(_NAMES), node=draw(_NAMES), sensor_id=draw(_NAMES),  # any valid name (shared/names.py)
        sequence=draw(U(0, 2**64 - 1)), window_start_ns=draw(U(-(2**63), 2**63 - 1)),
        window_end_ns=draw(U(-(2**63), 2**63 - 1)),
        counters=draw(st.dictionaries(st.text(max_size=20), U(0, 2**64 - 1), max_size=5)),
    )


def _decode_all(messages):
    return [decode_batch(m) for m in messages]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers(), flow_records())
def test_encode_then_decode_gives_back_exactly_what_went_in(header, records):
    messages = encode_batch(header, records, limit=SQS_LIMIT)
    batches = _decode_all(messages)
    assert FlowRecords.concat([b.flows for b in batches]).equals(records)
    for i, b in enumerate(batches):
        assert (b.header.part, b.header.parts) == (i, len(messages))
        assert b.header.window_flow_count == len(records)
        assert (b.header.cluster, b.header.sequence, b.header.counters) == (header.cluster, header.sequence, header.counters)


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flow_records(max_rows=3000), st.sampled_from([MIN_LIMIT, 6000, 20000]))
def test_no_message_exceeds_its_limit(records, limit):
    header = BatchHeader("c", "n", "s", 1, 0, 1)
    messages = encode_batch(header, records, limit=limit)
    assert all(len(m) <= limit for m in messages)
    assert FlowRecords.concat([b.flows for b in _decode_all(messages)]).equals(records)


def _valid_message() -> bytes:
    records = FlowRecords.empty(50)
    records.columns["first_ts"] = np.arange(50, dtype=np.int64) * 1000
    return encode_batch(BatchHeader("c", "n", "s", 7, 0, 1, counters={"packets": 9}), records)[0]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_give_the_projects_error(data):
    with pytest.raises(BatchFormatError):
        decode_batch(data)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_messages_never_crash(data):
    message = bytearray(_valid_message())
    for _ in range(data.draw(U(1, 8))):
        at = data.draw(U(0, len(message) - 1))
        message[at] = data.draw(U(0, 255))
    if data.draw(st.booleans()):
        message = message[: data.draw(U(0, len(message)))]
    cap = 64 << 10
    tracemalloc.start()
    try:
        decode_batch(bytes(message), decoded_cap=cap)
    except BatchFormatError:
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 16 * cap, "decoding must stay within a small multiple of the cap"


def _reframe(message: bytes, stored: bytes, decoded_len: int) -> bytes:
    """Rebuild a message around another payload, with a correct checksum (a forger's message)."""
    magic, version, flags, head_len, _, _, _ = struct.unpack_from("<4sHHIIII", message)
    head = message[24 : 24 + head_len]
    crc = zlib.crc32(stored, zlib.crc32(head))
    return struct.pack("<4sHHIIII", magic, version, flags, head_len, len(stored), decoded_len, crc) + head + stored


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_payloads_with_valid_checksums_never_crash(data):
    """Past the checksum: corrupt the decompressed payload itself."""
    message = _valid_message()
    head_len = struct.unpack_from("<I", message, 8)[0]
    payload = bytearray(zstandard.ZstdDecompressor().decompress(message[24 + head_len :]))
    for _ in range(data.draw(U(1, 6))):
        payload[data.draw(U(0, len(payload) - 1))] = data.draw(U(0, 255))
    stored = zstandard.ZstdCompressor().compress(bytes(payload))
    try:
        decode_batch(_reframe(message, stored, len(payload)))
    except BatchFormatError:
        pass


@pytest.mark.parametrize("declared", ["honest", "lying"])
def test_a_compression_bomb_never_allocates_past_the_cap(declared):
    cap = 1 << 20
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (512 << 20))  # 512 MiB of zeros
    message = _reframe(_valid_message(), bomb, 512 << 20 if declared == "honest" else 1000)
    tracemalloc.start()
    with pytest.raises(BatchFormatError):
        decode_batch(message, decoded_cap=cap)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 4 * cap


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m: b"XXXX" + m[4:], "magic"),
        (lambda m: m[:4] + struct.pack("<H", 9) + m[6:], "version 9"),
        (lambda m: m[:-1], "truncated"),
        (lambda m: m + b"\0", "padded"),
        (lambda m: m[:30] + bytes([m[30] ^ 0xFF]) + m[31:], "checksum"),
    ],
)
def test_errors_say_what_was_wrong(mutate, message):
    with pytest.raises(BatchFormatError, match=message):
        decode_batch(mutate(_valid_message()))


def test_a_limit_below_the_minimum_is_refused():
    with pytest.raises(BatchFormatError, match="minimum"):
        encode_batch(BatchHeader("c", "n", "s", 1, 0, 1), FlowRecords.empty(1), limit=MIN_LIMIT - 1)


def test_a_window_of_real_flows_splits_under_each_queue_limit(tmp_path):
    from kubesonar.sensor.offline import flows_from_captures
    from kubesonar.sensor.synthetic import write_synthetic_capture

    write_synthetic_capture(tmp_path / "s.pcap", packets=200_000, flows=20_000)
    records = FlowRecords.concat(list(flows_from_captures([tmp_path / "s.pcap"])))
    for limit in (MIN_LIMIT, 16 << 10, SQS_LIMIT, EVENT_GRID_LIMIT):
        messages = encode_batch(BatchHeader("c", "n", "s", 1, 0, 1), records, limit=limit)
        assert max(map(len, messages)) <= limit
        assert FlowRecords.concat([b.flows for b in _decode_all(messages)]).equals(records)


def test_encoding_leaves_nothing_for_the_cycle_collector():
    """Whatever encoding made (the compressor's C memory, the payloads) goes when it returns, even split in
    parts: a reference cycle would keep it until a full collection, which a sensor under a flood meets
    seldom (it held 100-170 MiB of them)."""
    rng = np.random.default_rng(1)
    records = FlowRecords.concat([FlowRecords.empty(3000)] * 2)
    records.columns["first_ts"][:] = rng.integers(0, 1 << 62, len(records))  # rows that compress poorly
    gc.collect()
    gc.disable()
    try:
        messages = encode_batch(BatchHeader("c", "n", "s", 1, 0, 1), records, limit=MIN_LIMIT)
        assert len(messages) > 1
        assert gc.collect() == 0
    finally:
        gc.enable()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flow_records())
def test_a_schema_1_message_from_an_older_sensor_decodes_with_images_unknown(records):
    old = encode_batch(BatchHeader("c", "n", "s", 1, 0, 1, schema_version=1), records)
    flows = FlowRecords.concat([b.flows for b in _decode_all(old)])
    carried = {c.name for c in SCHEMA_COLUMNS[1]}  # schema 1 predates images, rpc_method and schemas 4 to 7
    assert not carried & (SCHEMA_4_NAMES | SCHEMA_5_NAMES | SCHEMA_6_NAMES | SCHEMA_7_NAMES)
    assert "rpc_method" not in carried
    for col in FLOW_COLUMNS:
        if col.name in carried:
            assert np.array_equal(flows[col.name], records[col.name])
        else:
            assert (flows[col.name] == ("" if col.dtype == "O" else 0)).all(), col.name
    assert len(old[0]) < len(encode_batch(BatchHeader("c", "n", "s", 1, 0, 1), records)[0]) or not len(records)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flow_records())
def test_a_schema_6_message_from_a_sensor_before_the_executable_flag_decodes_with_it_unknown(records):
    old = encode_batch(BatchHeader("c", "n", "s", 1, 0, 1, schema_version=6), records)
    flows = FlowRecords.concat([b.flows for b in _decode_all(old)])
    assert [c.name for c in FLOW_COLUMNS if c not in SCHEMA_COLUMNS[6]] == ["executable"]
    assert (flows["executable"] == 0).all()
    for name in (c.name for c in SCHEMA_COLUMNS[6]):
        assert np.array_equal(flows[name], records[name]), name


def test_an_unknown_schema_version_is_refused_both_ways():
    with pytest.raises(BatchFormatError, match="schema version 9 is not known"):
        encode_batch(BatchHeader("c", "n", "s", 1, 0, 1, schema_version=9), FlowRecords.empty(1))


def _pod_events(n: int):
    from kubesonar.shared.flow import address_bytes
    from kubesonar.shared.pod_events import PodEvents

    return PodEvents.from_rows([
        {"ts": 10**18 + i, "event": 1 + i % 3, "addr": address_bytes(f"10.1.0.{i % 250 + 1}"), "namespace": "shop",
         "pod": f"cart-7d9f8b6c5-{i:05d}", "workload_kind": "Deployment", "workload_name": "cart",
         "node": "node-1", "labels": "app=cart", "images": "shop/cart:1", "service_account": "cart"}
        for i in range(n)
    ])


def test_pod_events_travel_in_the_first_part_only():
    records = FlowRecords.empty(3000)
    records.columns["first_ts"] = np.arange(3000, dtype=np.int64) * 7919
    records.columns["dst_port"] = (np.arange(3000) * 7).astype(np.uint16)
    events = _pod_events(40)
    messages = encode_batch(BatchHeader("c", "n", "s", 1, 0, 1), records, limit=MIN_LIMIT, pods=events)
    batches = _decode_all(messages)
    assert len(batches) > 1 and [len(b.pods) for b in batches] == [40] + [0] * (len(batches) - 1)
    assert list(batches[0].pods.iter_dicts()) == list(events.iter_dicts())
    assert FlowRecords.concat([b.flows for b in batches]).equals(records)


def test_pod_events_alone_make_a_message_and_need_schema_2():
    (message,) = encode_batch(BatchHeader("c", "n", "s", 1, 0, 1), FlowRecords.empty(), pods=_pod_events(3))
    batch = decode_batch(message)
    assert len(batch.flows) == 0 and [e["event"] for e in batch.pods.iter_dicts()] == ["added", "modified", "deleted"]
    with pytest.raises(BatchFormatError, match="schema 2"):
        encode_batch(BatchHeader("c", "n", "s", 1, 0, 1, schema_version=1), FlowRecords.empty(), pods=_pod_events(1))


def _dns_messages(n: int):
    from kubesonar.shared.dns import DnsMessages
    from kubesonar.shared.flow import address_bytes

    return DnsMessages.from_rows([
        {"ts": 10**18 + i, "client": address_bytes("10.1.0.7"), "server": address_bytes("10.96.0.10"),
         "client_port": 40000 + i % 20000, "response": i % 2, "qname": f"{i * 7919:x}q{i}.t.example.net",
         "qtype": 16, "rcode": 0, "answers": i % 2, "size": 60 + i % 200}
        for i in range(n)
    ])


def test_dns_messages_beyond_one_part_get_parts_of_their_own_and_nothing_is_lost():
    records = FlowRecords.empty(50)
    dns, pods = _dns_messages(3000), _pod_events(5)
    messages = encode_batch(BatchHeader("c", "n", "s", 1, 0, 1), records, limit=MIN_LIMIT * 4, pods=pods, dns=dns)
    batches = _decode_all(messages)
    assert len(batches) > 2 and all(len(m) <= MIN_LIMIT * 4 for m in messages)
    assert sum(len(b.flows) for b in batches) == 50 and [len(b.pods) for b in batches][0] == 5
    from kubesonar.shared.dns import DnsMessages

    decoded = DnsMessages.concat([b.dns for b in batches])
    assert list(decoded.iter_dicts()) == list(dns.iter_dicts())


def test_dns_rows_need_schema_3_and_a_schema_2_reader_path_still_decodes():
    with pytest.raises(BatchFormatError, match="schema 3"):
        encode_batch(BatchHeader("c", "n", "s", 1, 0, 1, schema_version=2), FlowRecords.empty(), dns=_dns_messages(2))
    (message,) = encode_batch(BatchHeader("c", "n", "s", 1, 0, 1, schema_version=2), FlowRecords.empty(2),
                              pods=_pod_events(2))
    batch = decode_batch(message)
    assert len(batch.pods) == 2 and len(batch.dns) == 0 and (batch.flows["rpc_method"] == "").all()
