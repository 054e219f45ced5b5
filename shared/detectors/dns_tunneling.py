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
    >>> d.observe(batch_of(flows, None, dns))  # doctest: +SKIP
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kubesonar.shared.detectors.base import Detector, Pair, Score, bounded, clock_from_v0
from kubesonar.shared.dns import DnsMessages, QType, is_private_type, registered_domain
from kubesonar.shared.identity import dns_client_endpoint

if TYPE_CHECKING:
    from kubesonar.shared.batch import Batch

SECOND = 1_000_000_000
_TUNNEL_TYPES = {int(QType.TXT), int(QType.NULL), int(QType.ANY)}
_NEVER_JUDGED = (".local", ".svc", ".in-addr.arpa", ".ip6.arpa", ".localhost", ".internal")
_HASHES_KEPT = 1024  # distinct names remembered per pair: far above the threshold


@dataclass
class NameWindow:
    """A (client, domain) pair's questions in the current window."""

    window_start_ns: int
    last_ns: int
    name_hashes: list[int] = field(default_factory=list)  # CRC32 of name and type, the first 1024
    distinct_names: int = 0
    subdomain_chars: int = 0  # over the first 1024 distinct names
    char_counts: dict[str, int] = field(default_factory=dict)  # characters of those subdomains
    tunnel_type_names: int = 0  # distinct names asked with a tunnel record type
    alarm: bool = False
    reported: bool = False


@dataclass
class TunnelingState:
    windows: dict[Pair, NameWindow] = field(default_factory=dict)  # (client, registered domain)


@dataclass
class _Assessment:
    scores: list[Score] = field(default_factory=list)
    windows: dict[Pair, NameWindow] = field(default_factory=dict)  # the windows this batch changed
    new_names: bool = False


_V0_FIELDS = {"t0": "window_start_ns", "t": "last_ns", "hashes": "name_hashes", "n": "distinct_names",
              "chars": "subdomain_chars", "hist": "char_counts", "typed": "tunnel_type_names", "alarm": "alarm",
              "reported": "reported"}


class DnsTunnelingDetector(Detector[TunnelingState, _Assessment]):
    rule_id = "dns_tunneling"

    def __init__(self, min_names: int = 50, min_entropy: float = 4.2, min_mean_length: float = 40.0,
                 typed_mean_length: float = 16.0, window_s: float = 3600.0, max_pairs: int = 5_000):
        super().__init__()
        self.min_names, self.min_entropy = min_names, min_entropy
        self.min_mean_length, self.typed_mean_length = min_mean_length, typed_mean_length
        self.window_ns, self.max_pairs = int(window_s * SECOND), max_pairs

    def new_state(self) -> TunnelingState:
        return TunnelingState()

    def _encode(self, state: TunnelingState) -> dict[str, Any]:
        return {"windows": [[*pair, vars(w)] for pair, w in state.windows.items()]}

    def _decode(self, document: dict[str, Any]) -> TunnelingState:
        return TunnelingState({Pair(client, domain): NameWindow(**w) for client, domain, w in document["windows"]})

    def _from_v0(self, document: dict[str, Any]) -> dict[str, Any]:
        return {"clock": clock_from_v0(document), "windows": [
            [*Pair.from_v0(key), {new: p[old] for old, new in _V0_FIELDS.items()}]
            for key, p in document["pairs"].items()]}

    def _assess(self, batch: Batch) -> _Assessment:
        dns = batch.dns
        out = _Assessment()
        if not len(dns):
            return out
        windows = out.windows
        changed: dict[Pair, int] = {}
        names, types, times = dns["qname"].tolist(), dns["qtype"].tolist(), dns["ts"].tolist()
        for i, name in enumerate(names):
            if not name or name.endswith(_NEVER_JUDGED):
                continue
            domain = registered_domain(name)
            sub = name[: -len(domain)].rstrip(".") if name.endswith(domain) and name != domain else ""
            if not sub:
                continue
            endpoint = dns_client_endpoint(dns, i)
            key = Pair(endpoint["workload"] or endpoint["ip"], domain)
            p = windows.get(key)
            if p is None:
                known = self.state.windows.get(key)
                if known is not None:
                    p = windows[key] = NameWindow(known.window_start_ns, known.last_ns, list(known.name_hashes),
                                                  known.distinct_names, known.subdomain_chars,
                                                  dict(known.char_counts), known.tunnel_type_names, known.alarm,
                                                  known.reported)
            if p is None or times[i] - p.window_start_ns > self.window_ns:
                alarmed = bool(p and p.alarm)
                p = windows[key] = NameWindow(times[i], times[i], alarm=alarmed, reported=alarmed)
            digest = zlib.crc32(f"{name}\x1f{types[i]}".encode())
            p.last_ns = max(p.last_ns, times[i])
            if digest in p.name_hashes:
                if p.alarm:  # a tunnel's names asked again: scored again (reported once)
                    changed[key] = i
                continue
            out.new_names = True
            if len(p.name_hashes) < _HASHES_KEPT:
                p.name_hashes.append(digest)
            p.distinct_names += 1
            p.tunnel_type_names += int(types[i] in _TUNNEL_TYPES or is_private_type(types[i]))
            if p.distinct_names <= _HASHES_KEPT:  # the shape of names is known well long before
                letters = sub.replace(".", "")
                p.subdomain_chars += len(letters)
                counts = p.char_counts
                for ch, count in Counter(letters).items():
                    counts[ch] = counts.get(ch, 0) + count
            changed[key] = i
        out.scores = [self._score(key, windows[key], dns, i) for key, i in changed.items()]
        return out

    def _scores(self, assessment: _Assessment) -> list[Score]:
        return assessment.scores

    def _commit(self, assessment: _Assessment, flagged: set[Hashable]) -> None:
        """The windows take this batch's names (there is no baseline: a tunnel is judged by its shape)."""
        if len(assessment.windows) or self.state.windows:
            self.state.windows.update(assessment.windows)
            self.state.windows = bounded(self.state.windows, self.max_pairs)
        self.touched |= assessment.new_names

    def _score(self, key: Pair, p: NameWindow, dns: DnsMessages, i: int) -> Score:
        measured = min(p.distinct_names, _HASHES_KEPT)
        mean_length = p.subdomain_chars / measured if measured else 0.0
        total = sum(p.char_counts.values())
        entropy = -sum(c / total * math.log2(c / total) for c in p.char_counts.values()) if total else 0.0
        typed = p.tunnel_type_names / p.distinct_names if p.distinct_names else 0.0
        encoded = entropy >= self.min_entropy or mean_length >= self.min_mean_length or (
            typed >= 0.5 and mean_length >= self.typed_mean_length)
        alarm = p.distinct_names >= self.min_names and encoded
        fresh = alarm and not p.reported
        p.reported |= alarm
        p.alarm = alarm
        evidence = {"domain": key.target, "distinct_names": p.distinct_names,
                    "mean_subdomain_length": round(mean_length, 1), "entropy_bits": round(entropy, 2),
                    "tunnel_record_share": round(typed, 2), "example": str(dns["qname"][i])[:120]}
        return Score(key, float(p.distinct_names) if encoded else 0.0, alarm, dns_client_endpoint(dns, i),
                     p.window_start_ns, p.last_ns, evidence, fresh=fresh, identity=(key.target,))
