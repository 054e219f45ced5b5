"""The scan test's vectorised walk equals the sequential recursion; decisions on crafted trials."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kubesonar.shared.detectors import batch_of
from kubesonar.shared.detectors.port_scan import PortScanDetector, _floored_walks
from kubesonar.shared.flow import ConnState, FlowRecords, address_bytes

from helpers import scores_of

FAIL, OK = math.log(4), math.log(0.25)
FLOOR = math.log(0.01 / 0.99)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.lists(st.booleans(), min_size=1, max_size=30), st.floats(-8, 8)), min_size=1, max_size=8))
def test_floored_walk_equals_the_recursion(segments):
    steps = np.array([FAIL if f else OK for seg, _ in segments for f in seg])
    starts = np.cumsum([0] + [len(seg) for seg, _ in segments[:-1]])
    prior = np.array([p for _, p in segments])
    walk, peak = _floored_walks(steps, starts, prior, FLOOR)
    expected, peaks = [], []
    for (seg, p) in segments:
        s, top = max(p, FLOOR), -math.inf
        for failed in seg:
            s = max(FLOOR, s + (FAIL if failed else OK))
            expected.append(s)
            top = max(top, s)
        peaks.append(top)
    assert np.allclose(walk, expected) and np.allclose(peak, peaks)


def _flows(outcomes, src="10.0.0.9", t0=0, first_port=1):
    n = len(outcomes)
    f = FlowRecords.empty(n)
    f.columns["src_addr"] = np.array([address_bytes(src)] * n, dtype="V16")
    f.columns["dst_addr"] = np.array([address_bytes(f"10.0.1.{i % 250 + 1}") for i in range(n)], dtype="V16")
    f.columns["dst_port"] = np.arange(n, dtype=np.uint16) + first_port
    f.columns["proto"] = np.full(n, 6, dtype=np.uint8)
    f.columns["first_ts"] = t0 + np.arange(n, dtype=np.int64)
    f.columns["state"] = np.array([ConnState.REJECTED if o == "x" else ConnState.CLOSED for o in outcomes], dtype=np.uint8)
    return f


def test_four_failed_first_contacts_decide_and_three_do_not():
    assert not PortScanDetector().observe(batch_of(_flows("xxx")))
    (finding,) = PortScanDetector().observe(batch_of(_flows("xxxx")))
    assert finding.source["ip"] == "10.0.0.9" and finding.evidence["failed_first_contacts"] == 4


def test_a_busy_healthy_client_is_no_scanner_and_its_history_cannot_hide_a_scan():
    d = PortScanDetector()
    assert not d.observe(batch_of(_flows("o" * 500 + "x" * 3 + "o" * 50)))
    assert not d.observe(batch_of(_flows("x" * 6, t0=10_000, first_port=2000)))  # from the floor, six do not
    (finding,) = d.observe(batch_of(_flows("x", t0=20_000, first_port=3000)))  # ... and the seventh does
    assert finding.evidence["successful_first_contacts"] == 550 and finding.evidence["failed_first_contacts"] == 10


def test_state_carries_across_batches_and_repeats_are_not_trials():
    d = PortScanDetector()
    scores_of(d, _flows("xx"))
    state = d.to_state()
    d2 = PortScanDetector().from_state(state)
    assert not d2.observe(batch_of(_flows("xx")))  # the same two contacts again: no new trials
    assert d2.observe(batch_of(_flows("xxxx")))  # two new ones make four


def _mixed(rows, src="10.0.0.9", t0=0):
    """Flows of (destination, port, refused) rows, one a second from ``t0`` seconds."""
    n = len(rows)
    f = FlowRecords.empty(n)
    f.columns["src_addr"] = np.array([address_bytes(src)] * n, dtype="V16")
    f.columns["dst_addr"] = np.array([address_bytes(dst) for dst, _, _ in rows], dtype="V16")
    f.columns["dst_port"] = np.array([port for _, port, _ in rows], dtype=np.uint16)
    f.columns["proto"] = np.full(n, 6, dtype=np.uint8)
    f.columns["first_ts"] = (t0 + np.arange(n, dtype=np.int64)) * 1_000_000_000
    f.columns["state"] = np.array([ConnState.REJECTED if refused else ConnState.CLOSED for *_, refused in rows],
                                  dtype=np.uint8)
    return f


def test_a_busy_clients_small_vertical_scan_is_decided_by_its_walk_on_that_host():
    """Seven ports of one host refused over a minute, while the client goes on reaching new web servers:
    its successes elsewhere hold the source's walk at the floor, and the per-host walk decides."""
    browsing = [(f"10.0.2.{i}", 443, False) for i in range(1, 41)]
    scan = [row for i, port in enumerate((21, 22, 23, 25, 110, 139, 445))
            for row in (("10.0.3.7", port, True), (f"10.0.4.{i}", 443, False))]  # a success between probes
    d = PortScanDetector()
    assert not d.observe(batch_of(_mixed(browsing)))
    findings = []
    for i in range(0, len(scan), 2):  # a batch every ten seconds
        findings += d.observe(batch_of(_mixed(scan[i:i + 2], t0=100 + 5 * i)))
    finding = findings[0]  # later batches add evidence to the same alert
    assert finding.evidence["host_walk"]["target"] == "10.0.3.7"
    assert finding.evidence["failed_first_contacts"] == 4  # decided at the fourth refused port
    assert d.state.sources["10.0.0.9"].log_likelihood_ratio < math.log(99)  # the source walk alone would not


