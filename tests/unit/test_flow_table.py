"""Timeouts, flow ids and who initiated, on crafted traffic."""

from __future__ import annotations

import pytest
from scapy.all import IP, TCP, UDP, Ether, PcapWriter, Raw

from kubesonar.sensor.flow_table import FlowTimeouts
from kubesonar.shared.detectors import batch_of

from helpers import flows_of

T0 = 1_700_000_000.0


def _write(path, timed):
    w = PcapWriter(str(path), sync=True, linktype=1)
    for t, p in timed:
        p = Ether() / p
        p.time = T0 + t
        w.write(p)
    w.close()
    return path


def _udp(t, src="10.0.0.1", dst="10.0.0.2", sport=5000, dport=9000):
    return t, IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(b"x" * 10)


def test_active_timeout_cuts_interim_records_sharing_one_flow_id(tmp_path):
    path = _write(tmp_path / "a.pcap", [_udp(t) for t in range(0, 100, 2)])  # 50 packets over 98 s
    records = flows_of(path, FlowTimeouts(active_s=30, idle_s=60))
    assert len(records) == 4
    assert len({r["flow_id"] for r in records}) == 1
    assert [r["end_reason"] for r in records] == ["active_timeout"] * 3 + ["end_of_input"]
    assert sum(r["packets_out"] for r in records) == 50
    assert all(r["conn_start"] == pytest.approx(T0) for r in records)
    assert all(r["last_ts"] - r["first_ts"] < 30 for r in records)


def test_idle_timeout_ends_a_flow_and_a_new_one_gets_a_new_id(tmp_path):
    path = _write(tmp_path / "i.pcap", [_udp(0), _udp(1), _udp(200), _udp(201)])
    records = flows_of(path, FlowTimeouts(active_s=300, idle_s=60))
    assert [r["end_reason"] for r in records] == ["idle_timeout", "end_of_input"]
    assert records[0]["flow_id"] != records[1]["flow_id"]


def test_the_same_results_whatever_the_batch_boundaries(tmp_path, monkeypatch):
    from kubesonar.sensor import capture_file

    timed = [_udp(t * 0.5, sport=5000 + (t % 7)) for t in range(400)]
    path = _write(tmp_path / "b.pcap", timed)
    whole = flows_of(path, FlowTimeouts(active_s=20, idle_s=3))
    monkeypatch.setattr(capture_file, "CHUNK_BYTES", 700)  # a handful of packets per batch
    pieces = flows_of(path, FlowTimeouts(active_s=20, idle_s=3))
    assert pieces == whole


def test_initiator_is_the_syn_sender_even_when_the_answer_comes_first(tmp_path):
    path = _write(tmp_path / "s.pcap", [
        (0.000, IP(src="10.0.0.9", dst="10.0.0.1") / TCP(sport=443, dport=50000, flags="SA")),
        (0.001, IP(src="10.0.0.1", dst="10.0.0.9") / TCP(sport=50000, dport=443, flags="A")),
    ])
    (flow,) = flows_of(path)
    assert (flow["src_ip"], flow["src_port"], flow["dst_port"]) == ("10.0.0.1", 50000, 443)


def test_mid_stream_flows_fall_back_to_the_service_port(tmp_path):
    path = _write(tmp_path / "m.pcap", [
        (0.000, IP(src="10.0.0.9", dst="10.0.0.1") / TCP(sport=5432, dport=41000, flags="PA") / Raw(b"r")),
        (0.001, IP(src="10.0.0.1", dst="10.0.0.9") / TCP(sport=41000, dport=5432, flags="A")),
    ])
    (flow,) = flows_of(path)
    assert (flow["src_ip"], flow["dst_port"], flow["state"]) == ("10.0.0.1", 5432, "other")


