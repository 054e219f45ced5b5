"""icmp_tunneling on flows built to the point (flow schema 4's icmp_sizes and icmp_odd): tunnels in echo
payloads and in non-echo types, and what ping, path-MTU probes and monitors look like."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kubesonar.shared.detectors import batch_of
from kubesonar.shared.detectors.icmp_tunneling import IcmpTunnelingDetector
from kubesonar.shared.flow import ConnState, FlowRecords, address_bytes

S = 1_000_000_000
T0 = 1_767_225_600 * S
POD, OUTSIDE = "10.1.0.5", "203.0.113.9"


def _icmp(n: int, *, payload: int, sizes: int, odd: int, icmp_type: int = 8, src: str = POD, dst: str = OUTSIDE,
          packets: int = 4, every_s: int = 30) -> FlowRecords:
    """``n`` ICMP flows a ``every_s`` apart, each ``packets`` messages each way of ``payload`` bytes."""
    f = FlowRecords.empty(n)
    c = f.columns
    c["src_addr"][:], c["dst_addr"][:] = np.void(address_bytes(src)), np.void(address_bytes(dst))
    c["first_ts"] = c["conn_start"] = T0 + np.arange(n, dtype=np.int64) * every_s * S
    c["last_ts"] = c["first_ts"] + 3 * S
    c["proto"][:], c["icmp_type"][:], c["icmp_code"][:], c["src_port"][:] = 1, icmp_type, 0, 77
    c["packets_out"][:] = c["packets_in"][:] = packets
    c["bytes_out"][:] = c["bytes_in"][:] = packets * (28 + payload)
    c["state"][:] = int(ConnState.ESTABLISHED)
    c["icmp_sizes"][:], c["icmp_odd"][:] = sizes, odd
    return f


def _findings(flows: FlowRecords, detector: IcmpTunnelingDetector | None = None):
    return (detector or IcmpTunnelingDetector()).observe(batch_of(flows))


def test_ping_of_any_size_and_path_mtu_probes_are_no_tunnel():
    assert not _findings(_icmp(120, payload=56, sizes=1, odd=0))  # a monitor pinging twice a minute for an hour
    assert not _findings(_icmp(120, payload=1400, sizes=1, odd=0))  # ping -s 1400
    assert not _findings(_icmp(20, payload=800, sizes=30, odd=0))  # tracepath: sizes vary, ping's pattern stays


def test_a_monitor_with_its_own_short_fixed_payload_is_no_tunnel():
    assert not _findings(_icmp(120, payload=24, sizes=1, odd=8))


def test_echo_payloads_of_many_sizes_and_no_ping_pattern_are_a_tunnel():
    """ptunnel-ng or icmpsh: the data decides the sizes."""
    (finding,) = _findings(_icmp(5, payload=90, sizes=12, odd=8, packets=4))
    assert finding.source["ip"] == POD and finding.evidence["peer"] == OUTSIDE
    assert finding.evidence["reasons"] == ["varying_echo_data"] and finding.evidence["named_end"] == "inside"


def test_large_custom_echo_payloads_are_a_tunnel_and_an_inbound_one_names_the_pod():
    """Pingback: the controller outside sends 788-byte commands, the backdoor in the pod answers."""
    flows = _icmp(6, payload=788, sizes=1, odd=2, src=OUTSIDE, dst=POD, packets=1, every_s=40)
    (finding,) = _findings(flows)
    assert finding.source["ip"] == POD and finding.evidence["named_end"] == "inside"
    assert finding.evidence["reasons"] == ["large_echo_data"] and finding.evidence["odd_messages"] == 12


def test_data_in_a_non_echo_type_is_a_tunnel():
    (finding,) = _findings(_icmp(5, payload=60, sizes=1, odd=2, icmp_type=13, packets=1))
    assert finding.evidence["reasons"] == ["non_echo_data"]


@pytest.mark.parametrize("odd", [9, 10])
def test_ten_odd_messages_make_it_sustained(odd):
    flows = _icmp(1, payload=400, sizes=6, odd=odd, packets=5)
    assert bool(_findings(flows)) == (odd >= 10)


def test_odd_messages_add_up_across_batches_and_state_and_the_tunnel_stays_flagged():
    d = IcmpTunnelingDetector()
    flows = _icmp(6, payload=300, sizes=5, odd=2, packets=1)
    assert not _findings(flows.take(np.arange(3)), d)
    d = IcmpTunnelingDetector().from_state(json.loads(json.dumps(d.to_state())))
    (finding,) = _findings(flows.take(np.arange(3, 6)), d)
    assert finding.evidence["odd_messages"] == 12
    later = _icmp(1, payload=56, sizes=1, odd=1)
    scores = d.score(batch_of(later))
    assert scores and all(s.alarm and not s.fresh for s in scores)


def test_flows_without_the_icmp_columns_are_not_judged():
    """Schema 3 and older: icmp_sizes and icmp_odd are 0."""
    assert not _findings(_icmp(50, payload=1000, sizes=0, odd=0))


def test_both_directions_are_one_channel_and_each_end_that_spoke_first_is_named():
    """Pingback between two hosts of one LAN: the controller's commands (ten odd messages) and the
    backdoor's report in a request of its own (two) add up to one channel; both ends sent crafted
    requests, so both are named."""
    commands = _icmp(5, payload=788, sizes=1, odd=2, src="192.168.38.131", dst="192.168.38.172", packets=1)
    report = _icmp(1, payload=1056, sizes=1, odd=2, src="192.168.38.172", dst="192.168.38.131", packets=1)
    assert not _findings(commands.take(np.arange(4)))
    found = _findings(FlowRecords.concat([commands.take(np.arange(4)), report]))
    assert sorted((f.source["ip"], f.evidence["peer"]) for f in found) == [
        ("192.168.38.131", "192.168.38.172"), ("192.168.38.172", "192.168.38.131")]
    assert all(f.evidence["odd_messages"] == 10 and f.evidence["named_end"] == "initiator" for f in found)
    assert {f.source["ip"]: f.evidence["odd_in_flows_it_started"] for f in found} == {
        "192.168.38.131": 8, "192.168.38.172": 2}


def test_a_plain_responder_is_not_named():
    """ptunnel-ng's client and its proxy on one LAN: the proxy only answers the client's requests."""
    (finding,) = _findings(_icmp(5, payload=90, sizes=12, odd=8, src="192.168.1.5", dst="192.168.1.9"))
    assert finding.source["ip"] == "192.168.1.5" and finding.evidence["named_end"] == "initiator"


def test_an_end_that_speaks_first_later_is_reported_then_and_each_end_once():
    d = IcmpTunnelingDetector()
    commands = _icmp(5, payload=788, sizes=1, odd=2, src="192.168.38.131", dst="192.168.38.172", packets=1)
    (first,) = _findings(commands, d)
    assert first.source["ip"] == "192.168.38.131"
    d = IcmpTunnelingDetector().from_state(json.loads(json.dumps(d.to_state())))
    report = _icmp(1, payload=1056, sizes=1, odd=2, src="192.168.38.172", dst="192.168.38.131", packets=1)
    (second,) = _findings(report, d)
    assert second.source["ip"] == "192.168.38.172"
    assert not _findings(FlowRecords.concat([commands.take(np.arange(1)), report]), d)


def test_a_window_stored_before_ends_were_kept_reports_no_end_again():
    d = IcmpTunnelingDetector()
    _findings(_icmp(5, payload=788, sizes=1, odd=2, src="192.168.38.131", dst="192.168.38.172", packets=1), d)
    state = d.to_state()
    for window in state["windows"]:  # as the code before wrote it: a flag, no ends
        assert window[2].pop("reported_ends") == ["192.168.38.131"]
        window[2]["reported"] = True
    d = IcmpTunnelingDetector().from_state(json.loads(json.dumps(state)))
    report = _icmp(1, payload=1056, sizes=1, odd=2, src="192.168.38.172", dst="192.168.38.131", packets=1)
    assert not _findings(report, d)


def test_a_window_that_ends_inside_one_batch_is_judged_before_the_next_starts():
    """A sparse capture read in one batch: the tunnel's hour, then one odd message two hours on. The hour
    was a tunnel; the next window must not replace it unjudged (its alarm carries on, not reported twice)."""
    later = _icmp(1, payload=56, sizes=1, odd=1, src="192.168.38.131", dst="192.168.38.172", packets=1)
    later.columns["first_ts"] += 7200 * S
    later.columns["last_ts"] += 7200 * S
    tunnel = _icmp(5, payload=788, sizes=1, odd=2, src="192.168.38.131", dst="192.168.38.172", packets=1)
    d = IcmpTunnelingDetector()
    (finding,) = _findings(FlowRecords.concat([tunnel, later]), d)
    assert finding.source["ip"] == "192.168.38.131" and finding.evidence["odd_messages"] == 10
    assert not _findings(later, IcmpTunnelingDetector().from_state(json.loads(json.dumps(d.to_state()))))
