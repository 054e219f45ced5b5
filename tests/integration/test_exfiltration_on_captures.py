"""exfiltration judged cold on the real captures: the stealer uploads and the credential drops by mail and
FTP are reported from the infected host by ``analyze`` with its defaults (a day's learning period never
over, no pod inventory), and no capture of another kind gains an exfiltration alert even with every
address taken as outside the cluster."""

from __future__ import annotations

import csv

import pytest

from kubesonar.compose import analyze

from conftest import DATA, PCAPS

MORE = DATA / "more"


def _labels(root):
    with open(root / "labels.csv") as f:
        return [dict(r, root=root) for r in csv.DictReader(f)]


ALL = _labels(PCAPS) + _labels(MORE)
# the exfiltration captures over TCP, each with the channel its mechanism names (ICMP: below)
CHANNELS = {"exfil/spiderlabs_predator_stealer_01Dec2019.pcap": "upload",
            "exfil/spiderlabs_predator_stealer_14July2019.pcap": "upload",
            "exfil/spiderlabs_hawkeye_keylogger_ftp.pcap": "ftp",
            "exfil/corelight_agenttesla_smtp_a30789ce.pcap": "mail"}
EXFIL = [r for r in ALL if r["path"] in CHANNELS]
OTHERS = [r for r in ALL if "exfiltration" not in r["expected_alert"].split("|")]


def test_the_labels_hold_the_exfiltration_captures_and_many_others():
    assert len(EXFIL) == len(CHANNELS) and len(OTHERS) >= 40


@pytest.mark.parametrize("label", EXFIL, ids=lambda r: r["path"])
def test_every_tcp_exfiltration_capture_is_reported_cold_from_the_infected_host(label):
    result = analyze([str(label["root"] / label["path"])])
    found = [a for a in result.alerts if a["rule"] == "exfiltration"]
    assert {a["source"]["ip"] for a in found} == {label["actor_ip"]}
    assert {a["evidence"]["kind"] for a in found} == {CHANNELS[label["path"]]}
    assert label["target_ip"] in {a["evidence"]["destination"].rsplit(":", 1)[0] for a in found}


@pytest.mark.parametrize("label", OTHERS, ids=lambda r: r["path"])
def test_no_other_capture_gains_an_exfiltration_alert(label):
    result = analyze([str(label["root"] / label["path"])], internal_networks=())
    assert result.flows > 0 and [a for a in result.alerts if a["rule"] == "exfiltration"] == []


def test_pingback_is_named_from_the_end_inside_the_cluster():
    """ICMP does not tell the implant from its controller (Pingback's implant answers crafted requests,
    icmpsh's sends them); the cluster does: with the controller outside, the infected host is named."""
    path = MORE / "exfil/spiderlabs_pingback_icmp.pcapng"
    result = analyze([str(path)], internal_networks=("192.168.38.172/32",))
    assert {(a["type"], a["rule"], a["source"]["ip"]) for a in result.alerts} == {
        ("exfiltration", "icmp_tunneling", "192.168.38.172")}


@pytest.mark.parametrize("path, port", [("exfil/corelight_agenttesla_smtp_a30789ce.pcap", 587),
                                        ("exfil/spiderlabs_hawkeye_keylogger_ftp.pcap", 21)])
def test_a_credential_drop_is_reported_when_the_capture_lost_the_servers_syn_ack(tmp_path, path, port):
    """A tap or a kernel buffer that overflowed loses packets: without the server's SYN-ACK the session
    is still one the server answered (its greeting and replies are there)."""
    from scapy.all import TCP, PcapReader, wrpcap

    with PcapReader(str(MORE / path)) as packets:
        kept = [p for p in packets if not (TCP in p and p[TCP].sport == port and p[TCP].flags.S)]
    wrpcap(str(tmp_path / "lossy.pcap"), kept)
    label = next(r for r in EXFIL if r["path"] == path)
    found = [a for a in analyze([str(tmp_path / "lossy.pcap")]).alerts if a["rule"] == "exfiltration"]
    assert {(a["source"]["ip"], a["evidence"]["kind"]) for a in found} == {(label["actor_ip"], CHANNELS[path])}
