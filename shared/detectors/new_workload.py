"""Never-seen-before workloads: a (namespace, kind, name) on the network that the baseline does not know,
or a known one running a set of container images it never ran (a hijacked Deployment now running a miner).

Learns every workload it sees while the learning period lasts (explicit: ``learning`` in the state
until ``learning_until_ns`` of data time, or until learning is ended by hand), then reports each new
one once: the workload is kept as *flagged*, not learned, so an attacker's workload never becomes
part of the baseline, and one alert stands for it until someone triages it.

Catches: any new Deployment, StatefulSet, DaemonSet, Job, CronJob or bare pod that sends or receives
traffic; a known workload whose pods run images from a repository it never ran (its identity is
namespace, kind, name and image repositories: a release, a new tag or digest of the same image, is
not new). Misses: workloads that stay silent; pods outside the inventory (named by IP, not judged);
a miner pushed under the workload's own repository.
Kept: the workloads seen in the last ``FORGET_AFTER_NS`` of data time (40 days: a monthly CronJob stays
known), at most ``MAX_WORKLOADS``; one gone longer is new again when it comes back. Without it the baseline
kept every workload the cluster ever ran (a release's bare Jobs, bare pods), read and written per batch.

False positives: deliberate new applications, or releases that switch image repository (allowlist
the namespace or workload, or end learning again after a rollout); scheduled jobs first run after
learning.

Score: 1.0 for a workload new to the baseline (it is scored once, the first time it is seen).

Example:
    >>> d = NewWorkloadDetector(learning_period_ns=3600 * 10**9)
    >>> d.observe(batch_of(flows))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kubesonar.shared.detectors.base import Detector, Score
from kubesonar.shared.flow import FlowRecords, address_text
from kubesonar.shared.identity import endpoint as make_endpoint
from kubesonar.shared.identity import workload_keys
from kubesonar.shared.pod_events import PodEvents

if TYPE_CHECKING:
    from kubesonar.shared.batch import Batch

_Sighting = tuple[str, str, dict[str, str], int, str, str]  # key, images, endpoint, first seen, kind, name
FORGET_AFTER_NS = 40 * 24 * 3600 * 1_000_000_000
MAX_WORKLOADS = 10_000
_SEEN_EVERY_NS = 3600 * 1_000_000_000  # a known workload's last sighting is refreshed at most this often


@dataclass
class KnownWorkload:
    first_seen_ns: int
    status: str  # "learned" (part of the baseline) or "flagged" (reported, never learned)
    images: dict[str, str] = field(default_factory=dict)  # image repositories -> learned or flagged
    last_seen_ns: int | None = None  # None: stored before it was kept (taken as the next batch's time)


@dataclass
class NewWorkloadState:
    workloads: dict[str, KnownWorkload] = field(default_factory=dict)  # by workload key


@dataclass
class _Assessment:
    start_ns: int | None = None  # the earliest sighting (None: none)
    learning: bool = False
    scores: list[Score] = field(default_factory=list)
    workloads: dict[str, KnownWorkload] = field(default_factory=dict)  # entries this batch changed
    judged: list[tuple[str, str, bool]] = field(default_factory=list)  # (key, images, a new workload) scored
    end_ns: int = 0  # the latest sighting


def repositories(images: str) -> str:
    """Comma-joined images as their sorted distinct repositories: a release (a new tag or digest of the
    same image) is not a new workload; another image (a miner) is."""
    out = set()
    for image in filter(None, images.split(",")):
        image = image.split("@", 1)[0]
        head, _, last = image.rpartition("/")
        out.add(f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0])
    return ",".join(sorted(out))


def _sightings(flows: FlowRecords) -> list[_Sighting]:
    """Each distinct (workload, images) on either side of the flows, at its first flow."""
    out: list[_Sighting] = []
    for side in ("src", "dst"):
        rows = np.flatnonzero(flows[f"{side}_workload_name"] != "")
        if not len(rows):
            continue
        cols = {f: flows[f"{side}_{f}"][rows] for f in ("namespace", "workload_kind", "workload_name", "images")}
        names = workload_keys(cols["namespace"].tolist(), cols["workload_kind"].tolist(),
                              cols["workload_name"].tolist())
        keys = np.array([f"{key}\x1f{images}" for key, images in zip(names, cols["images"].tolist(), strict=True)],
                        dtype=object)
        _, first = np.unique(keys, return_index=True)
        for i in first.tolist():
            row = rows[i]
            key, images = keys[i].split("\x1f")
            images = repositories(images)
            endpoint = make_endpoint(address_text(flows[f"{side}_addr"][row]), str(cols["namespace"][i]),
                                     str(flows[f"{side}_pod"][row]), str(cols["workload_kind"][i]),
                                     str(cols["workload_name"][i]), str(flows[f"{side}_node"][row]),
                                     str(flows[f"{side}_labels"][row]))
            out.append((key, images, endpoint, int(flows["first_ts"][row]), str(cols["workload_kind"][i]),
                        str(cols["workload_name"][i])))
    return out


def _pod_sightings(pods: PodEvents) -> list[_Sighting]:
    """Pods that started (or changed), traffic or not."""
    out: list[_Sighting] = []
    for e in pods.iter_dicts():
        if e["event"] == "deleted" or not e["workload_name"]:
            continue
        endpoint = make_endpoint(e["addr"], e["namespace"], e["pod"], e["workload_kind"], e["workload_name"],
                                 e["node"], e["labels"])
        key = endpoint["workload"]
        out.append((key, repositories(e["images"]), endpoint, int(e["ts"]), e["workload_kind"], e["workload_name"]))
    return out


class NewWorkloadDetector(Detector[NewWorkloadState, _Assessment]):
    rule_id = "new_workload"
    needs_baseline = True  # judged against the cluster's and the workload's own past

    def new_state(self) -> NewWorkloadState:
        return NewWorkloadState()

    def _encode(self, state: NewWorkloadState) -> dict[str, Any]:
        return {"workloads": {key: vars(w) for key, w in state.workloads.items()}}

    def _decode(self, document: dict[str, Any]) -> NewWorkloadState:
        return NewWorkloadState({key: KnownWorkload(**w) for key, w in document["workloads"].items()})

    def _from_v0(self, document: dict[str, Any]) -> dict[str, Any]:
        # version 0 kept a "learning" flag that latched off when the period was over or ended by hand
        return {"clock": {"until_ns": document["learning_until_ns"], "ended": not document["learning"]},
                "workloads": {key: {"first_seen_ns": w["first_seen_ns"], "status": w["status"],
                                    "images": dict(w.get("images", {}))}
                              for key, w in document["workloads"].items()}}

    @property
    def learning(self) -> bool:
        return not self.clock.ended

    def _assess(self, batch: Batch) -> _Assessment:
        """Score each workload, or workload image set, new to the baseline 1.0; while learning, those
        are scored as warming up (and learned)."""
        sightings = _sightings(batch.flows) + _pod_sightings(batch.pods)
        if not sightings:
            return _Assessment()
        start = min(s[3] for s in sightings)
        out = _Assessment(start, self._learning(start))
        known, changed = self.state.workloads, out.workloads
        again: set[tuple[str, str]] = set()
        for key, images, endpoint, seen, kind, name in sorted(sightings, key=lambda s: s[3]):
            entry = changed.get(key) or known.get(key)
            if entry is not None and (not images or images in entry.images):
                status = entry.images.get(images, entry.status) if images else entry.status
                if status == "flagged" and (key, images) not in again:  # scored again, reported once
                    again.add((key, images))
                    evidence = {"workload_kind": kind, "workload_name": name, "labels": endpoint["labels"],
                                "images": images.split(",") if images else []}
                    identity = () if entry.status == "flagged" else ("images", images)
                    out.scores.append(Score(key, 1.0, True, endpoint, seen, seen, evidence, fresh=False,
                                            warming_up=out.learning, identity=identity))
                continue
            if entry is not None and key not in changed:
                entry = changed[key] = KnownWorkload(entry.first_seen_ns, entry.status, dict(entry.images))
            if entry is not None and not entry.images:  # known before its images were: take them
                entry.images[images] = entry.status
                continue
            # learned while learning; else kept as flagged, never learned: one alert stands for it
            status = "learned" if out.learning else "flagged"
            evidence = {"workload_kind": kind, "workload_name": name, "images": images.split(",") if images else [],
                        "labels": endpoint["labels"]}
            if entry is None:
                changed[key] = KnownWorkload(seen, status, {images: status} if images else {})
                evidence["known_workloads"] = len(known) + sum(k not in known for k in changed) - 1
                identity: tuple[str, ...] = ()
            else:  # a known workload running images it never ran: as new as a new workload
                entry.images[images] = status
                evidence["known_images"] = sorted(i for i, st in entry.images.items() if st == "learned")
                identity = ("images", images)
            out.judged.append((key, images, entry is None))
            out.scores.append(Score(key, 1.0, True, endpoint, seen, seen, evidence, warming_up=out.learning,
                                    identity=identity))
        self._refresh_sightings(sightings, out)
        return out

    def _refresh_sightings(self, sightings: list[_Sighting], out: _Assessment) -> None:
        """Each sighted workload's last sighting, in a changed entry when it moved on by an hour or more
        (a known workload is not rewritten for every batch it appears in)."""
        for key, _, _, seen, _, _ in sightings:
            out.end_ns = max(out.end_ns, seen)
            entry = out.workloads.get(key)
            if entry is None:
                known = self.state.workloads[key]
                if known.last_seen_ns is not None and seen - known.last_seen_ns < _SEEN_EVERY_NS:
                    continue
                entry = out.workloads[key] = KnownWorkload(known.first_seen_ns, known.status, dict(known.images),
                                                           known.last_seen_ns)
            entry.last_seen_ns = max(entry.last_seen_ns or seen, seen)

    def _scores(self, assessment: _Assessment) -> list[Score]:
        return assessment.scores

    def _commit(self, assessment: _Assessment, flagged: set[Hashable]) -> None:
        """Workloads seen while learning are learned; a flagged one is kept as flagged, never learned."""
        if assessment.start_ns is None:
            return
        self._start_clock(assessment.start_ns)
        if not self.clock.ended and not self.force_learning and assessment.start_ns >= self.clock.until_ns:
            self.clock.ended = True  # the period is over: it stays over, whatever order batches come in
            self.touched = True
        for key, images, new_entry in assessment.judged:  # protect the model: what was flagged stays so
            status = "flagged" if key in flagged else "learned"
            entry = assessment.workloads[key]
            if new_entry:
                entry.status = status
            if images:
                entry.images[images] = status
        for key, entry in assessment.workloads.items():
            self.state.workloads[key] = entry
            self.touched = True
        self._forget_gone(assessment.end_ns)

    def _forget_gone(self, now_ns: int) -> None:
        """Forget workloads unseen for FORGET_AFTER_NS, then all but the MAX_WORKLOADS seen last."""
        workloads = self.state.workloads
        for entry in workloads.values():
            if entry.last_seen_ns is None:  # a document of before: its workloads' time starts now
                entry.last_seen_ns = now_ns
                self.touched = True
        kept = {k: w for k, w in workloads.items() if now_ns - w.last_seen_ns < FORGET_AFTER_NS}
        if len(kept) > MAX_WORKLOADS:
            kept = dict(sorted(kept.items(), key=lambda kw: kw[1].last_seen_ns)[-MAX_WORKLOADS:])
        if len(kept) < len(workloads):
            self.state.workloads = kept
            self.touched = True