def test_successes_on_the_same_host_take_failures_back():
    """A client finding a host's services: refused and open ports alternate, so the host walk stays low."""
    rows = [("10.0.3.7", port, port % 2 == 0) for port in range(8000, 8012)]
    assert not PortScanDetector().observe(batch_of(_mixed(rows)))


def test_sources_are_coded_alike_in_every_process():
    """Sources' codes followed the order of hash() of their workload names, which differs per process:
    the walks were summed in another order in each, and stored walks differed in their last bits (one
    kept at 2.6e-11 here, 0 there). The codes now follow the flows' order, whatever the hash seed."""
    import os
    import subprocess
    import sys

    script = (
        "import numpy as np\n"
        "from kubesonar.shared.detectors.port_scan import _source_keys\n"
        "from kubesonar.shared.flow import FlowRecords, address_bytes\n"
        "n = 40\n"
        "flows = FlowRecords.empty(n).columns\n"
        "flows['src_addr'] = np.array([address_bytes(f'10.1.{i}.5') for i in range(n)], dtype='V16')\n"
        "flows['src_namespace'] = np.array(['shop'] * n, dtype=object)\n"
        "flows['src_workload_kind'] = np.array(['Deployment'] * n, dtype=object)\n"
        "flows['src_workload_name'] = np.array([f'svc-{i % 13}' for i in range(n)], dtype=object)\n"
        "codes, names = _source_keys(flows)\n"
        "print(codes.tolist(), names)\n"
    )
    runs = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in (1, 2, 3)}
    assert len(runs) == 1 and "svc-12" in runs.pop()


def test_requests_a_capture_ends_before_they_could_be_answered_are_no_failures(tmp_path):
    """zeek_ntp_sync cut after its NTP client's 15 requests, before any answer (as a capture stopped at a
    packet count is): the requests are no unanswered first contacts. The same requests with the capture
    going on past the time an answer was due, still unanswered, are a sweep."""
    from scapy.all import IP, UDP, Ether, rdpcap, wrpcap

    from kubesonar.compose import analyze
    from kubesonar.sensor.flow_table import ANSWER_DUE_S

    from conftest import DATA

    requests = rdpcap(str(DATA / "more/benign/zeek_ntp_sync.pcap"))[:17]  # the lookup, its answer, 15 NTP
    assert [p[UDP].dport for p in requests[2:]] == [123] * 15 and {p[IP].src for p in requests[2:]} == {"192.168.50.50"}

    def scans(packets) -> list[str]:
        wrpcap(str(tmp_path / "cut.pcap"), packets)
        return [a["source"]["ip"] for a in analyze([str(tmp_path / "cut.pcap")]).alerts if a["rule"] == "port_scan"]

    assert scans(requests) == []
    later = Ether() / IP(src="192.168.50.50", dst="192.168.0.1") / UDP(sport=5353, dport=53)
    later.time = requests[-1].time + ANSWER_DUE_S + 1
    assert scans([*requests, later]) == ["192.168.50.50"]
