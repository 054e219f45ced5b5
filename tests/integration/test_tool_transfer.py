"""tool_transfer through the real pipeline: captures written with scapy carrying real files, read by
``kubesonar analyze`` as a user runs it (sensor, batch codec, core), and the shared Metasploit capture."""

from __future__ import annotations

import json
import subprocess

import pytest
from transfer_traffic import (
    T0,
    deb_bytes,
    elf_bytes,
    forged,
    forged_handshake,
    forged_syn,
    gzip_bytes,
    http_download,
    http_response,
    pe_bytes,
    pushed,
    staged,
    tls_download,
    write,
)

from conftest import DATA


def _alerts(*args: str) -> list[dict]:
    done = subprocess.run(["kubesonar", "analyze", *args, "--format", "json"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def _capture(tmp_path, name: str, frames: list) -> str:
    return str(write(tmp_path / name, sorted(frames, key=lambda f: f.time)))


def test_executables_received_from_outside_are_reported_from_the_receiver(tmp_path):
    capture = _capture(tmp_path, "attack.pcap", [
        *http_download("10.0.0.5", "203.0.113.10", elf_bytes(), T0),
        *http_download("10.0.0.5", "203.0.113.10", elf_bytes(), T0 + 1, path="/kdevtmpfsi", sport=41001),
        *staged("10.0.0.6", "203.0.113.20", pe_bytes(), T0 + 2),
        *pushed("203.0.113.30", "10.0.0.7", elf_bytes(), T0 + 3),
        *pushed("10.0.0.8", "203.0.113.40", elf_bytes(), T0 + 4),  # a pod sending one out: not ingress
    ])
    alerts = [a for a in _alerts(capture) if a["rule"] == "tool_transfer"]
    found = {(a["source"]["ip"], a["evidence"]["sender"]): a for a in alerts}
    assert len(alerts) == 3 and set(found) == {("10.0.0.5", "203.0.113.10"), ("10.0.0.6", "203.0.113.20"), ("10.0.0.7", "203.0.113.30")}
    curl, stager, push = (found[k]["evidence"] for k in sorted(found))
    assert curl | {"bytes": 0} == {"kind": "ELF", "via": "http", "direction": "downloaded", "sender": "203.0.113.10",
                                   "port": 80, "bytes": 0, "http_host": "203.0.113.10"}
    assert curl["bytes"] > len(elf_bytes())  # the first download's; the second raised no alert of its own
    assert stager | {"bytes": 0} == {"kind": "PE", "via": "raw stream", "direction": "downloaded",
                                     "sender": "203.0.113.20", "port": 4444, "bytes": 0}
    assert push["kind"] == "ELF" and push["direction"] == "pushed" and push["port"] == 9000
    assert found[("10.0.0.6", "203.0.113.20")]["destination"] == {"ip": "203.0.113.20", "port": 4444}


def test_archives_and_executables_over_tls_raise_nothing(tmp_path):
    capture = _capture(tmp_path, "benign.pcap", [
        *http_download("10.0.0.5", "203.0.113.10", gzip_bytes(), T0, path="/tool.gz"),
        *http_download("10.0.0.5", "203.0.113.10", deb_bytes(), T0 + 1, path="/pool/tool.deb", sport=41001),
        *tls_download("10.0.0.5", "203.0.113.11", elf_bytes(), T0 + 2),
        *http_download("10.0.0.9", "10.0.0.10", elf_bytes(), T0 + 3, port=8080),  # from a host inside
    ])
    assert [a for a in _alerts(capture) if a["rule"] == "tool_transfer"] == []


def test_a_forged_segment_no_pod_took_part_in_raises_nothing(tmp_path):
    """One packet from an outside address, no connection: a "response" to a pod's ephemeral port (taken for
    a download by the ports), a push to a port, one to an address nobody holds, and a SYN carrying the
    file from a spoofed address to a port a pod listens on (the pod's SYN-ACK goes to an address that
    never asked). The pods answer with a reset, a SYN-ACK or not at all; an outsider must not frame a pod
    with a high-severity alert by sending one. A real download in the same capture is still reported."""
    capture = _capture(tmp_path, "forged.pcap", [
        *forged("203.0.113.66", 80, "10.0.0.5", 45000, http_response(elf_bytes()), T0),
        *forged("203.0.113.67", 43000, "10.0.0.6", 9000, elf_bytes(), T0 + 1),
        *forged("203.0.113.68", 43000, "10.0.0.99", 9000, pe_bytes(), T0 + 2, answered=False),
        *forged_syn("203.0.113.69", 43001, "10.0.0.6", 9000, elf_bytes(), T0 + 3),
        *http_download("10.0.0.7", "203.0.113.10", elf_bytes(), T0 + 5),
    ])
    alerts = [a for a in _alerts(capture) if a["rule"] == "tool_transfer"]
    assert [(a["source"]["ip"], a["evidence"]["sender"]) for a in alerts] == [("10.0.0.7", "203.0.113.10")]



def test_a_blind_handshake_then_the_file_frames_no_pod(tmp_path):
    """c1580b1 took data out of SYNs, but a blind sender needs no data in its SYN: the pod's SYN-ACK answers
    the spoofed SYN (its flags then say it "accepted"), and the file follows in a segment of its own whose
    acknowledgement number is a guess, which the pod resets. No file moved; the pod must not be framed."""
    capture = _capture(tmp_path, "blind.pcap", [
        *forged_handshake("203.0.113.70", 43002, "10.0.0.6", 9000, elf_bytes(), T0),
        *http_download("10.0.0.7", "203.0.113.10", elf_bytes(), T0 + 5),
    ])
    alerts = [a for a in _alerts(capture) if a["rule"] == "tool_transfer"]
    assert [(a["source"]["ip"], a["evidence"]["sender"]) for a in alerts] == [("10.0.0.7", "203.0.113.10")]

def test_the_meterpreter_stage_is_reported_from_the_victim():
    capture = DATA / "more/c2_beacon/eternalsafety_eternalromance-doublepulsar-meterpreter.pcap"
    if not capture.exists():
        pytest.skip(f"{capture} is not on this machine")
    (alert,) = [a for a in _alerts(str(capture)) if a["rule"] == "tool_transfer"]
    assert alert["source"]["ip"] == "172.23.33.10"
    assert {k: alert["evidence"][k] for k in ("kind", "via", "direction", "sender", "port")} == {
        "kind": "PE", "via": "raw stream", "direction": "downloaded", "sender": "10.99.99.189", "port": 4444}
