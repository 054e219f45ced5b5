"""The benign week's look-alikes of the new signals (issue 17): traffic a cluster really has that shares
a shape with a beacon, a long C2 session, a tunnel or a new TLS client, and must stay silent.

- NTP: chrony on every node polls four public servers every 64 s (UDP 123, one datagram each way).
- Health checks: the kubelet probes every shop pod every 15 s on a new connection; a blackbox exporter
  checks the public shop and the payment API every 30 s, a new TLS connection each time.
- Prometheus: the scrapes (lab/benign.py) carry their 30 s cadence as in-session gaps; remote_write
  pushes every 15 s to a metrics SaaS inside one long HTTP/2 connection.
- Long-lived websockets and gRPC streams: live-updates holds a websocket to a push service with a ping
  every 25 s; the OpenTelemetry collector on every node streams to an OTLP endpoint every 10 s; every
  pod's sidecar holds its xDS stream to istiod with keepalives every 30 s. Each session lasts hours and
  reconnects now and then, so a connection's records share its start across windows.
- A service mesh's mTLS: calls inside the shop namespace carry Envoy's ClientHello (ALPN istio, SNI
  outbound_.8080_._.<service>...).
- CDN-heavy DNS: media-proxy (an image proxy fetching what users link) resolves a few hundred hashed
  CDN host names a window (cloudfront, akamai, googlevideo, fastly shapes) out of some 1200, the popular
  ones most often, each answered by a CNAME chain, and fetches from them.
- DoH: fraud-check resolves through DNS over HTTPS (1.1.1.1 and 8.8.8.8), many small requests on one
  HTTP/2 connection.

Every egress client carries its own software's TLS fingerprint (one per client library, stable over the
week), formatted as the sensor writes JA3 and JA4; none is a known-bad one.

Every TCP connection carries its opening (flow schema 5) as its service opens (:func:`openings`), and
the look-alikes of a protocol on a web port (:func:`add_opening_lookalikes`) stay silent:
- plain HTTP on port 80 out: media-proxy fetching images users link over http://;
- TLS whose ClientHello the sensor could not fingerprint (since the sensor joins a hello's segments,
  one whose segment was lost, or a hello split over records): no JA3, no SNI, still a TLS record on 443;
- sessions the sensor joined mid-stream after a restart (the opening unknown) on 443;
- a steady plain-HTTP probe: the blackbox exporter checks http://status.partner.example every 30 s, a
  new connection each, naming the host in its Host header (flow schema 5's ``http_host``), from the
  learning day on: a clock to a named host, learned as the TLS probes are;
- plain HTTP off port 80, by name: shipping posts labels to a carrier's API at
  http://api.carrier.example:8081 as orders ship, a new connection each (an address in that Host
  would be unusual_destination's protocol_mismatch).
SSH to a git host every window and SMTP submission were tried as look-alikes too and left out:
beaconing (a clock to a host named by no ClientHello or HTTP Host) and exfiltration (mail out) report
them by their own design, whatever their opening.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from kubesonar.shared.flow import ConnState, Opening

WINDOW_S = 600


@dataclass(frozen=True)
class TlsClient:
    """A client library's ClientHello as the sensor reports it."""

    software: str
    alpn: str

    @property
    def ja3(self) -> str:
        return hashlib.md5(f"ja3:{self.software}".encode()).hexdigest()

    @property
    def ja4(self) -> str:
        digest = hashlib.sha256(f"ja4:{self.software}".encode()).hexdigest()
        alpn = (self.alpn.split(",")[0][:1] + self.alpn.split(",")[0][-1:]) if self.alpn else "00"
        return f"t13d{15 + len(self.software) % 4:02d}{12 + len(self.software) % 5:02d}{alpn}_{digest[:12]}_{digest[12:24]}"

    def columns(self, sni: str) -> dict[str, str]:
        return {"tls_ja3": self.ja3, "tls_ja4": self.ja4, "tls_sni": sni, "tls_alpn": self.alpn}


ENVOY = TlsClient("envoy-1.29-istio", "istio-peer-exchange,istio,h2")
GO_HTTP = TlsClient("go-1.22-net/http", "h2,http/1.1")
JAVA = TlsClient("java-17-httpclient", "h2,http/1.1")
OPENSSL = TlsClient("openssl-3.0-libcurl", "http/1.1")
GRPC_GO = TlsClient("grpc-go-1.62", "h2")
NODE = TlsClient("nodejs-20-ws", "http/1.1")
PROMETHEUS = TlsClient("prometheus-2.51-go", "h2")