@pytest.mark.parametrize(
    "packets, state",
    [
        ([("c", "S")], "unknown"),  # the capture ended before an answer was due
        ([("c", "S"), ("s", "RA")], "rejected"),
        ([("c", "F"), ("s", "RA")], "rejected"),
        ([("c", "S"), ("s", "SA"), ("c", "A")], "established"),
        ([("c", "S"), ("s", "SA"), ("c", "A"), ("c", "FA"), ("s", "FA"), ("c", "A")], "closed"),
        ([("c", "S"), ("s", "SA"), ("c", "A"), ("c", "R")], "reset"),
    ],
)
def test_connection_states(tmp_path, packets, state):
    timed = []
    for i, (who, flags) in enumerate(packets):
        src, dst, sp, dp = ("10.0.0.1", "10.0.0.2", 40000, 80) if who == "c" else ("10.0.0.2", "10.0.0.1", 80, 40000)
        timed.append((i * 0.001, IP(src=src, dst=dst) / TCP(sport=sp, dport=dp, flags=flags)))
    (flow,) = flows_of(_write(tmp_path / "t.pcap", timed))
    assert flow["state"] == state


def test_a_syn_still_unanswered_when_an_answer_was_due_is_attempted(tmp_path):
    from kubesonar.sensor.flow_table import ANSWER_DUE_S

    syn = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=80, flags="S")
    other = IP(src="10.0.0.3", dst="10.0.0.4") / UDP(sport=5353, dport=53)
    flows = flows_of(_write(tmp_path / "t.pcap", [(0.0, syn), (ANSWER_DUE_S + 0.001, other)]))
    assert [f["state"] for f in flows if f["proto"] == 6] == ["attempted"]


def test_a_new_connection_on_a_closed_five_tuple_is_a_new_flow(tmp_path):
    def conn(t0, seq):
        c = dict(src="10.0.0.1", dst="10.0.0.2")
        s = dict(src="10.0.0.2", dst="10.0.0.1")
        return [
            (t0, IP(**c) / TCP(sport=40000, dport=80, flags="S", seq=seq)),
            (t0 + 0.001, IP(**s) / TCP(sport=80, dport=40000, flags="SA")),
            (t0 + 0.002, IP(**c) / TCP(sport=40000, dport=80, flags="R")),
        ]

    path = _write(tmp_path / "r.pcap", conn(0, 100) + conn(1, 900))
    records = flows_of(path)
    assert len(records) == 2 and records[0]["end_reason"] == "new_connection"
    assert records[0]["flow_id"] != records[1]["flow_id"]


def test_a_flood_of_distinct_tuples_stays_within_the_cap_and_every_probe_is_still_reported(tmp_path):
    import numpy as np

    from kubesonar.sensor.capture_file import read_capture
    from kubesonar.sensor.dissect import dissect
    from kubesonar.sensor.flow_table import FlowTable
    from kubesonar.sensor.synthetic import syn_flood, write_traffic
    from kubesonar.shared.detectors.port_scan import PortScanDetector
    from kubesonar.shared.flow import FlowRecords

    rng = np.random.default_rng(5)
    source, targets = (10 << 24) | 99, (10 << 24) | (1 << 8) | np.arange(1, 17)
    path = tmp_path / "flood.pcap"
    write_traffic(path, [syn_flood(rng, source, targets, 60_000, 3.0)], 1.7e9)
    table = FlowTable(FlowTimeouts(), max_flows=4096)
    out, largest = [], 0
    for batch in read_capture(path):
        for lo in range(0, len(batch), 2000):  # sensor-sized bites
            part = batch.__class__(batch.data, batch.offset[lo:lo + 2000], batch.caplen[lo:lo + 2000],
                                   batch.wirelen[lo:lo + 2000], batch.ts[lo:lo + 2000], batch.linktype[lo:lo + 2000])
            out.append(table.add(dissect(part), part.ts))
            largest = max(largest, len(table))
    out.append(table.flush())
    records = FlowRecords.concat(out)
    assert largest <= 4096 and table.evicted > 50_000
    assert len(records) == 60_000 and int(records["packets_out"].sum()) == 60_000  # nothing lost
    detector = PortScanDetector()
    (finding,) = detector.observe(batch_of(records))
    assert finding.source["ip"] == "10.0.0.99" and finding.evidence["target_count"] == 16


