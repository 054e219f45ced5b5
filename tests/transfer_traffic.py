"""Ingress tool transfer as a capture holds it: TCP sessions written with scapy, carrying real files (the
machine's /bin/true, pip's Windows launcher w64.exe, a .deb's ar header, gzip of /bin/true, TLS from
OpenSSL), for the sensor's executable flag (sensor/executables.py) and the tool_transfer rule."""

from __future__ import annotations

import datetime
import gzip
import ssl
from importlib import resources
from pathlib import Path

from scapy.all import IP, TCP, Ether, Raw, wrpcap

T0 = 1_700_000_000
MSS = 1448
ELF_FILE = Path("/bin/true")


def elf_bytes() -> bytes:
    return ELF_FILE.read_bytes()


def pe_bytes() -> bytes:
    """A real PE: the Windows launcher pip ships (distlib's w64.exe)."""
    return resources.files("pip._vendor.distlib").joinpath("w64.exe").read_bytes()


def gzip_bytes() -> bytes:
    return gzip.compress(elf_bytes(), mtime=0)


def deb_bytes() -> bytes:
    """The start of a .deb as dpkg-deb writes it: an ar archive whose first member is debian-binary."""
    member = b"debian-binary".ljust(16) + b"1700000000".ljust(12) + b"0".ljust(6) + b"0".ljust(6) + b"100644".ljust(8)
    return b"!<arch>\n" + member + b"4".ljust(10) + b"`\n" + b"2.0\n" + b"control.tar.xz  " + bytes(200)


def http_response(body: bytes) -> bytes:
    return (b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6 Python/3.11\r\nContent-type: application/octet-stream\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def session(client: tuple[str, int], server: tuple[str, int], sent: list[tuple[str, bytes]], t: float) -> list:
    """A TCP connection: handshake, then each (``"c"`` client or ``"s"`` server, bytes) in order, cut into
    segments of MSS bytes, then FIN from both."""
    (ca, cp), (sa, sp) = client, server
    seq = {"c": 1000, "s": 9000}

    def frame(side: str, flags: str, payload: bytes = b""):
        src, sport, dst, dport = (ca, cp, sa, sp) if side == "c" else (sa, sp, ca, cp)
        other = "s" if side == "c" else "c"
        packet = Ether() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags, seq=seq[side],
                                                      ack=seq[other])
        seq[side] += len(payload) + (1 if "S" in flags or "F" in flags else 0)
        return packet / Raw(payload) if payload else packet

    frames = [frame("c", "S"), frame("s", "SA"), frame("c", "A")]
    for side, data in sent:
        frames += [frame(side, "PA", data[k : k + MSS]) for k in range(0, len(data), MSS)]
    frames += [frame("c", "FA"), frame("s", "FA"), frame("c", "A")]
    for k, f in enumerate(frames):
        f.time = t + k * 0.001
    return frames


def http_download(pod: str, server: str, body: bytes, t: float, path: str = "/kinsing", port: int = 80,
                  sport: int = 41000) -> list:
    """``curl http://SERVER/PATH`` from the pod: the response's headers and the body's start in one segment."""
    request = f"GET {path} HTTP/1.1\r\nHost: {server}\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n".encode()
    return session((pod, sport), (server, port), [("c", request), ("s", http_response(body))], t)


def staged(pod: str, server: str, stage: bytes, t: float, port: int = 4444) -> list:
    """A Metasploit-style stager: the pod connects, the handler sends the stage's length then the stage."""
    return session((pod, 42000), (server, port), [("s", len(stage).to_bytes(4, "little")), ("s", stage)], t)


def pushed(sender: str, pod: str, data: bytes, t: float, port: int = 9000) -> list:
    """A client outside connects to the pod's port and sends the file."""
    return session((sender, 43000), (pod, port), [("c", data)], t)