NTP_SERVERS = ["162.159.200.1", "162.159.200.123", "129.6.15.28", "194.58.204.20"]
# name -> (addresses, SNI)
ENDPOINTS = {
    "shop-public": (["203.0.113.10"], "shop.example.com"),
    "push": (["198.18.70.11", "198.18.70.12"], "ws.push-provider.example"),
    "otlp": (["198.18.80.5"], "otlp.observability-vendor.example"),
    "metrics": (["198.18.81.9"], "prometheus-prod.metrics-vendor.example"),
    "cdn": ([f"198.18.{90 + j}.{i}" for j in range(3) for i in range(1, 41)], ""),
    "doh-cloudflare": (["1.1.1.1"], "cloudflare-dns.com"),
    "doh-google": (["8.8.8.8"], "dns.google"),
    "status-page": (["198.18.85.4"], "status.partner.example"),  # probed over plain HTTP: a Host, no SNI
    "carrier-api": (["198.18.86.7"], "api.carrier.example:8081"),  # plain HTTP off port 80, reached by name
}
# (gaps between the small packets of a session, their mean and CV x 1000, as the sensor exports them)
CDN_DOMAINS = ("cloudfront.net", "akamaiedge.net", "googlevideo.com", "fastly.net")
_BASE32 = np.array(list("abcdefghijklmnopqrstuvwxyz234567"))
_HEX = np.array(list("0123456789abcdef"))


