"""Small programs the lab's scenarios run inside network namespaces (``python lab/lab_tools.py CMD``),
where no packaged tool exists: a Stratum v1 mining client and a pool stand-in speaking the real
protocol (newline-delimited JSON-RPC over TCP), a DNS responder and tunnel-shaped questions of a chosen
length (the live sensor's snap-length test), an implant's TLS check-ins (in one session or one
connection each), a client driving a tunnel's local end, a jittered HTTP beacon and a steady HTTP
client. The tunnels, shells and servers themselves are the real Debian programs (lab/scenarios.py). Every loop is bounded in count and time and stops by itself.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import socket
import socketserver
import ssl
import threading
import time
import urllib.request

from kubesonar.sensor.synthetic import dns_message

# -- Stratum v1 ------------------------------------------------------------------------------------


class _PoolHandler(socketserver.StreamRequestHandler):
    """Answers subscribe / authorize / submit as a pool does and pushes difficulty and jobs."""

    def handle(self) -> None:
        def send(obj: dict) -> None:
            self.wfile.write((json.dumps(obj) + "\n").encode())

        for line in self.rfile:
            try:
                msg = json.loads(line)
            except ValueError:
                return
            method, ident = msg.get("method"), msg.get("id")
            if method == "mining.subscribe":
                send({"id": ident, "result": [[["mining.set_difficulty", "1"], ["mining.notify", "1"]], "08000002", 4],
                      "error": None})
            elif method == "mining.authorize":
                send({"id": ident, "result": True, "error": None})
                send({"id": None, "method": "mining.set_difficulty", "params": [1024]})
                send({"id": None, "method": "mining.notify",
                      "params": ["4f2a", "00" * 32, "01000000", "ffffffff", [], "20000000", "1d00ffff", "5f5e1000", True]})
            elif method == "mining.submit":
                send({"id": ident, "result": True, "error": None})


def stratum_pool(host: str, port: int, seconds: float) -> None:
    server = socketserver.ThreadingTCPServer((host, port), _PoolHandler)
    server.daemon_threads = True
    threading.Timer(seconds, server.shutdown).start()
    server.serve_forever()


def stratum_client(host: str, port: int, shares: int, worker: str = "rig1") -> None:
    """A miner's session: subscribe, authorize, read a job, submit ``shares`` shares."""
    with socket.create_connection((host, port), timeout=10) as sock:
        reader = sock.makefile("r")

        def call(ident: int, method: str, params: list) -> None:
            sock.sendall((json.dumps({"id": ident, "method": method, "params": params}) + "\n").encode())

        call(1, "mining.subscribe", ["cpuminer/2.5.1"])
        reader.readline()
        call(2, "mining.authorize", [f"wallet.{worker}", "x"])
        for _ in range(3):  # result, set_difficulty, notify
            reader.readline()
        for i in range(shares):
            time.sleep(0.2)
            call(3 + i, "mining.submit", [f"wallet.{worker}", "4f2a", "08000002", "5f5e1000", f"{random.getrandbits(32):08x}"])
            reader.readline()


# -- DNS -------------------------------------------------------------------------------------------


def dns_server(host: str, seconds: float) -> None:
    """Answers every question with NOERROR and no records (what a tunnel's server looks like from afar)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 53))
    sock.settimeout(0.5)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            data, peer = sock.recvfrom(4096)
        except TimeoutError:
            continue
        if len(data) >= 12:
            answer = bytearray(data)
            answer[2] |= 0x80  # QR: a response
            answer[3] = 0x80  # RA, NOERROR
            sock.sendto(bytes(answer), peer)


def dns_tunnel(server: str, domain: str, shape: str, count: int, interval: float, tcp: bool = False) -> None:
    """Questions shaped like a tunnel's: iodine (NULL, base32 labels) or dnscat2 (TXT, hex labels); over
    UDP, or over one TCP connection with each message behind its two-byte length (RFC 1035 4.2.2)."""
    if tcp:
        sock = socket.create_connection((server, 53), timeout=3.0)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(1.0)
    with sock:
        for i in range(count):
            data = os.urandom(30)
            if shape == "iodine":
                label, qtype = base64.b32encode(data).decode().rstrip("=").lower(), 10
            else:
                label, qtype = data.hex(), 16
            message = dns_message(f"{label}.{i:x}.{domain}", qtype, ident=i & 0xFFFF)
            try:
                if tcp:
                    sock.sendall(len(message).to_bytes(2, "big") + message)
                    size = int.from_bytes(_receive(sock, 2), "big")
                    _receive(sock, size)
                else:
                    sock.sendto(message, (server, 53))
                    sock.recvfrom(4096)
            except TimeoutError:
                pass
            time.sleep(interval)


def _receive(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        part = sock.recv(size - len(data))
        if not part:
            raise ConnectionError(f"the server closed after {len(data)} of {size} bytes")
        data += part
    return data


# -- TLS -------------------------------------------------------------------------------------------


def _tls_context(cert: str | None, key: str | None) -> ssl.SSLContext:
    """An implant's context: it trusts any server (self-signed C2) and shows its own certificate when
    given one (mutual TLS)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if cert:
        context.load_cert_chain(cert, key)
    return context


