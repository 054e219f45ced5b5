"""Batches that decode but used to break the core (issue 19): hostile names, unknown pod-event codes,
and amplification by rows that compress to nothing. Each is a BatchFormatError, counted where it lands."""

from __future__ import annotations

import resource
import time

import numpy as np
import pytest
from fuzz.batch_mutator import frame, header_bytes

from kubesonar.functions.local.backend import LocalBackend
from kubesonar.functions.local.notifier import CollectingNotifier
from kubesonar.functions.local.store import LocalObjectStore
from kubesonar.shared import batch as codec
from kubesonar.shared.batch import MAX_ROWS_PER_MESSAGE, BatchHeader, decode_batch, encode_batch
from kubesonar.shared.errors import BatchFormatError
from kubesonar.shared.flow import FlowRecords, address_bytes
from kubesonar.shared.pipeline import Delivery, Dependencies, process_deliveries
from kubesonar.shared.pod_events import PodEvents
from kubesonar.shared.ports import SystemClock

BAD_NAMES = ["team/prod", "a b", "oké", "x" * 300, "", "a\x00b", "../x"]


def _pod_events(*codes: int) -> PodEvents:
    return PodEvents.from_rows([
        {"ts": 10**18, "event": code, "addr": address_bytes("10.1.0.1"), "namespace": "shop", "pod": "p",
         "workload_kind": "Pod", "workload_name": "p", "node": "n", "labels": "", "images": "", "service_account": ""}
        for code in codes])


def _identical_flows(n: int) -> FlowRecords:
    one = FlowRecords.empty(1)
    return FlowRecords({k: np.repeat(v, n) for k, v in one.columns.items()})


def _payload(flows: FlowRecords, pods: PodEvents | None = None) -> bytes:
    schema = codec.SCHEMA_COLUMNS[codec.FLOW_SCHEMA_VERSION]
    return codec._encode_payload(flows, schema, [pods] if pods is not None else [])


@pytest.mark.parametrize("field", ["cluster", "node", "sensor"])
@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_bad_name_in_a_header_is_a_format_error(field, name):
    if field == "sensor" and name == "team/prod":  # <node>/<suffix>: the form of a sensor id
        name = "team/prod/x"
    message = frame(header_bytes(**{field: name}, rows=2), _payload(FlowRecords.empty(2)))
    with pytest.raises(BatchFormatError, match="name|sensor id"):
        decode_batch(message)


@pytest.mark.parametrize("name", ["team/prod", "a b", "oké", "x" * 300])
def test_the_encoder_refuses_a_bad_cluster_name(name):
    with pytest.raises(BatchFormatError):
        encode_batch(BatchHeader(name, "n", "n/1", 1, 0, 1), FlowRecords.empty(1))


@pytest.mark.parametrize("name", ["default", "prod-eu-1", "kind.cluster_2", "Node7", "ip-10-0-0-1.ec2.internal"])
def test_good_names_pass(name):
    (message,) = encode_batch(BatchHeader(name, name, f"{name}/5f1", 1, 0, 1), FlowRecords.empty(1))
    assert decode_batch(message).header.cluster == name


def test_an_unknown_pod_event_code_is_a_format_error():
    pods = _pod_events(1, 255)
    message = frame(header_bytes(rows=0), _payload(FlowRecords.empty(0), pods))
    with pytest.raises(BatchFormatError, match="pod event code 255"):
        decode_batch(message)


def test_a_message_of_millions_of_identical_flows_is_refused_cheaply():
    """A few KB that inflate into 1 M rows (under the decoded-size cap): refused from the row count,
    before the columns are built."""
    flows = _identical_flows(1_000_000)
    message = frame(header_bytes(rows=len(flows)), _payload(flows), level=19)
    assert len(message) < 64 << 10
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(BatchFormatError, match=f"over the {MAX_ROWS_PER_MESSAGE}"):
        decode_batch(message)
    assert time.perf_counter() - started < 5
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 150  # MB


def test_the_encoder_never_writes_more_rows_than_a_message_may_hold():
    flows = _identical_flows(2 * MAX_ROWS_PER_MESSAGE + 5)
    messages = encode_batch(BatchHeader("c", "n", "n/1", 1, 0, 1), flows, limit=codec.PUBSUB_LIMIT, level=1)
    decoded = [decode_batch(m) for m in messages]
    assert len(messages) == 3
    assert all(len(b.flows) <= MAX_ROWS_PER_MESSAGE for b in decoded)
    assert sum(len(b.flows) for b in decoded) == len(flows)


def _hostile_messages() -> list[bytes]:
    pods = _pod_events(255)
    return [frame(header_bytes(cluster=n, rows=1), _payload(FlowRecords.empty(1))) for n in BAD_NAMES] + [
        frame(header_bytes(rows=0), _payload(FlowRecords.empty(0), pods))]


@pytest.mark.parametrize("value", [-1, 1 << 64, "1", 1.5, None])
def test_the_encoder_refuses_a_health_counter_that_is_no_64_bit_count(value):
    """A counter the wire cannot hold is the project's error naming it: a string or a float was a
    TypeError or a struct.error out of the encoder (the wire itself holds only unsigned 64-bit counts)."""
    header = BatchHeader("c", "n", "n/1", 1, 0, 1, counters={"node_retiring": value})
    with pytest.raises(BatchFormatError, match="health counter 'node_retiring'"):
        encode_batch(header, FlowRecords.empty(1))


def test_the_local_backend_counts_them_as_decode_errors(tmp_path):
    backend = LocalBackend(tmp_path)
    for i, message in enumerate(_hostile_messages()):
        assert backend.receive(f"k{i}", message) is None
    assert backend.counters["decode_errors"] == len(BAD_NAMES) + 1
    assert backend.counters["messages"] == 0 and not list(tmp_path.rglob("*.json"))


def test_the_delivery_contract_reports_them_as_poison(tmp_path):
    deps = Dependencies(LocalObjectStore(tmp_path), CollectingNotifier(), SystemClock())
    messages = _hostile_messages()
    outcome = process_deliveries([Delivery(f"m{i}", m) for i, m in enumerate(messages)], deps)
    assert len(outcome.poison) == len(messages) and not outcome.retry and not outcome.applied


def test_a_huge_sequence_jump_costs_nothing(tmp_path):
    """A sensor's sequence leaping by 2**40 (hostile or corrupt) must not allocate a bit per step."""
    import tracemalloc

    backend = LocalBackend(tmp_path)
    for sequence in (1, 1 << 40, (1 << 64) - 1):
        (message,) = encode_batch(BatchHeader("c", "n", "n/1", sequence, 0, 1), FlowRecords.empty(1))
        tracemalloc.start()
        backend.receive(f"k{sequence}", message)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 200 << 20
    assert backend.counters["messages"] == 3