def _ip(text: str) -> int:
    a, b, c, d = (int(x) for x in text.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


def gaps(duration_s: float, interval_s: float, cv: float) -> dict[str, int]:
    """In-session gap statistics of a heartbeat every ``interval_s`` over ``duration_s``, both ways."""
    count = max(0, int(duration_s // interval_s) - 1)
    mean = int(interval_s * 1e6) if count else 0
    milli = int(cv * 1000) if count >= 2 else 0
    return {"gaps_out": count, "gap_mean_us_out": mean, "gap_cv_milli_out": milli,
            "gaps_in": count, "gap_mean_us_in": mean, "gap_cv_milli_in": milli}


def egress_tls(client: str, service: str) -> TlsClient:
    """The TLS client library each workload of lab/benign.py talks out with."""
    return {"payments": JAVA, "fluent-bit": OPENSSL, "license-agent": OPENSSL, "nightly-backup": GO_HTTP,
            "argocd-repo-server": GO_HTTP, "cert-manager": GO_HTTP, "prometheus": PROMETHEUS}.get(client, GO_HTTP)


def cdn_name(rng: np.random.Generator) -> str:
    """A hashed CDN host name as browsers and media fetchers resolve them by the hundred."""
    domain = CDN_DOMAINS[int(rng.integers(0, len(CDN_DOMAINS)))]
    if domain == "cloudfront.net":
        return "d" + "".join(rng.choice(_BASE32[:26], 13)) + ".cloudfront.net"
    if domain == "akamaiedge.net":
        return f"e{rng.integers(1000, 9999)}.{'abcdefg'[rng.integers(0, 7)]}.akamaiedge.net"
    if domain == "googlevideo.com":
        return f"rr{rng.integers(1, 6)}---sn-{''.join(rng.choice(_BASE32, 8))}.googlevideo.com"
    return f"{''.join(rng.choice(_HEX, 16))}.global.ssl.fastly.net"


class Sessions:
    """Long-lived connections: each keeps its start and source port until it reconnects."""

    def __init__(self, rng: np.random.Generator, mean_life_s: float):
        self.rng = rng
        self.mean_life_s = mean_life_s
        self.open: dict[tuple, tuple[float, int]] = {}  # (client, server) -> (start, source port)

    def current(self, key: tuple, t0: float) -> tuple[float, int]:
        start, port = self.open.get(key, (math.nan, 0))
        if math.isnan(start) or self.rng.random() < WINDOW_S / self.mean_life_s:
            start, port = t0 + float(self.rng.uniform(0, 5)), int(self.rng.integers(32768, 61000))
            self.open[key] = (start, port)
        return start, port


def add_lookalikes(f, cluster, t0: float, rng: np.random.Generator, sessions: Sessions, nodes: list[int]) -> None:
    """This window's look-alike flows into ``f`` (lab/benign.py's flow builder)."""
    by = cluster.by_name
    tcp, udp = 6, 17

    def ips(name: str) -> list[int]:
        return [_ip(a) for a in ENDPOINTS[name][0]]

    # NTP: every chrony pod polls four servers every 64 s, one datagram each way
    servers = [_ip(a) for a in NTP_SERVERS]
    for pod in by["chrony"].addresses:
        for server in servers:  # a steady 64 s poll, each pair with its own phase
            first = t0 + (((pod * 31 + server) % 6400) / 100.0 - t0) % 64.0
            at = first + 64.0 * np.arange(int((t0 + WINDOW_S - first) // 64) + 1)
            at = at[at < t0 + WINDOW_S]
            f.add(pod, server, 123, udp, at + rng.normal(0, 0.02, len(at)), 0.03, 1, 76, 1, 76, sport=123)
    # kubelet probes of every shop pod every 15 s (a new connection each), from the pod's node
    shop = [a for w in cluster.by_name.values() if w.namespace == "shop" and w.kind != "CronJob" for a in w.addresses]
    for i, pod in enumerate(shop):
        node = nodes[i % len(nodes)]
        at = t0 + float(rng.uniform(0, 15)) + 15.0 * np.arange(WINDOW_S // 15)
        f.add(node, pod, 8080, tcp, at, 0.004, 6, 420, 4, 380, rng=rng)
    # blackbox exporter: the public shop and the payment API every 30 s, a TLS connection each
    exporter = by["blackbox-exporter"].addresses[0]
    for target, sni in ((ips("shop-public")[0], ENDPOINTS["shop-public"][1]),
                        (_ip("198.51.100.10"), "api.payments-provider.example")):
        at = t0 + float(rng.uniform(0, 30)) + 30.0 * np.arange(WINDOW_S // 30)
        f.add(exporter, target, 443, tcp, at + rng.normal(0, 0.01, len(at)), 0.12, 9, 900, 8, 5_200, rng=rng,
              extra=GO_HTTP.columns(sni))
    # long sessions: (client pods, server addresses, port, heartbeat s, cv, TLS client, SNI, bytes a window each way)
    istiod = by["istiod"].addresses
    long_lived = [
        (by["live-updates"].addresses, ips("push"), 443, 25.0, 0.01, NODE, ENDPOINTS["push"][1], (3_000, 40_000)),
        (by["otel-collector"].addresses, ips("otlp"), 4317, 10.0, 0.03, GRPC_GO, ENDPOINTS["otlp"][1], (600_000, 9_000)),
        (by["prometheus"].addresses, ips("metrics"), 443, 15.0, 0.05, PROMETHEUS, ENDPOINTS["metrics"][1],
         (4_000_000, 30_000)),
        (by["fraud-check"].addresses, ips("doh-cloudflare") + ips("doh-google"), 443, 0.0, 0.0, GO_HTTP, "", (40_000, 90_000)),
        ([a for w in cluster.by_name.values() if w.namespace == "shop" and w.kind == "Deployment" for a in w.addresses], istiod,
         15012, 30.0, 0.02, GRPC_GO, "istiod.istio-system.svc", (2_000, 6_000)),
    ]
    for clients, server_pool, port, heartbeat, cv, tls, sni, (up, down) in long_lived:
        for client in clients:
            for server in server_pool if port == 443 and heartbeat == 0 else server_pool[:1]:
                start, sport = sessions.current((client, server, port), t0)
                first = max(start, t0)
                span = t0 + WINDOW_S - first
                if heartbeat:  # a steady heartbeat inside the session
                    shape = gaps(span, heartbeat, cv)
                else:  # DoH: requests as the application needs names, irregular
                    shape = gaps(span, float(rng.uniform(2, 6)), float(rng.uniform(0.8, 1.6)))
                this_sni = sni or ("cloudflare-dns.com" if server == ips("doh-cloudflare")[0] else "dns.google")
                packets = max(2, shape["gaps_out"] + 2)
                f.add(client, server, port, tcp, first, span, packets * 2, int(up * span / WINDOW_S) + 60 * packets,
                      packets * 2, int(down * span / WINDOW_S) + 60 * packets, ConnState.ESTABLISHED, sport=sport,
                      conn_start=start, extra={**tls.columns(this_sni), **shape})
    # media-proxy fetches from hashed CDN hosts
    proxy = by["media-proxy"].addresses
    n = rng.poisson(120)
    f.add(np.asarray(proxy)[rng.integers(0, len(proxy), n)], np.asarray(ips("cdn"))[rng.integers(0, 120, n)], 443, tcp,
          t0 + rng.uniform(0, WINDOW_S, n), rng.exponential(0.6, n), 14, rng.integers(900, 2_000, n), 40,
          rng.integers(30_000, 400_000, n), rng=rng, extra=GO_HTTP.columns("media.cdn.example"))


def cdn_pool(rng: np.random.Generator, size: int = 1200) -> list[str]:
    """The CDN host names media-proxy's sources live on: many distributions and edge hosts, fixed for the run."""
    return list(dict.fromkeys(cdn_name(rng) for _ in range(size)))


def cdn_questions(rng: np.random.Generator, load: float, pool: list[str]) -> list[str]:
    """The names media-proxy asks this window: a few hundred lookups (answers cached for their TTL, so a
    lookup is a first fetch or an expired one), popular names far more often than the rest (Zipf)."""
    picks = (rng.zipf(1.2, rng.poisson(300 * load)) - 1) % len(pool)
    return [pool[i] for i in picks]


# how each port's service opens (flow schema 5): TLS services, plain HTTP ones, server-first ones; the
# rest (databases, Kafka, Redis, SSH) open with the client's own protocol
TLS_PORTS = (443, 4317, 6443, 8443, 10250, 15012)
HTTP_PORTS = (80, 8080, 9090, 9093)
SERVER_FIRST_PORTS = (21, 25, 587, 3306)


MID_STREAM = 255  # a look-alike's ``opening``: the sensor joined the connection after its handshake


def openings(c: dict[str, np.ndarray]) -> np.ndarray:
    """The opening of each simulated flow: ``opening`` where a look-alike says it (:data:`MID_STREAM`
    for a connection the sensor joined after its handshake), else its port's service's; unknown for UDP,
    ICMP and connections that were never answered."""
    port, n = c["dport"], len(c["dport"])
    tls = np.zeros(n, dtype=bool)
    for name in ("tls_ja3", "tls_ja4"):
        if name in c:
            tls |= c[name] != ""
    opening = np.select([tls | np.isin(port, TLS_PORTS), np.isin(port, HTTP_PORTS), np.isin(port, SERVER_FIRST_PORTS)],
                        [Opening.TLS, Opening.HTTP, Opening.RESPONDER_FIRST], Opening.OTHER).astype(np.uint8)
    unknown = (c["proto"] != 6) | (c["state"] == ConnState.REJECTED) | (c["state"] == ConnState.ATTEMPTED)
    if "opening" in c:
        opening = np.where(c["opening"] > 0, c["opening"], opening).astype(np.uint8)
        unknown |= c["opening"] == MID_STREAM
    return np.where(unknown, np.uint8(Opening.UNKNOWN), opening)


def add_opening_lookalikes(f, cluster, t0: float) -> None:
    """This window's look-alikes of a protocol on a web port, into ``f``; drawn from their own generator
    so the rest of the week is the same with or without them."""
    rng = np.random.default_rng(int(t0))
    by, tcp = cluster.by_name, 6
    proxy, cdn = by["media-proxy"].addresses, [_ip(a) for a in ENDPOINTS["cdn"][0]]
    n = rng.poisson(20)  # images users link over http://, fetched as they are asked for
    f.add(np.asarray(proxy)[rng.integers(0, len(proxy), n)], np.asarray(cdn)[rng.integers(0, len(cdn), n)], 80, tcp,
          t0 + rng.uniform(0, WINDOW_S, n), rng.exponential(0.4, n), 10, rng.integers(500, 900, n), 30,
          rng.integers(20_000, 300_000, n), rng=rng, extra={"opening": int(Opening.HTTP)})
    # DoH through a ClientHello the sensor could not fingerprint (a segment lost): TLS, no JA3
    doh = _ip(ENDPOINTS["doh-cloudflare"][0][0])
    n = rng.poisson(6)
    f.add(np.asarray(by["fraud-check"].addresses)[rng.integers(0, len(by["fraud-check"].addresses), n)], doh, 443, tcp,
          t0 + rng.uniform(0, WINDOW_S, n), rng.exponential(2.0, n), 12, 3_000, 12, 6_000, rng=rng,
          extra={"opening": int(Opening.TLS)})
    # a remote_write session the sensor joined mid-stream after a restart: the opening unknown
    if int(t0) % 86_400 < WINDOW_S:
        f.add(by["prometheus"].addresses[0], _ip(ENDPOINTS["metrics"][0][0]), 443, tcp, t0, 300.0, 400, 2_000_000,
              400, 15_000, ConnState.ESTABLISHED, rng=rng, conn_start=t0 - 3_600.0, extra={"opening": MID_STREAM})
    # the blackbox exporter's http:// probe every 30 s, one clock across windows (last: the draws above
    # stay what they were without it)
    addresses, host = ENDPOINTS["status-page"]
    at = t0 + 11.0 + 30.0 * np.arange(WINDOW_S // 30)
    f.add(by["blackbox-exporter"].addresses[0], _ip(addresses[0]), 80, tcp, at + rng.normal(0, 0.01, len(at)), 0.05,
          6, 420, 5, 1_900, rng=rng, extra={"opening": int(Opening.HTTP), "http_host": host})
    addresses, host = ENDPOINTS["carrier-api"]  # the sensor keeps the Host without its port
    n = rng.poisson(8)
    f.add(np.asarray(by["shipping"].addresses)[rng.integers(0, len(by["shipping"].addresses), n)], _ip(addresses[0]),
          8081, tcp, t0 + rng.uniform(0, WINDOW_S, n), rng.exponential(0.3, n), 8, rng.integers(900, 3_000, n), 6,
          rng.integers(400, 1_200, n), rng=rng, extra={"opening": int(Opening.HTTP), "http_host": host.split(":")[0]})
