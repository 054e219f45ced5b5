"""DNS tunneling: data carried in the names of DNS questions, and in their answers.

A tunnel (iodine, dns2tcp, dnscat2, dnstt, DNSExfiltrator) encodes its data into labels under a
domain whose authoritative server it controls, so one client asks a stream of names never asked
before: long, random-looking labels, often of record types ordinary lookups seldom use (TXT, NULL,
CNAME, MX, the private-use range) because their answers carry the most data back. DNS C2 (Mozart,
dnscat2 without a domain) may skip the public DNS altogether: names under a top-level domain that
does not exist, sent straight to the attacker's server, which answers them.

Two channels are judged per client, over a window of an hour:
- *(client, registered domain)* for names under a real top-level domain, wherever they are sent;
- *(client, server)* for names under a made-up top-level domain (``116.1.gettasks``, a bare hex
  label, ``x.pirate.sea``): no public resolver answers those, so they are grouped by the server asked.

Each distinct (name, type) is measured once: whether its data part (the labels under the registered
domain; the whole name when the domain is made up) looks encoded (shared/dns.py ``looks_encoded``: a
label with characters no hostname has, or 16 characters or more that read as random), whether its
type carries data (TXT, NULL, CNAME, MX, ANY, private), whether no lookup ever asks that type (NULL,
private). Responses add their bytes, and for made-up names whether the server answered with records.
A channel is a tunnel when any of these holds:

- *volume*: 50 distinct names (a client resolves a handful of names of one domain an hour; 50
  questions carry no more than a few kilobytes) that are encoded data: pooled character entropy of
  at least 4.2 bits (beyond hex's 4.0), or a mean data part of 40 characters (hex tunnels), or mostly
  tunnel record types with data parts of 16 characters, or half of the names look encoded;
- *encoded data types*: 10 distinct encoded names asked with data-carrying types. A lookup asks TXT,
  MX or CNAME about names people chose (SPF, DMARC, ACME, DKIM selectors: at most a few random ones
  per domain); a tunnel's handshake alone (dnscat2's session setup, iodine's login and probes) asks
  about ten such names before any data flows;
- *unused types*: 10 distinct names asked as NULL or a private-use type, whatever their shape: no
  stub resolver or application asks these types, only tunnels that want raw bytes back;
- *answers carry the data*: 50 distinct names of data types whose responses hold three times the
  bytes of their questions (a response echoes its question, so the answers alone are twice its size:
  data, not an address), for downstream channels whose names are only counters;
- *made-up namespace answered*: 10 answers with records to data-type questions about made-up names
  from one server. A resolver answers a name under a top-level domain that does not exist with
  NXDOMAIN; a server that answers it is making up the namespace, and a client that keeps getting its
  TXT answers is being fed by it (ten answers an hour is polling, not a lookup, which its stub caches).

Catches: iodine (NULL, base32/base128), dns2tcp (TXT), dnscat2 (TXT/CNAME/MX, hex, with or without a
domain), dnstt (TXT, base32), DNSExfiltrator, sods, Ismdoor-style counters over a fixed hashed label,
Mozart-style TXT C2 with made-up names sent to its own server; low-volume ones from about ten names.
Misses: a slow tunnel under ten encoded data-type names (or 50 A/AAAA names) an hour per channel;
tunnels spread over many domains; tunnels whose names read as words; DNS over HTTPS or TLS (it is
HTTPS or TLS, see docs/detection.md). Names under the cluster's own domain and reverse lookups are
never judged.
False positives: reputation and telemetry services that look up hashes as names (anti-virus, spam
lists, Team Cymru's malware hash registry) at a high rate from one pod; an internal zone under a
made-up top-level domain that serves TXT records polled by a workload (Consul's node metadata);
allowlist the workload (allowlists match the querying pod, not the domain).

Score: the distinct-name count of the channel once its names look encoded or it is judged a tunnel,
else 0.

Example:
    >>> d = DnsTunnelingDetector()
    >>> d.observe(batch_of(flows, None, dns))  # doctest: +SKIP
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from kubesonar.shared.detectors.base import Detector, Pair, Score, StateMigrationError, bounded, clock_from_v0
from kubesonar.shared.dns import (
    DnsMessages,
    QType,
    data_part,
    is_data_type,
    is_made_up,
    is_private_type,
    is_unused_type,
    looks_encoded,
    registered_domain,
)
from kubesonar.shared.flow import address_text
from kubesonar.shared.identity import dns_client_endpoint

if TYPE_CHECKING:
    from kubesonar.shared.batch import Batch

SECOND = 1_000_000_000
_TUNNEL_TYPES = {int(QType.TXT), int(QType.NULL), int(QType.ANY)}
_NEVER_JUDGED = (".local", ".svc", ".in-addr.arpa", ".ip6.arpa", ".localhost", ".internal")
# Zones whose names only their CDN or cloud answers, from its own authoritative servers: no tenant runs a
# server there, so no one's data can come back, while their hashed, per-edge names read as encoded and
# arrive in volume (a media proxy asks fifty an hour).
PROVIDER_ZONES = frozenset({
    "googlevideo.com", "gvt1.com", "fastly.net", "fastlylb.net", "cloudfront.net", "akamaiedge.net",
    "akamaized.net", "akamai.net", "edgekey.net", "edgesuite.net", "azureedge.net", "trafficmanager.net",
    "amazonaws.com", "elb.amazonaws.com", "cloudflare.net",
})
_HASHES_KEPT = 1024  # distinct names remembered per pair: far above the thresholds


@dataclass
class NameWindow:
    """A channel's questions in the current window: a (client, registered domain) pair, or a (client,
    server) pair for names under a made-up top-level domain."""

    window_start_ns: int
    last_ns: int
    name_hashes: list[int] = field(default_factory=list)  # CRC32 of name and type, the first 1024
    distinct_names: int = 0
    subdomain_chars: int = 0  # over the first 1024 distinct names
    char_counts: dict[str, int] = field(default_factory=dict)  # characters of those subdomains
    tunnel_type_names: int = 0  # distinct names asked with a tunnel record type (TXT, NULL, ANY, private)
    alarm: bool = False
    reported: bool = False
    encoded_names: int = 0  # distinct names whose data part looks encoded
    encoded_data_type_names: int = 0  # ... of them asked with a data-carrying type
    unused_type_names: int = 0  # distinct names asked as NULL or a private-use type
    data_type_names: int = 0  # distinct names asked with a data-carrying type
    question_bytes: int = 0  # DNS bytes of the data-type queries
    response_bytes: int = 0  # DNS bytes of the data-type responses
    made_up_answers: int = 0  # responses with records to data-type questions about made-up names


_NEW_COUNTERS = ("encoded_names", "encoded_data_type_names", "unused_type_names", "data_type_names",
                 "question_bytes", "response_bytes", "made_up_answers")


@dataclass
class TunnelingState:
    windows: dict[Pair, NameWindow] = field(default_factory=dict)  # (client, registered domain or server)


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
    state_version = 2  # 2 added the per-name shape, type and byte counters, and server channels

    def __init__(self, min_names: int = 50, min_entropy: float = 4.2, min_mean_length: float = 40.0,
                 typed_mean_length: float = 16.0, min_low_volume_names: int = 10, min_answer_ratio: float = 3.0,
                 window_s: float = 3600.0, max_pairs: int = 5_000):
        super().__init__()
        self.min_names, self.min_entropy = min_names, min_entropy
        self.min_mean_length, self.typed_mean_length = min_mean_length, typed_mean_length
        self.min_low_volume_names, self.min_answer_ratio = min_low_volume_names, min_answer_ratio
        self.window_ns, self.max_pairs = int(window_s * SECOND), max_pairs

    def new_state(self) -> TunnelingState:
        return TunnelingState()

    def _encode(self, state: TunnelingState) -> dict[str, Any]:
        return {"windows": [[*pair, vars(w)] for pair, w in state.windows.items()]}

    def _decode(self, document: dict[str, Any]) -> TunnelingState:
        return TunnelingState({Pair(client, target): NameWindow(**w) for client, target, w in document["windows"]})

    def _upgrade(self, document: dict[str, Any], version: int) -> dict[str, Any]:
        """Version 1's windows lack the new counters: they start at 0 for the rest of the window."""
        if version == 0:
            document = {"state_version": 1, **self._from_v0(document)}
        elif version != 1:
            raise StateMigrationError(f"no migration from version {version}")
        return {**document, "state_version": self.state_version, "windows": [
            [client, target, {**dict.fromkeys(_NEW_COUNTERS, 0), **w}] for client, target, w in document["windows"]]}

    def _from_v0(self, document: dict[str, Any]) -> dict[str, Any]:
        return {"clock": clock_from_v0(document), "windows": [
            [*Pair.from_v0(key), {new: p[old] for old, new in _V0_FIELDS.items()}]
            for key, p in document["pairs"].items()]}

    def _assess(self, batch: Batch) -> _Assessment:
        dns = batch.dns
        out = _Assessment()
        if not len(dns):
            return out
        changed: dict[Pair, int] = {}
        names, types, times = dns["qname"].tolist(), dns["qtype"].tolist(), dns["ts"].tolist()
        responses, sizes = dns["response"].tolist(), dns["size"].tolist()
        answered = ((dns["rcode"] == 0) & (dns["answers"] > 0)).tolist()
        for i, name in enumerate(names):
            if not name or name.endswith(_NEVER_JUDGED):
                continue
            made_up = is_made_up(name)
            sub = data_part(name)
            if not sub:
                continue
            if not made_up and registered_domain(name) in PROVIDER_ZONES:
                continue
            endpoint = dns_client_endpoint(dns, i)
            target = address_text(dns["server"][i]) if made_up else registered_domain(name)
            key = Pair(endpoint["workload"] or endpoint["ip"], target)
            p = self._window(key, times[i], out, changed, dns)
            data_type = is_data_type(types[i])
            if data_type:
                if responses[i]:
                    p.response_bytes += sizes[i]
                    p.made_up_answers += int(made_up and answered[i])
                else:
                    p.question_bytes += sizes[i]
            digest = zlib.crc32(f"{name}\x1f{types[i]}".encode())
            p.last_ns = max(p.last_ns, times[i])
            if digest in p.name_hashes:
                if p.alarm or (made_up and responses[i]):  # scored again; a made-up answer is new evidence
                    changed[key] = i
                continue
            out.new_names = True
            self._count_name(p, digest, sub, int(types[i]), looks_encoded(name), data_type)
            changed[key] = i
        out.scores += [self._score(key, out.windows[key], dns, i) for key, i in changed.items()]
        return out

    def _window(self, key: Pair, ts: int, out: _Assessment, changed: dict[Pair, int], dns: DnsMessages
                ) -> NameWindow:
        """The channel's window as this batch has it (a copy of the stored one), a new one once an hour
        has passed (an alarm carries over, reported; a window that ends inside this batch is judged first)."""
        windows = out.windows
        p = windows.get(key)
        if p is None and (known := self.state.windows.get(key)) is not None:
            p = windows[key] = NameWindow(**{f.name: getattr(known, f.name) for f in fields(NameWindow)})
            p.name_hashes, p.char_counts = list(known.name_hashes), dict(known.char_counts)
        if p is None or ts - p.window_start_ns > self.window_ns:
            if p is not None and key in changed:
                out.scores.append(self._score(key, p, dns, changed.pop(key)))
            alarmed = bool(p and p.alarm)
            p = windows[key] = NameWindow(ts, ts, alarm=alarmed, reported=alarmed)
        return p

    @staticmethod
    def _count_name(p: NameWindow, digest: int, sub: str, qtype: int, encoded: bool, data_type: bool) -> None:
        if len(p.name_hashes) < _HASHES_KEPT:
            p.name_hashes.append(digest)
        p.distinct_names += 1
        p.tunnel_type_names += int(qtype in _TUNNEL_TYPES or is_private_type(qtype))
        p.encoded_names += int(encoded)
        p.encoded_data_type_names += int(encoded and data_type)
        p.unused_type_names += int(is_unused_type(qtype))
        p.data_type_names += int(data_type)
        if p.distinct_names <= _HASHES_KEPT:  # the shape of names is known well long before
            letters = sub.replace(".", "")
            p.subdomain_chars += len(letters)
            counts = p.char_counts
            for ch, count in Counter(letters).items():
                counts[ch] = counts.get(ch, 0) + count

    def _scores(self, assessment: _Assessment) -> list[Score]:
        return assessment.scores

    def _commit(self, assessment: _Assessment, flagged: set[Hashable]) -> None:
        """The windows take this batch's names (there is no baseline: a tunnel is judged by its shape)."""
        if len(assessment.windows) or self.state.windows:
            self.state.windows.update(assessment.windows)
            # a window over for an hour more is dead (its next question starts a new one): forgotten, or
            # every (client, domain) the cluster ever asked about would stay, up to the cap
            now = max((w.last_ns for w in assessment.windows.values()), default=None)
            before = len(self.state.windows)
            self.state.windows = {pair: w for pair, w in self.state.windows.items()
                                  if now is None or w.window_start_ns + 2 * self.window_ns >= now}
            self.touched |= len(self.state.windows) < before
            self.state.windows = bounded(self.state.windows, self.max_pairs)
        self.touched |= assessment.new_names or bool(assessment.windows)

    def _encoded_shape(self, p: NameWindow, mean_length: float, entropy: float, typed: float) -> bool:
        """The channel's names, taken together, are encoded data."""
        return entropy >= self.min_entropy or mean_length >= self.min_mean_length or (
            typed >= 0.5 and mean_length >= self.typed_mean_length) or 2 * p.encoded_names >= p.distinct_names

    def _reasons(self, p: NameWindow, encoded_shape: bool) -> list[str]:
        """Which of the tests the channel meets (see the module's docstring)."""
        reasons = []
        if p.distinct_names >= self.min_names and encoded_shape:
            reasons.append("volume")
        if p.encoded_data_type_names >= self.min_low_volume_names:
            reasons.append("encoded_data_types")
        if p.unused_type_names >= self.min_low_volume_names:
            reasons.append("unused_types")
        if p.data_type_names >= self.min_names and p.response_bytes >= self.min_answer_ratio * p.question_bytes > 0:
            reasons.append("answers_carry_data")
        if p.made_up_answers >= self.min_low_volume_names:
            reasons.append("made_up_namespace_answered")
        return reasons

    def _score(self, key: Pair, p: NameWindow, dns: DnsMessages, i: int) -> Score:
        measured = min(p.distinct_names, _HASHES_KEPT)
        mean_length = p.subdomain_chars / measured if measured else 0.0
        total = sum(p.char_counts.values())
        entropy = -sum(c / total * math.log2(c / total) for c in p.char_counts.values()) if total else 0.0
        typed = p.tunnel_type_names / p.distinct_names if p.distinct_names else 0.0
        encoded_shape = self._encoded_shape(p, mean_length, entropy, typed)
        reasons = self._reasons(p, encoded_shape)
        alarm = bool(reasons)
        fresh = alarm and not p.reported
        p.reported |= alarm
        p.alarm = alarm
        channel = {"server": key.target} if is_made_up(str(dns["qname"][i])) else {"domain": key.target}
        evidence = {**channel, "distinct_names": p.distinct_names, "mean_subdomain_length": round(mean_length, 1),
                    "entropy_bits": round(entropy, 2), "tunnel_record_share": round(typed, 2),
                    "encoded_names": p.encoded_names, "encoded_data_type_names": p.encoded_data_type_names,
                    "unused_type_names": p.unused_type_names, "made_up_answers": p.made_up_answers,
                    "answer_to_question_bytes": round(p.response_bytes / p.question_bytes, 2) if p.question_bytes
                    else None, "reasons": reasons, "example": str(dns["qname"][i])[:120]}
        score = float(p.distinct_names) if alarm or encoded_shape else 0.0
        return Score(key, score, alarm, dns_client_endpoint(dns, i), p.window_start_ns, p.last_ns, evidence,
                     fresh=fresh, identity=(key.target,))