def test_ending_many_flows_at_once_gives_the_records_that_ending_them_a_few_at_a_time_gives(tmp_path):
    """A mass end (a window's expiry, the shutdown after a flood) is gathered from the table in chunks:
    the records must be those of flows ended in groups small enough to be gathered whole."""
    import tracemalloc

    import numpy as np

    from kubesonar.sensor.capture_file import read_capture
    from kubesonar.sensor.dissect import dissect
    from kubesonar.sensor.flow_table import FlowTable
    from kubesonar.sensor.synthetic import syn_flood, write_traffic
    from kubesonar.shared.flow import ConnState, EndReason, FlowRecords

    rng = np.random.default_rng(7)
    path = tmp_path / "flood.pcap"
    write_traffic(path, [syn_flood(rng, (10 << 24) | 99, (10 << 24) | (1 << 8) | np.arange(1, 5), 20_000, 2.0)], 1.7e9)
    timeouts = FlowTimeouts(idle_s=10)
    at_once, in_groups = FlowTable(timeouts), FlowTable(timeouts)
    first = None
    for batch in read_capture(path):
        first = int(batch.ts.min()) if first is None else first
        for table in (at_once, in_groups):
            table.add(dissect(batch), batch.ts)
    groups = [in_groups.expire(first + int((10 + t) * 1e9)) for t in (0.5, 1.0, 1.5, 2.5)]
    assert max(map(len, groups)) < 8192 < 20_000 == sum(map(len, groups))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    whole = at_once.flush()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    # the records hold their own columns, not the table rows they were read from (41 numbers a row)
    assert held < 1.1 * sum(column.nbytes for column in whole.columns.values())

    def in_order(records):
        records = records.take(np.lexsort((records["dst_port"], records["src_port"], records["dst_addr"].view("u1")
                                           .reshape(-1, 16)[:, -1], records["first_ts"])))
        records.columns["end_reason"][:] = EndReason.UNKNOWN
        # an end of input leaves the flows of its last second unanswered UNKNOWN (ANSWER_DUE_S), expiry does not
        records.columns["state"][records["state"] == ConnState.UNKNOWN] = ConnState.ATTEMPTED
        return records

    assert (whole["end_reason"] == EndReason.END_OF_INPUT).all()
    assert in_order(whole).equals(in_order(FlowRecords.concat(groups)))


def test_a_mass_end_is_handed_on_in_parts_of_at_most_the_batch_size_and_loses_nothing(tmp_path):
    """A window's expiry and the shutdown end flows a part at a time (the sensor publishes each part
    before ending the next), so a flood's table is never all records in memory at once."""
    import numpy as np

    from kubesonar.sensor.capture import Capture
    from kubesonar.sensor.capture_file import read_capture
    from kubesonar.sensor.live import SensorSettings
    from kubesonar.sensor.observe import observe
    from kubesonar.sensor.synthetic import syn_flood, write_traffic
    from kubesonar.shared.flow import EndReason, FlowRecords

    rng = np.random.default_rng(11)
    path = tmp_path / "flood.pcap"
    write_traffic(path, [syn_flood(rng, (10 << 24) | 99, (10 << 24) | (1 << 8) | np.arange(1, 5), 9_000, 2.0)], 1.7e9)
    settings = SensorSettings(interfaces=("none",), timeouts=FlowTimeouts(idle_s=10, unanswered_s=5.0))
    capture = Capture(settings)  # no interface opened: packets go straight to its table
    first = None
    for batch in read_capture(path):
        observe(batch, capture.table, capture.dns)
        first = int(batch.ts.min()) if first is None else first
    capture.take()

    def parts(end, most):
        out = []
        while True:
            more = end(most)
            out += capture.take()[0]
            if not more:
                return out

    cut = first + int(1.5e9)  # the probes of the first 1.5 s are unanswered for 5 s at cut + 5 s
    expired = parts(lambda most: capture.expire(cut + int(5e9), most), 1000)
    finished = parts(lambda most: capture.finish(most), 1000)
    assert max(map(len, expired + finished)) <= 1000 and len(expired) > 1 and len(finished) > 1
    expired, finished = FlowRecords.concat(expired), FlowRecords.concat(finished)
    assert (expired["last_ts"] < cut).all() and (finished["last_ts"] >= cut).all()
    assert len(expired) + len(finished) == 9_000 and len(capture.table) == 0
    assert (expired["end_reason"] == EndReason.IDLE_TIMEOUT).all()
    assert (finished["end_reason"] == EndReason.END_OF_INPUT).all()


