"""The compiled dissection reads every field exactly as the vectorised reference does: on every shared
capture, and on the same packets with random bytes flipped, cut short and re-linktyped (hostile input)."""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import pytest
from scapy.all import IP, PPP, TCP, Dot1Q, Ether, PPPoE, wrpcap

from kubesonar.sensor.capture_file import read_capture
from kubesonar.sensor.dissect import dissect, dissect_vectorised
from kubesonar.sensor.offline import CaptureStats, flows_from_captures

from conftest import shared_captures


def _assert_same(batch) -> None:
    compiled, reference = dissect(batch), dissect_vectorised(batch)
    for f in fields(compiled):
        got, want = getattr(compiled, f.name), getattr(reference, f.name)
        bad = np.flatnonzero((got != want).reshape(len(got), -1).any(axis=1))
        assert not len(bad), f"{f.name} differs at packets {bad[:5].tolist()}: {got[bad[:3]]} != {want[bad[:3]]}"


@pytest.mark.parametrize("path", shared_captures(), ids=lambda p: p.name)
def test_compiled_dissection_matches_the_vectorised_reference(path):
    for batch in read_capture(path):
        _assert_same(batch)


@pytest.mark.parametrize("seed", range(6))
def test_they_agree_on_mutated_packets(seed):
    rng = np.random.default_rng(seed)
    captures = shared_captures()
    batch = next(iter(read_capture(captures[seed * 3 % len(captures)])))
    data = batch.data.copy()
    # flip ~2% of the bytes of the packets, so headers and lengths take every value
    hit = rng.random(len(data)) < 0.02
    data[hit] = rng.integers(0, 256, int(hit.sum()), dtype=np.uint8)
    caplen = np.minimum(batch.caplen, rng.integers(0, 200, len(batch)))  # cut anywhere
    linktype = rng.choice(np.array([0, 1, 12, 101, 108, 113, 228, 229, 276, 9999]), len(batch))
    _assert_same(replace(batch, data=data, caplen=caplen))
    _assert_same(replace(batch, data=data, linktype=linktype))


def test_qinq_pppoe_session_packets_make_flows(tmp_path):
    path = tmp_path / "pppoe.pcap"
    packets = [
        Ether() / Dot1Q(vlan=10, type=0x8100) / Dot1Q(vlan=20) / PPPoE(sessionid=7) / PPP(proto=0x0021)
        / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=80, flags=flag)
        for flag in ("S", "A", "PA")
    ]
    wrpcap(str(path), packets)
    stats = CaptureStats()
    records = [r for rs in flows_from_captures([path], stats=stats) for r in rs.iter_dicts()]
    assert [(r["src_ip"], r["dst_port"], r["packets_out"]) for r in records] == [("10.0.0.1", 80, 3)]
    _assert_same(next(iter(read_capture(path))))


def test_every_packet_that_joins_no_flow_is_counted_by_reason(tmp_path):
    from scapy.all import ARP

    path = tmp_path / "mixed.pcap"
    ip = Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=80)
    cut = Ether(bytes(ip)[:20])  # the IP header cut after 6 bytes
    wrpcap(str(path), [ip, Ether() / ARP(), Ether() / ARP(), cut])
    stats = CaptureStats()
    list(flows_from_captures([path], stats=stats))
    assert (stats.unplaced_not_ip, stats.unplaced_truncated, stats.unplaced_unknown_linktype) == (2, 1, 0)
    assert stats.unplaced_not_ip + stats.unplaced_truncated == stats.packets - stats.ip_packets


def test_native_and_jit_kernels_give_the_same_flows():
    """The flows of a capture through the JIT kernels (KUBESONAR_NATIVE=0) equal those of this process,
    which runs the native module where it was built."""
    import json
    import os
    import subprocess
    import sys

    path = str(shared_captures()[4])
    code = ("import sys, json\nfrom kubesonar.sensor.offline import flows_from_captures\n"
            "from kubesonar.sensor.record_walk import NATIVE\nassert not NATIVE\n"
            "print(json.dumps(sorted(json.dumps(r, sort_keys=True) for rs in flows_from_captures([sys.argv[1]])"
            " for r in rs.iter_dicts())))")
    env = {**os.environ, "KUBESONAR_NATIVE": "0"}
    out = subprocess.run([sys.executable, "-c", code, path], env=env, check=True, capture_output=True, text=True)
    here = sorted(json.dumps(r, sort_keys=True) for rs in flows_from_captures([path]) for r in rs.iter_dicts())
    assert json.loads(out.stdout) == here and here
