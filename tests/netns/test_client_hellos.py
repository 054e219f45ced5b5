"""Today's ClientHellos on a live node: headless Chromium (a post-quantum key share makes its hello about
2 KB, past the 928-byte snap length) opens TLS to a server pod over the lab bridge. The live sensor
names the client (JA4, JA3, server name, ALPN) exactly as a full-length capture of the same traffic,
read offline, does: once with the hello in one packet (the veth hands TCP's large segments over
whole), once split over several segments (segmentation forced on the client's veth)."""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from kubesonar.sensor.offline import flows_from_captures
from kubesonar.shared.batch import decode_batch
from kubesonar.shared.flow import FlowRecords
from netns.node import namespace_node

from conftest import require_tool

pytestmark = pytest.mark.slow  # real tools and timers: tens of seconds each

SERVER_NAME = "hello.lab.test"
PORT = 8443


@contextmanager
def _live_sensor_and_full_capture(node, tmp_path: Path, transport: str):
    """The live sensor on the bridge (its ring open once it has published a first window) and tcpdump's
    full-length capture of the same traffic, both ended once the block's traffic is done."""
    dump = subprocess.Popen(["tcpdump", "-i", node.bridge, "-w", str(tmp_path / "full.pcap"), "-U", "-s", "0",
                             f"{transport} port {PORT}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sensor = subprocess.Popen(
        ["kubesonar", "sensor", "-i", node.bridge, "--window", "2", "--queue", f"file://{tmp_path / 'queue'}",
         "--spool", str(tmp_path / "spool"), "--duration", "12"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not any((tmp_path / "queue").glob("*.ksfb")):
            assert time.monotonic() < deadline and sensor.poll() is None, "the sensor never published"
            time.sleep(0.1)
        yield
        _, errors = sensor.communicate(timeout=60)
        assert sensor.returncode == 0, errors
    finally:
        sensor.kill()
        time.sleep(0.3)
        dump.terminate()
        dump.wait(timeout=10)


def _chromium(chromium: str, tmp_path: Path, server_ip: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    return (chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            f"--user-data-dir={tmp_path / 'profile'}", "--ignore-certificate-errors", *extra,
            f"--host-resolver-rules=MAP {SERVER_NAME} {server_ip}", "--dump-dom", f"https://{SERVER_NAME}:{PORT}/")


def _tls_hellos(records: FlowRecords, server: str) -> dict[int, tuple[str, str, str, str]]:
    return {r["src_port"]: (r["tls_ja4"], r["tls_ja3"], r["tls_sni"], r["tls_alpn"])
            for r in records.iter_dicts() if r["dst_ip"] == server and r["dst_port"] == PORT and r["tls_ja4"]}


def _hello_lengths(pcap: Path) -> list[tuple[int, int]]:
    """(captured bytes of the packet starting each ClientHello, the hello record's length), as tshark reads them."""
    out = subprocess.run([require_tool("tshark"), "-n", "-r", str(pcap), "-d", f"tcp.port=={PORT},tls", "-Y",
                          "tls.handshake.type == 1", "-T", "fields", "-e", "frame.len", "-e", "tls.record.length"],
                         capture_output=True, text=True, check=True).stdout
    return [tuple(int(v.split(",")[0]) for v in line.split("\t")) for line in out.splitlines()]


@pytest.mark.parametrize("segmented", [False, True], ids=["one packet", "several segments"])
def test_chromiums_hello_is_named_live_as_a_full_capture_names_it(tmp_path, segmented):
    chromium = require_tool("chromium")
    openssl = require_tool("openssl")
    require_tool("tcpdump")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem"), "-days", "1", "-subj", f"/CN={SERVER_NAME}"],
                   check=True, capture_output=True)
    with namespace_node(["client", "server"]) as node:
        server_ip = node.pods["server"]
        if segmented:  # GSO capped at one segment: TCP's segments leave the client as the wire would carry them
            node.run("client", "ip", "link", "set", node.interface("client"), "gso_max_segs", "1", check=True)
        server = node.start("server", openssl, "s_server", "-accept", f"{server_ip}:{PORT}", "-cert",
                            str(tmp_path / "cert.pem"), "-key", str(tmp_path / "key.pem"), "-www",
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with _live_sensor_and_full_capture(node, tmp_path, "tcp"):
                for _ in range(2):  # two page loads: two connections at least
                    node.run("client", *_chromium(chromium, tmp_path, server_ip), check=True, capture_output=True,
                             timeout=60)
        finally:
            server.kill()
    lengths = _hello_lengths(tmp_path / "full.pcap")
    assert lengths and all(record > 1448 for _, record in lengths), "a hello longer than a segment"
    if segmented:
        assert all(frame <= 1514 for frame, _ in lengths), "each hello began in a segment of its own"
    else:
        assert all(frame > 1514 for frame, _ in lengths), "each hello came in one packet"
    live = _tls_hellos(FlowRecords.concat([decode_batch(p.read_bytes()).flows
                                           for p in sorted((tmp_path / "queue").glob("*.ksfb"))]), server_ip)
    offline = _tls_hellos(FlowRecords.concat(list(flows_from_captures([tmp_path / "full.pcap"]))), server_ip)
    assert len(live) >= 2 and live == offline
    for ja4, ja3, sni, alpn in live.values():
        assert ja4.startswith("t13d") and len(ja3) == 32 and sni == SERVER_NAME and alpn.startswith("h2")


_UDP_SINK = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(1)
end = time.time() + float(sys.argv[3])
while time.time() < end:
    try:
        s.recv(65536)
    except TimeoutError:
        pass
"""


def test_chromiums_quic_hello_is_named_live_as_a_full_capture_names_it(tmp_path):
    """HTTP/3 forced on: Chromium's Initial packets carry its hello (over two datagrams, the CRYPTO
    frames out of order); the server pod only swallows them, so the client retries a few times."""
    chromium = require_tool("chromium")
    require_tool("tcpdump")
    with namespace_node(["client", "server"]) as node:
        server_ip = node.pods["server"]
        sink = node.start("server", sys.executable, "-c", _UDP_SINK, server_ip, str(PORT), "30")
        try:
            with _live_sensor_and_full_capture(node, tmp_path, "udp"):
                quic = ("--enable-quic", f"--origin-to-force-quic-on={SERVER_NAME}:{PORT}")
                node.run("client", "timeout", "6", *_chromium(chromium, tmp_path, server_ip, quic),
                         capture_output=True, timeout=60)
        finally:
            sink.kill()
    live = _quic_hellos(FlowRecords.concat([decode_batch(p.read_bytes()).flows
                                            for p in sorted((tmp_path / "queue").glob("*.ksfb"))]), server_ip)
    offline = _quic_hellos(FlowRecords.concat(list(flows_from_captures([tmp_path / "full.pcap"]))), server_ip)
    assert live and live == offline
    for ja4, ja3, sni, alpn in live.values():
        assert ja4.startswith("q13d") and len(ja3) == 32 and sni == SERVER_NAME and alpn == "h3"


def _quic_hellos(records: FlowRecords, server: str) -> dict[int, tuple[str, str, str, str]]:
    return {r["src_port"]: (r["tls_ja4"], r["tls_ja3"], r["tls_sni"], r["tls_alpn"])
            for r in records.iter_dicts() if r["dst_ip"] == server and r["proto"] == 17 and r["tls_ja4"]}
