"""An executable counts only in a segment the receiver's TCP would take: its acknowledgement number
acknowledges the other side's SYN and no more than the other side sent (sensor/flow_kernel.py
_acknowledges). Crafted connections with chosen initial sequence numbers, through the flow table as the
sensor runs it (sensor/observe.py), each side's flag read from its records."""

from __future__ import annotations

import pytest
from scapy.all import IP, TCP, Ether, Raw
from transfer_traffic import T0, elf_bytes, http_download, staged, write

from kubesonar.sensor.capture_file import read_capture
from kubesonar.sensor.flow_table import FlowTable
from kubesonar.sensor.observe import observe
from kubesonar.shared.flow import Executable, FlowRecords, executable_sent

OUTSIDE, POD = "203.0.113.70", "10.0.0.6"
ELF = elf_bytes()[:900]
WRAP = 1 << 32


def _seg(side: str, flags: str, seq: int, ack: int = 0, data: bytes = b""):
    """A segment of the outside client (``"c"``) or of the pod's server on port 9000 (``"s"``)."""
    src, sport, dst, dport = (OUTSIDE, 43000, POD, 9000) if side == "c" else (POD, 9000, OUTSIDE, 43000)
    packet = Ether() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags, seq=seq % WRAP,
                                                  ack=ack % WRAP)
    return packet / Raw(data) if data else packet


def _handshake(client_isn: int, pod_isn: int) -> list:
    return [_seg("c", "S", client_isn), _seg("s", "SA", pod_isn, client_isn + 1),
            _seg("c", "A", client_isn + 1, pod_isn + 1)]


def _sent(tmp_path, frames: list) -> list[tuple[int, int]]:
    """Per record, (what the initiator sent, what the responder sent), the sensor's flags."""
    for k, f in enumerate(frames):
        f.time = T0 + k * 0.001
    table = FlowTable()
    parts = [observe(batch, table, None)[0].flows for batch in read_capture(write(tmp_path / "t.pcap", frames))]
    records = FlowRecords.concat([*parts, table.flush()])
    return list(zip(executable_sent(records, "out").tolist(), executable_sent(records, "in").tolist(), strict=True))


PUSHED, NOTHING = [(Executable.ELF, 0)], [(0, 0)]
C, P = 5000, 7000  # initial sequence numbers: the outside client's, the pod's


@pytest.mark.parametrize("frames, expected", [
    pytest.param([*_handshake(C, P), _seg("c", "PA", C + 1, P + 1, ELF)], PUSHED, id="acknowledges the SYN-ACK"),
    pytest.param([*_handshake(C, P), _seg("c", "PA", C + 1, 123456, ELF)], NOTHING, id="a guessed ack"),
    # the pod's reset of that segment carries the guess as its sequence number: it is no data the pod sent
    pytest.param([_seg("c", "S", C), _seg("s", "SA", P, C + 1), _seg("c", "PA", C + 1, 123456, ELF),
                  _seg("s", "R", 123456), _seg("c", "PA", C + 1, 123456, ELF)], NOTHING, id="guessed, reset, again"),
    pytest.param([*_handshake(C, P), _seg("c", "PA", C + 1, P, ELF)], NOTHING, id="short of the SYN"),
    pytest.param([*_handshake(C, P), _seg("s", "PA", P + 1, C + 1, b"220 ready\r\n"),
                  _seg("c", "PA", C + 1, P + 12, ELF)], PUSHED, id="acknowledges the banner"),
    pytest.param([*_handshake(C, P), _seg("s", "PA", P + 1, C + 1, b"220 ready\r\n"),
                  _seg("c", "PA", C + 1, P + 13, ELF)], NOTHING, id="past what the pod sent"),
    pytest.param([*_handshake(C, P), _seg("c", "PA", C + 1, P + 1, ELF[:400]), _seg("c", "A", C + 401, P + 1),
                  _seg("c", "PA", C + 401, P + 1, ELF)], PUSHED, id="the second segment"),
    pytest.param([_seg("c", "PA", C + 1, 123456, ELF), _seg("s", "A", 123456, C + 901)], PUSHED,
                 id="joined mid-connection"),
    pytest.param([*_handshake(C, WRAP - 5), _seg("s", "PA", WRAP - 4, C + 1, b"220 ready\r\n"),
                  _seg("c", "PA", C + 1, WRAP - 4 + 11, ELF)], PUSHED, id="the pod's sequence wraps"),
    pytest.param([*_handshake(C, WRAP - 5), _seg("s", "PA", WRAP - 4, C + 1, b"220 ready\r\n"),
                  _seg("c", "PA", C + 1, WRAP - 4 + 12, ELF)], NOTHING, id="past what the pod sent, wrapped"),
    pytest.param([*_handshake(C, WRAP - 1), _seg("c", "PA", C + 1, WRAP - 1, ELF)], NOTHING,
                 id="short of a SYN at the wrap"),
    pytest.param([*_handshake(WRAP - 1, P), _seg("c", "PA", WRAP, P + 1, ELF)], PUSHED,
                 id="the client's sequence wraps"),
])
def test_a_pushed_executable_counts_when_its_ack_is_one_the_pod_takes(tmp_path, frames, expected):
    assert _sent(tmp_path, frames) == expected


def test_downloads_acknowledge_the_pods_syn_and_request(tmp_path):
    """The response to an HTTP request (acknowledging the request) and a stager's stage sent before the pod
    said anything (acknowledging its SYN alone) are the pod's downloads."""
    assert _sent(tmp_path, http_download(POD, OUTSIDE, elf_bytes(), T0)) == [(0, Executable.ELF)]
    assert _sent(tmp_path, staged(POD, OUTSIDE, elf_bytes(), T0)) == [(0, Executable.ELF)]
    forged = http_download(POD, OUTSIDE, elf_bytes(), T0)
    response = next(f for f in forged if f[TCP].sport == 80 and Raw in f)
    response[TCP].ack += 1_000_000  # a response acknowledging far more than the pod's request
    assert _sent(tmp_path, forged) == [(0, 0)]