def tls_beacon(host: str, port: int, mode: str, count: int, interval: float, jitter: float,
               cert: str | None = None, key: str | None = None) -> None:
    """``count`` check-ins every ``interval`` s (+-``jitter`` of it) to a TLS server given by address, no
    SNI (as implants configured with a bare IP send none): ``session`` writes each as a small record in
    one long connection and reads the reply; ``connections`` opens a new connection for each (HTTPS GET)."""
    context = _tls_context(cert, key)

    def pause() -> None:
        time.sleep(interval * (1 + random.uniform(-jitter, jitter)))

    if mode == "session":
        with socket.create_connection((host, port), timeout=10) as raw, context.wrap_socket(raw) as tls:
            for i in range(count):
                tls.sendall(f"hb {i} {random.getrandbits(32):08x}\n".encode())
                tls.recv(4096)
                pause()
        return
    for _ in range(count):
        try:
            with socket.create_connection((host, port), timeout=5) as raw, context.wrap_socket(raw) as tls:
                tls.sendall(f"GET /task HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
                while tls.recv(4096):
                    pass
        except OSError:
            pass
        pause()


# -- tunnels ---------------------------------------------------------------------------------------


def tunnel_client(host: str, port: int, chunks: int, size: int, pause: float) -> None:
    """Use a tunnel's local end the way a session over it would: ``chunks`` writes of ``size`` random
    bytes, ``pause`` s apart, each read back from an echo server on the far side."""
    with socket.create_connection((host, port), timeout=20) as sock:
        for _ in range(chunks):
            data = os.urandom(size)
            sock.sendall(data)
            got = 0
            while got < size:
                part = sock.recv(65536)
                if not part:
                    raise ConnectionError(f"the tunnel closed after {got} of {size} bytes came back")
                got += len(part)
            time.sleep(pause)


# -- HTTP ------------------------------------------------------------------------------------------


def beacon(url: str, count: int, interval: float, jitter: float) -> None:
    """``count`` check-ins every ``interval`` s, each interval off by up to +-``jitter`` of it."""
    for _ in range(count):
        try:
            urllib.request.urlopen(url, timeout=3).read()
        except OSError:
            pass
        time.sleep(interval * (1 + random.uniform(-jitter, jitter)))


def http_client(url: str, seconds: float, pause: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            urllib.request.urlopen(url, timeout=2).read()
        except OSError:
            pass
        time.sleep(pause)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lab/lab_tools.py")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("stratum-pool")
    p.add_argument("host"), p.add_argument("port", type=int), p.add_argument("seconds", type=float)
    p = sub.add_parser("stratum-client")
    p.add_argument("host"), p.add_argument("port", type=int), p.add_argument("shares", type=int)
    p = sub.add_parser("dns-server")
    p.add_argument("host"), p.add_argument("seconds", type=float)
    p = sub.add_parser("dns-tunnel")
    p.add_argument("server"), p.add_argument("domain"), p.add_argument("shape", choices=["iodine", "dnscat2"])
    p.add_argument("count", type=int), p.add_argument("interval", type=float), p.add_argument("--tcp", action="store_true")
    p = sub.add_parser("tls-beacon")
    p.add_argument("host"), p.add_argument("port", type=int), p.add_argument("mode", choices=["session", "connections"])
    p.add_argument("count", type=int), p.add_argument("interval", type=float), p.add_argument("jitter", type=float)
    p.add_argument("--cert"), p.add_argument("--key")
    p = sub.add_parser("tunnel-client")
    p.add_argument("host"), p.add_argument("port", type=int), p.add_argument("chunks", type=int)
    p.add_argument("size", type=int), p.add_argument("pause", type=float)
    p = sub.add_parser("beacon")
    p.add_argument("url"), p.add_argument("count", type=int), p.add_argument("interval", type=float)
    p.add_argument("jitter", type=float)
    p = sub.add_parser("http-client")
    p.add_argument("url"), p.add_argument("seconds", type=float), p.add_argument("pause", type=float)
    a = parser.parse_args(argv)
    if a.cmd == "stratum-pool":
        stratum_pool(a.host, a.port, a.seconds)
    elif a.cmd == "stratum-client":
        stratum_client(a.host, a.port, a.shares)
    elif a.cmd == "dns-server":
        dns_server(a.host, a.seconds)
    elif a.cmd == "dns-tunnel":
        dns_tunnel(a.server, a.domain, a.shape, a.count, a.interval, a.tcp)
    elif a.cmd == "tls-beacon":
        tls_beacon(a.host, a.port, a.mode, a.count, a.interval, a.jitter, a.cert, a.key)
    elif a.cmd == "tunnel-client":
        tunnel_client(a.host, a.port, a.chunks, a.size, a.pause)
    elif a.cmd == "beacon":
        beacon(a.url, a.count, a.interval, a.jitter)
    else:
        http_client(a.url, a.seconds, a.pause)


if __name__ == "__main__":
    main()
