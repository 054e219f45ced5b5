"""New TLS client: a workload whose TLS ClientHello (JA4, else JA3) is one it never sent before, once
its own baseline is made, from an image it already ran: new software talking out.

A workload's TLS clients are the libraries its image ships (a runtime's HTTP client, a database driver,
a sidecar's mTLS stack): a handful of fingerprints that change with a release, not in between. A
fingerprint first seen from the same images is software the release did not bring: a dropped implant,
a downloaded tool, a shell's curl. Per workload (or address, unnamed) the fingerprints seen are kept
(the last 32) with the images they came from. The comparison is with the workload's own past, so it
needs both the cluster's learning period and the workload's own baseline (``workload_baseline_s``, a
day of its history by default): until then its fingerprints are learned in silence. A row from images
the workload was not seen running is a release: its fingerprints are learned, not judged. A flagged
fingerprint is never learned, so it stays reported when it comes back.

Catches: implants, tools and interpreters that speak TLS with their own stack (Go, Python, .NET,
Java, curl, OpenSSL builds) from a workload that did not use that stack. Misses: implants that use the
workload's own TLS library (a payload inside the JVM or Node process already there); workloads with
less than a day of history; changes that come with a new image; TLS the sensor did not see begin.
False positives: a code path first exercised long after deployment (a monthly report's client, a
failover driver), a library reloaded with new options: allowlist the workload.

Score: 1.0 for a fingerprint new to a judged workload (its first TLS client at all included: a workload
that spoke no TLS for a day and starts to is new software too).

Example:
    >>> d = NewTlsClientDetector(learning_period_ns=0, baseline_ns=0)
    >>> d.observe(batch_of(flows))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kubesonar.shared.detectors.base import Detector, Pair, Score
from kubesonar.shared.flow import address_text
from kubesonar.shared.identity import source_endpoint, subject_keys, workloads_seen

if TYPE_CHECKING:
    from kubesonar.shared.batch import Batch

DAY = 24 * 3600 * 1_000_000_000
_KEEP = 32  # fingerprints (and images) per workload


@dataclass
class TlsClients:
    fingerprints: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    first_ns: int = 0
    last_ns: int = 0

    def copy(self) -> TlsClients:
        return TlsClients(list(self.fingerprints), list(self.images), self.first_ns, self.last_ns)


@dataclass
class NewTlsClientState:
    workloads: dict[str, TlsClients] = field(default_factory=dict)


@dataclass
class _Assessment:
    first_ts: int | None = None
    workloads: dict[str, TlsClients] = field(default_factory=dict)  # as this batch leaves them
    new: dict[Pair, None] = field(default_factory=dict)  # fingerprints this batch would teach
    scores: list[Score] = field(default_factory=list)


class NewTlsClientDetector(Detector[NewTlsClientState, _Assessment]):
    rule_id = "new_tls_client"
    needs_baseline = True  # a workload's own past fingerprints

    def __init__(self, learning_period_ns: int, force_learning: bool = False, baseline_ns: int = DAY,
                 max_workloads: int = 20_000):
        super().__init__(learning_period_ns, force_learning)
        self.baseline_ns, self.max_workloads = baseline_ns, max_workloads

    def new_state(self) -> NewTlsClientState:
        return NewTlsClientState()

    def _encode(self, state: NewTlsClientState) -> dict[str, Any]:
        return {"workloads": {k: vars(c) for k, c in state.workloads.items()}}

    def _decode(self, document: dict[str, Any]) -> NewTlsClientState:
        return NewTlsClientState({k: TlsClients(list(c["fingerprints"]), list(c["images"]), int(c["first_ns"]),
                                                int(c["last_ns"]))
                                  for k, c in document["workloads"].items()})

    def _assess(self, batch: Batch) -> _Assessment:
        flows = batch.flows
        out = _Assessment()
        if not len(flows):
            return out
        out.first_ts = int(flows["first_ts"].min())
        for key, ts in workloads_seen(flows).items():  # a workload's history starts when it is first seen
            self._clients(out, key, ts)
        hello = (flows["tls_ja4"] != "") | (flows["tls_ja3"] != "")
        rows = np.flatnonzero(hello)
        rows = rows[np.argsort(flows["first_ts"][rows], kind="stable")]
        for row, key in zip(rows.tolist(), subject_keys(flows, rows), strict=True):
            ts = int(flows["first_ts"][row])
            c = self._clients(out, key, ts)
            fingerprint = str(flows["tls_ja4"][row]) or f"ja3:{flows['tls_ja3'][row]}"
            images = str(flows["src_images"][row])
            pair = Pair(key, fingerprint)
            if fingerprint in c.fingerprints or pair in out.new:
                continue
            release = images not in c.images
            if release:
                c.images = (c.images + [images])[-_KEEP:]
            young = ts - c.first_ns < self.baseline_ns
            out.new[pair] = None
            if release and c.fingerprints:
                continue  # software a new image brought: learned, not judged
            evidence = {"fingerprint": fingerprint, "ja3": str(flows["tls_ja3"][row]),
                        "sni": str(flows["tls_sni"][row]), "alpn": str(flows["tls_alpn"][row]),
                        "destination": f"{address_text(flows['dst_addr'][row])}:{int(flows['dst_port'][row])}",
                        "known_fingerprints": len(c.fingerprints)}
            out.scores.append(Score(pair, 1.0, True, source_endpoint(flows, row), ts,
                                    int(flows["last_ts"][row]), evidence, warming_up=young, identity=(fingerprint,),
                                    destination={"ip": address_text(flows["dst_addr"][row]),
                                                 "port": int(flows["dst_port"][row])}))
        return out

    def _clients(self, out: _Assessment, key: str, ts: int) -> TlsClients:
        c = out.workloads.get(key)
        if c is None:
            known = self.state.workloads.get(key)
            c = out.workloads[key] = known.copy() if known is not None else TlsClients(first_ns=ts, last_ns=ts)
        c.first_ns, c.last_ns = min(c.first_ns, ts), max(c.last_ns, ts)
        return c

    def _scores(self, assessment: _Assessment) -> list[Score]:
        return assessment.scores

    def _commit(self, assessment: _Assessment, flagged: set[Hashable]) -> None:
        """New fingerprints join their workload's, except flagged ones (protect the model)."""
        if assessment.first_ts is not None:
            self._start_clock(assessment.first_ts)
        if not assessment.workloads:
            return
        self.touched = True
        for pair in assessment.new:
            if pair not in flagged:
                c = assessment.workloads[pair.source]
                c.fingerprints = (c.fingerprints + [pair.target])[-_KEEP:]
        self.state.workloads.update(assessment.workloads)
        if len(self.state.workloads) > self.max_workloads:
            keep = sorted(self.state.workloads, key=lambda k: self.state.workloads[k].last_ns)[-self.max_workloads:]
            self.state.workloads = {k: self.state.workloads[k] for k in keep}
