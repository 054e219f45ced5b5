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
False positives: deliberate new applications, or releases that switch image repository (allowlist
the namespace or workload, or end learning again after a rollout); scheduled jobs first run after
learning.

Score: 1.0 for a workload new to the baseline (it is scored once, the first time it is seen).

Example:
    >>> d = NewWorkloadDetector(learning_period_ns=3600 * 10**9)
    >>> d.decide(d.update(flows))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np
from kubesonar.shared.alerts import Finding
from kubesonar.shared.detectors import Score, decide_alarms
from kubesonar.shared.flow import FlowRecords, address_text
from kubesonar.shared.dns import DnsMessages
from kubesonar.shared.pod_events import PodEvents

_Sighting = tuple[str, str, dict[str, str], int, str, str]  # key, images, endpoint, first seen, kind, name


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
        keys = np.array([f"{a}/{b}/{c}\x1f{d}" for a, b, c, d in zip(*cols.values())], dtype=object)
        _, first = np.unique(keys, return_index=True)
        for i in first.tolist():
            row = rows[i]
            key, images = keys[i].split("\x1f")
            images = repositories(images)
            endpoint = {"ip": address_text(flows[f"{side}_addr"][row]), "namespace": str(cols["namespace"][i]),
                        "pod": str(flows[f"{side}_pod"][row]), "workload": key,
                        "node": str(flows[f"{side}_node"][row]), "labels": str(flows[f"{side}_labels"][row])}
            out.append((key, images, endpoint, int(flows["first_ts"][row]), str(cols["workload_kind"][i]),
                        str(cols["workload_name"][i])))
    return out


def _pod_sightings(pods: PodEvents) -> list[_Sighting]:
    """Pods that started (or changed), traffic or not."""
    out: list[_Sighting] = []
    for e in pods.iter_dicts():
        if e["event"] == "deleted" or not e["workload_name"]:
            continue
        key = f"{e['namespace']}/{e['workload_kind']}/{e['workload_name']}"
        endpoint = {"ip": e["addr"], "namespace": e["namespace"], "pod": e["pod"], "workload": key,
                    "node": e["node"], "labels": e["labels"]}
        out.append((key, repositories(e["images"]), endpoint, int(e["ts"]), e["workload_kind"], e["workload_name"]))
    return out


class NewWorkloadDetector:
    rule_id = "new_workload"

    def __init__(self, learning_period_ns: int, force_learning: bool = False):
        self.learning_period_ns = learning_period_ns
        self.force_learning = force_learning  # learn from these flows whatever the clock says (analyze --learn)
        self._state = self._fresh_state()

    @staticmethod
    def _fresh_state() -> dict[str, Any]:
        return {"workloads": {}, "learning_until_ns": None, "learning": True}

    def to_state(self) -> dict[str, Any]:
        return self._state

    def from_state(self, state: dict[str, Any] | None) -> NewWorkloadDetector:
        self._state = state or self._fresh_state()
        return self

    @property
    def learning(self) -> bool:
        return bool(self._state["learning"])

    def end_learning(self) -> None:
        self._state["learning"] = False

    def update(self, flows: FlowRecords, pods: PodEvents | None = None,
               dns: DnsMessages | None = None) -> list[Score]:
        """Learn (while learning) the workloads seen in ``flows`` and in pods started (``pods``); score
        each workload, or workload image set, new to the baseline 1.0."""
        sightings = _sightings(flows) + (_pod_sightings(pods) if pods is not None else [])
        self.touched = False  # whether the state changed (else the core skips the write)
        if not sightings:
            return []
        start = min(s[3] for s in sightings)
        if self._state["learning_until_ns"] is None:
            self._state["learning_until_ns"] = start + self.learning_period_ns
            self.touched = True
        if self._state["learning"] and not self.force_learning and start >= self._state["learning_until_ns"]:
            self._state["learning"] = False
            self.touched = True
        learning = self._state["learning"] or self.force_learning
        known = self._state["workloads"]
        scores = []
        for key, images, endpoint, seen, kind, name in sorted(sightings, key=lambda s: s[3]):
            entry = known.get(key)
            if entry is not None and (not images or images in entry.setdefault("images", {})):
                continue
            self.touched = True  # everything below records something new
            if entry is not None and not entry["images"]:  # known before its images were: take them
                entry["images"][images] = entry["status"]
                continue
            # learned while learning; else kept as flagged, never learned: one alert stands for it
            status = "learned" if learning else "flagged"
            evidence = {"workload_kind": kind, "workload_name": name, "images": images.split(",") if images else [],
                        "labels": endpoint["labels"]}
            if entry is None:
                known[key] = {"first_seen_ns": seen, "status": status, "images": {images: status} if images else {}}
                evidence["known_workloads"] = len(known) - 1
                identity: tuple[str, ...] = ()
            else:  # a known workload running images it never ran: as new as a new workload
                entry["images"][images] = status
                evidence["known_images"] = sorted(i for i, st in entry["images"].items() if st == "learned")
                identity = ("images", images)
            scores.append(Score(key, 1.0, True, endpoint, seen, seen, evidence, warming_up=learning,
                                identity=identity))
        return scores

    def decide(self, scores: list[Score]) -> list[Finding]:
        """A finding for each new workload seen after the learning period."""
        return decide_alarms(self.rule_id, scores)
