"""DNS tunneling: data carried in the names of DNS questions to one domain.

A tunnel (iodine, dns2tcp, dnscat2, dnstt) encodes its data into labels under a domain whose
authoritative server it controls, so one client asks that domain a stream of names never asked
before: long, random-looking labels, often of record types ordinary lookups seldom use (TXT, NULL,
the private-use range) because their answers carry the most data back.

Per (client, registered domain), over a window of an hour, the detector counts distinct names and
measures their subdomain part: mean length, character entropy (bits per character, over all the
distinct subdomains together) and the share of TXT / NULL / ANY / private-use questions. A tunnel
when there are at least 50 distinct names (50 questions carry no more than a few kilobytes; a
client resolves a handful of names per domain an hour) and the names are encoded data: entropy of at
least 4.2 bits (beyond hex's 4.0, so base32, base64 and binary encodings), or a mean subdomain of
40 characters or more (hex-encoding tunnels such as dnscat2), or mostly tunnel record types with
subdomains of 16 characters or more.

Catches: iodine (NULL, base32/base128), dns2tcp (TXT), dnscat2 (TXT/CNAME/MX, hex), dnstt (TXT,
base32), and hand-made exfiltration in names. Misses: a slow tunnel under 50 names an hour per
domain; tunnels spread over many domains; DNS over HTTPS (it is HTTPS). Names under the cluster's
own domain and reverse lookups are never judged.
False positives: reputation and telemetry services that look up hashes as names (anti-virus,
spam lists) at a high rate from one pod; allowlist them by domain or workload.

Score: the distinct-name count of a (client, domain) pair once the names look encoded, else 0.

Example:
    >>> d = DnsTunnelingDetector()
    >>> d.decide(d.update(flows, None, dns))  # doctest: +SKIP
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from typing import Any

from kubesonar.shared.detectors import Score, StateDocument, bounded, dns_client_endpoint
from kubesonar.shared.dns import DnsMessages, QType, is_private_type, registered_domain
from kubesonar.shared.flow import FlowRecords
from kubesonar.shared.pod_events import PodEvents

SECOND = 1_000_000_000
_TUNNEL_TYPES = {int(QType.TXT), int(QType.NULL), int(QType.ANY)}
_NEVER_JUDGED = (".local", ".svc", ".in-addr.arpa", ".ip6.arpa", ".localhost", ".internal")
_HASHES_KEPT = 1024  # distinct names remembered per pair: far above the threshold


class DnsTunnelingDetector(StateDocument):
    rule_id = "dns_tunneling"
    EMPTY = {"pairs": {}}

    def __init__(self, min_names: int = 50, min_entropy: float = 4.2, min_mean_length: float = 40.0,
                 typed_mean_length: float = 16.0, window_s: float = 3600.0, max_pairs: int = 5_000):
        super().__init__()
        self.min_names, self.min_entropy = min_names, min_entropy
        self.min_mean_length, self.typed_mean_length = min_mean_length, typed_mean_length
        self.window_ns, self.max_pairs = int(window_s * SECOND), max_pairs

    def update(self, flows: FlowRecords, pods: PodEvents | None = None, dns: DnsMessages | None = None) -> list[Score]:
        self.touched = False
        if dns is None or not len(dns):
            return []
        pairs = self._state["pairs"]
        changed: dict[str, int] = {}
        names, types, times = dns["qname"].tolist(), dns["qtype"].tolist(), dns["ts"].tolist()
        for i, name in enumerate(names):
            if not name or name.endswith(_NEVER_JUDGED):
                continue
            domain = registered_domain(name)
            sub = name[: -len(domain)].rstrip(".") if name.endswith(domain) and name != domain else ""
            if not sub:
                continue
            endpoint = dns_client_endpoint(dns, i)
            key = f"{endpoint['workload'] or endpoint['ip']}>{domain}"
            p = pairs.get(key)
            if p is None or times[i] - p["t0"] > self.window_ns:
                alarmed = bool(p and p["alarm"])
                p = pairs[key] = {"t0": times[i], "t": times[i], "hashes": [], "n": 0, "chars": 0, "hist": {},
                                  "typed": 0, "alarm": alarmed, "reported": alarmed}
            digest = zlib.crc32(f"{name}\x1f{types[i]}".encode())
            p["t"] = max(p["t"], times[i])
            if digest in p["hashes"]:
                continue
            self.touched = True
            if len(p["hashes"]) < _HASHES_KEPT:
                p["hashes"].append(digest)
            p["n"] += 1
            p["typed"] += int(types[i] in _TUNNEL_TYPES or is_private_type(types[i]))
            if p["n"] <= _HASHES_KEPT:  # the shape of names is known well long before
                letters = sub.replace(".", "")
                p["chars"] += len(letters)
                hist = p["hist"]
                for ch, count in Counter(letters).items():
                    hist[ch] = hist.get(ch, 0) + count
            changed[key] = i
        scores = [self._score(key, pairs[key], dns, i) for key, i in changed.items()]
        self._state["pairs"] = bounded(pairs, self.max_pairs)
        return scores

    def _score(self, key: str, p: dict[str, Any], dns: DnsMessages, i: int) -> Score:
        measured = min(p["n"], _HASHES_KEPT)
        mean_length = p["chars"] / measured if measured else 0.0
        total = sum(p["hist"].values())
        entropy = -sum(c / total * math.log2(c / total) for c in p["hist"].values()) if total else 0.0
        typed = p["typed"] / p["n"] if p["n"] else 0.0
        encoded = entropy >= self.min_entropy or mean_length >= self.min_mean_length or (
            typed >= 0.5 and mean_length >= self.typed_mean_length)
        alarm = p["n"] >= self.min_names and encoded
        fresh = alarm and not p["reported"]
        p["reported"] |= alarm
        p["alarm"] = alarm
        domain = key.rsplit(">", 1)[1]
        evidence = {"domain": domain, "distinct_names": p["n"], "mean_subdomain_length": round(mean_length, 1),
                    "entropy_bits": round(entropy, 2), "tunnel_record_share": round(typed, 2),
                    "example": str(dns["qname"][i])[:120]}
        return Score(key, float(p["n"]) if encoded else 0.0, alarm, dns_client_endpoint(dns, i), p["t0"], p["t"],
                     evidence, fresh=fresh, identity=(domain,))