def test_capture_workers_share_the_nodes_flow_cap(tmp_path):
    """--max-flows bounds the node: with N workers each table holds max_flows / N (the fanout hash gives
    each about 1/N of the flows), so a flood costs the memory of one full table, not N."""
    import numpy as np

    from kubesonar.sensor.capture import Capture
    from kubesonar.sensor.capture_file import read_capture
    from kubesonar.sensor.capture_workers import worker_settings
    from kubesonar.sensor.live import SensorSettings
    from kubesonar.sensor.observe import observe
    from kubesonar.sensor.synthetic import syn_flood, write_traffic
    from kubesonar.shared.flow import EndReason, FlowRecords

    path = tmp_path / "flood.pcap"
    rng = np.random.default_rng(5)
    write_traffic(path, [syn_flood(rng, (10 << 24) | 99, (10 << 24) | (1 << 8) | np.arange(1, 5), 6_000, 2.0)], 1.7e9)
    settings = SensorSettings(interfaces=("none",), max_flows=4_096, workers=4)
    capture = Capture(worker_settings(settings))  # one worker's table; no interface opened
    most, ended = 0, []
    for batch in read_capture(path):
        ended.append(observe(batch, capture.table, capture.dns)[0].flows)
        most = max(most, len(capture.table))
    records = FlowRecords.concat(ended)
    assert capture.table.max_flows == 1_024 and most <= 1_024 < 6_000
    assert (records["end_reason"] == EndReason.EVICTED).sum() >= 6_000 - 1_024  # evicted, sent on, not lost



@pytest.mark.parametrize("held_rows", [1, 7, 10_000])
def test_held_rows_give_the_records_each_batch_gives_even_as_the_registries_forget(tmp_path, monkeypatch,
                                                                                  held_rows):
    """Records of held rows are built later, in bigger sets: the same records in the same order, with the
    HTTP hosts of their flows although the registry forgets ended flows' entries at nearly every batch."""
    from kubesonar.sensor import capture_file
    from kubesonar.sensor.app_layer import DnsParser
    from kubesonar.sensor.flow_table import FlowTable
    from kubesonar.sensor.observe import observe
    from kubesonar.shared.flow import FlowRecords

    path = _write(tmp_path / "h.pcap", [
        (i, IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000 + i, dport=80, flags="PA")
         / Raw(f"GET / HTTP/1.1\r\nHost: h{i}.example\r\n\r\n".encode())) for i in range(60)])
    monkeypatch.setattr(capture_file, "CHUNK_BYTES", 700)  # a handful of packets per batch

    def records(held: int) -> FlowRecords:
        table, parts = FlowTable(FlowTimeouts(idle_s=0.5), held_rows=held), []
        table.tls_prune_at = 1  # each flow ends before the next begins: the hosts of ended ones are forgotten
        for batch in capture_file.read_capture(path):
            parts.append(observe(batch, table, DnsParser())[0].flows)
        return FlowRecords.concat([*parts, table.flush()])

    each_batch, held = records(0), records(held_rows)
    assert sorted(each_batch["http_host"].tolist()) == sorted(f"h{i}.example" for i in range(60))
    assert held.equals(each_batch)