def forged(sender: str, sport: int, pod: str, dport: int, data: bytes, t: float, answered: bool = True) -> list:
    """One segment from an outside address to a pod that has no connection with it (no handshake), answered
    by the pod's kernel with a reset (``answered``) or by nothing (an address nobody holds)."""
    frames = [Ether() / IP(src=sender, dst=pod) / TCP(sport=sport, dport=dport, flags="PA", seq=5000, ack=7000)
              / Raw(data[:MSS])]
    if answered:
        frames.append(Ether() / IP(src=pod, dst=sender) / TCP(sport=dport, dport=sport, flags="R", seq=7000))
    for k, f in enumerate(frames):
        f.time = t + k * 0.001
    return frames


def forged_syn(sender: str, sport: int, pod: str, dport: int, data: bytes, t: float) -> list:
    """A SYN carrying data from a spoofed outside address to a port a pod listens on: the pod's kernel
    answers with a SYN-ACK (twice: the sender never completes the handshake, having never seen it)."""
    frames = [Ether() / IP(src=sender, dst=pod) / TCP(sport=sport, dport=dport, flags="S", seq=5000)
              / Raw(data[:MSS])]
    frames += [Ether() / IP(src=pod, dst=sender) / TCP(sport=dport, dport=sport, flags="SA", seq=7000, ack=5001)
               for _ in range(2)]
    for k, f in enumerate(frames):
        f.time = t + k
    return frames


def forged_handshake(sender: str, sport: int, pod: str, dport: int, data: bytes, t: float) -> list:
    """A blind sender's SYN from a spoofed outside address, then the file in an ACK segment with a guessed
    acknowledgement number: the pod's kernel answers the SYN with a SYN-ACK (to an address that never
    asked) and the segment, whose ACK acknowledges nothing it sent, with a reset (Linux, a request in
    SYN-RECEIVED: RFC 793's "not acceptable" ACK)."""
    frames = [Ether() / IP(src=sender, dst=pod) / TCP(sport=sport, dport=dport, flags="S", seq=5000),
              Ether() / IP(src=pod, dst=sender) / TCP(sport=dport, dport=sport, flags="SA", seq=7000, ack=5001),
              Ether() / IP(src=sender, dst=pod) / TCP(sport=sport, dport=dport, flags="PA", seq=5001, ack=123456)
              / Raw(data[:MSS]),
              Ether() / IP(src=pod, dst=sender) / TCP(sport=dport, dport=sport, flags="R", seq=123456)]
    for k, f in enumerate(frames):
        f.time = t + k * 0.01
    return frames


def tls_download(pod: str, server: str, body: bytes, t: float) -> list:
    """The body fetched over real TLS (OpenSSL on both ends, in memory): what the wire carries is records."""
    client_ctx, server_ctx = _tls_contexts()
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="downloads.example")
    srv = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    sent: list[tuple[str, bytes]] = []
    for _ in range(4):  # the handshake's flights
        for end in (client, srv):
            try:
                end.do_handshake()
            except ssl.SSLWantReadError:
                pass
        for side, out, into in (("c", c_out, s_in), ("s", s_out, c_in)):
            if out.pending:
                data = out.read()
                sent.append((side, data))
                into.write(data)
    client.write(b"GET /tool HTTP/1.1\r\nHost: downloads.example\r\n\r\n")
    sent.append(("c", c_out.read()))
    srv.write(http_response(body))
    sent.append(("s", s_out.read()))
    return session((pod, 44000), (server, 443), sent, t)


def _tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    import tempfile

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "downloads.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    with tempfile.TemporaryDirectory() as tmp:
        pem = Path(tmp) / "server.pem"
        pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(pem)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname, client_ctx.verify_mode = False, ssl.CERT_NONE
    return client_ctx, server_ctx


def write(path: Path, frames: list, snaplen: int = 928) -> Path:
    """The frames as a capture taken with the sensor's default snap length: longer ones cut to it."""
    cut = []
    for f in frames:
        if len(f) > snaplen:
            short = Ether(bytes(f)[:snaplen])
            short.time, short.wirelen = f.time, len(f)
            f = short
        cut.append(f)
    wrpcap(str(path), cut, snaplen=snaplen)
    return path
