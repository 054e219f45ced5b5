"""An independent reference: tshark's own TCP/UDP stream tracking, per-packet fields aggregated here."""

from __future__ import annotations

import ipaddress
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field

_FIELDS = [
    "frame.protocols", "tcp.stream", "udp.stream", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst",
    "tcp.srcport", "tcp.dstport", "udp.srcport", "udp.dstport", "ip.len", "ipv6.plen", "icmp.type",
    "icmpv6.type",
]


@dataclass
class RefFlow:
    proto: int
    endpoints: frozenset
    packets: int = 0
    ip_bytes: int = 0
    sent: dict = field(default_factory=lambda: defaultdict(int))  # endpoint -> packets it sent


def _last(value: str) -> str:
    return value.split(",")[-1] if value else ""


def _norm(addr: str) -> str:
    return str(ipaddress.ip_address(addr))


def tshark_flows(path: str) -> dict[tuple[str, int], RefFlow]:
    """Reference flows keyed by (transport, tshark stream index)."""
    cmd = ["tshark", "-n", "-r", path, "-T", "fields", "-E", "separator=\t", "-E", "occurrence=a"]
    for f in _FIELDS:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    flows: dict[tuple[str, int], RefFlow] = {}
    for line in out.splitlines():
        v = dict(zip(_FIELDS, line.split("\t")))
        protos = v["frame.protocols"].split(":")
        tunnelled = "vxlan" in protos or "geneve" in protos
        if v["tcp.stream"]:
            transport, proto, sp, dp = "tcp", 6, v["tcp.srcport"], v["tcp.dstport"]
        elif v["udp.stream"]:
            transport, proto, sp, dp = "udp", 17, v["udp.srcport"], v["udp.dstport"]
        else:
            continue
        stream = int(_last(v[f"{transport}.stream"]))
        src = _last(v["ip.src"]) or _last(v["ipv6.src"])
        dst = _last(v["ip.dst"]) or _last(v["ipv6.dst"])
        if v["ip.src"] and v["ipv6.src"] and protos.index("ipv6") > protos.index("ip"):
            src, dst = _last(v["ipv6.src"]), _last(v["ipv6.dst"])
        sport, dport = int(_last(sp)), int(_last(dp))
        pick = _last if tunnelled else (lambda s: s.split(",")[0])
        outer_is_v6 = protos.index("ipv6") < protos.index("ip") if "ipv6" in protos and "ip" in protos else "ipv6" in protos
        if tunnelled:
            ip_len = int(pick(v["ipv6.plen"])) + 40 if (v["ipv6.plen"] and protos[::-1].index("ipv6") < protos[::-1].index("ip") if "ip" in protos else True) else int(pick(v["ip.len"]))
        elif outer_is_v6:
            ip_len = int(pick(v["ipv6.plen"])) + 40
        else:
            ip_len = int(pick(v["ip.len"]))
        a, b = (_norm(src), sport), (_norm(dst), dport)
        is_error = bool(v["icmp.type"] or v["icmpv6.type"])
        sender = b if is_error else a  # an ICMP error counts for the quoted packet's destination
        flow = flows.setdefault((transport, stream), RefFlow(proto, frozenset((a, b))))
        flow.packets += 1
        flow.ip_bytes += ip_len
        flow.sent[sender] += 1
    return flows