def test_a_syn_retransmitted_until_the_capture_ended_is_attempted(tmp_path):
    """The answer to the first SYN was due long before the input ended, whatever its retransmissions:
    the connection failed, as the idle timeout would have said."""
    from kubesonar.sensor.flow_table import ANSWER_DUE_S

    syn = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=80, flags="S", seq=1000)
    other = IP(src="10.0.0.3", dst="10.0.0.4") / UDP(sport=5353, dport=53)
    last = 3.0  # Linux retransmits an unanswered SYN after 1 s, then 2 s later
    timed = [(0.0, syn), (1.0, syn), (last, syn), (last + ANSWER_DUE_S / 2, other)]
    flows = flows_of(_write(tmp_path / "t.pcap", timed))
    assert [f["state"] for f in flows if f["proto"] == 6] == ["attempted"]


def test_an_unanswered_flow_keeps_its_state_across_its_interim_records(tmp_path):
    path = _write(tmp_path / "a.pcap", [_udp(t) for t in range(0, 100, 2)])  # one way, over 98 s
    records = flows_of(path, FlowTimeouts(active_s=30, idle_s=60))
    assert [r["state"] for r in records] == ["attempted"] * 4


def test_a_live_sensor_stopping_seconds_after_an_unanswered_probe_ends_it_attempted(tmp_path):
    """The live sensor watched the node until it stopped, not until the last packet it saw: a probe
    left unanswered 3 s before the shutdown of a quiet node (too soon for the 5 s expiry of an
    unanswered flow) had its answer due."""
    import time

    from kubesonar.sensor.capture import Capture
    from kubesonar.sensor.capture_file import read_capture
    from kubesonar.sensor.live import LIVE_TIMEOUTS, SensorSettings
    from kubesonar.sensor.observe import observe
    from kubesonar.shared.flow import ConnState, FlowRecords

    probe = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=8080, flags="S")
    path = _write(tmp_path / "probe.pcap", [(time.time() - T0 - 3.0, probe)])  # stamped 3 s ago
    capture = Capture(SensorSettings(interfaces=("none",), timeouts=LIVE_TIMEOUTS))  # no interface opened
    for batch in read_capture(path):
        observe(batch, capture.table, capture.dns)
    capture.expire(time.time_ns())  # the window's expiry: 3 s is short of LIVE_TIMEOUTS.unanswered_s
    capture.finish()
    ended = FlowRecords.concat(capture.take()[0])
    assert ended["state"].tolist() == [ConnState.ATTEMPTED]


def test_a_connection_whose_first_request_comes_after_an_interim_record_keeps_its_opening(tmp_path):
    """A pooled connection opened, then used a minute later: its handshake is in the interim record
    before, and the request is still its client's first payload."""
    from kubesonar.shared.flow import Opening

    c, s = dict(src="10.0.0.1", dst="203.0.113.7"), dict(src="203.0.113.7", dst="10.0.0.1")
    out, back = dict(sport=40000, dport=80), dict(sport=80, dport=40000)
    request = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
    timed = [(0.0, IP(**c) / TCP(**out, flags="S", seq=100)),
             (0.01, IP(**s) / TCP(**back, flags="SA", seq=500, ack=101)),
             (0.02, IP(**c) / TCP(**out, flags="A", seq=101, ack=501)),
             (45.0, IP(**c) / TCP(**out, flags="PA", seq=101, ack=501) / Raw(request)),
             (45.05, IP(**s) / TCP(**back, flags="PA", seq=501, ack=101 + len(request)) / Raw(b"HTTP/1.1 200 OK\r\n"))]
    records = flows_of(_write(tmp_path / "pool.pcap", timed), FlowTimeouts(active_s=30, idle_s=60))
    assert [r["end_reason"] for r in records] == ["active_timeout", "end_of_input"]
    assert records[-1]["opening"] in (Opening.HTTP, "http")
