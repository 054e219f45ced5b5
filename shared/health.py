"""Sensor health from heartbeats. Every batch header carries its sensor's cumulative counters (packets,
kernel_packets, kernel_drops, ...), one batch at least every window, traffic or not. From them:

- ``sensor_drops``: a window in which the kernel dropped at least 1,000 packets, or more than 1% of
  what it saw; the sensor is blind to part of the traffic (overload, or a flood meant to blind it).
- ``sensor_silent``: a node whose sensor sent nothing for ``silent_after_s`` (default 60 s, six
  10-second windows; reported between that and 4/3 of it, as heartbeats are recorded every third of
  it): stopped, crashed, cut off from the queue, or killed by an intruder.

Silence is noticed when any batch arrives (another node's) or on a scheduled check
(:func:`kubesonar.shared.pipeline.check_sensors`), so a whole cluster going silent is seen too.
Nodes are the unit (a restarted sensor has a new id, on the same node). A node silent for a day, its
silence reported, is forgotten (``forget_after_s``): the autoscaler replaces nodes, and a health document
that kept every node the cluster ever had would grow with its history, read and written per batch.

A node leaving the cluster (scaled down, drained, deleted) is no alert: a sensor stopped by SIGTERM reads
its Node (on a node only cordoned, its own Pod too: deleted through the API, it is a rollout, not a node
leaving) and, if the node is on its way out, says so in its last batch (counter ``node_retiring``,
sensor/kube.py). The node is recorded as retired, never reported silent, and forgotten as silent nodes
are; a later batch from it (the node stayed after all) makes it live again. What this trusts:
docs/hardening.md.
"""

from __future__ import annotations

from typing import Any

from kubesonar.shared.alerts import Finding
from kubesonar.shared.batch import BatchHeader

SECOND = 1_000_000_000
FORGET_AFTER_S = 24 * 3600.0  # as the applied log forgets a sensor (shared/applied.py)


class SensorHealth:
    def __init__(self, silent_after_s: float = 60.0, min_drops: int = 1000, drop_ratio: float = 0.01,
                 forget_after_s: float = FORGET_AFTER_S):
        self.silent_after_ns = int(silent_after_s * SECOND)
        self.forget_after_ns = max(int(forget_after_s * SECOND), 2 * self.silent_after_ns)
        self.min_drops, self.drop_ratio = min_drops, drop_ratio
        self._state: dict[str, Any] = {"nodes": {}}
        self.touched = False  # whether the state changed (the core skips writing it back when not)

    def to_state(self) -> dict[str, Any]:
        return self._state

    def from_state(self, state: dict[str, Any] | None) -> SensorHealth:
        self._state = state or {"nodes": {}}
        self.touched = False
        return self

    def observe(self, header: BatchHeader, now_ns: int) -> list[Finding]:
        """A heartbeat from ``header``'s node; a finding if its kernel dropped too much this window."""
        c = header.counters
        self.touched = False
        if "kernel_packets" not in c:  # offline analysis: no live sensor behind it
            return []
        node = header.node or header.sensor_id
        prev = self._state["nodes"].get(node, {})
        if header.window_end_ns <= prev.get("window_end_ns", header.window_end_ns - 1):
            return []  # a window no later than the last recorded: a redelivery or a replay, no sign of life
        same = prev.get("sensor_id") == header.sensor_id
        drops = c.get("kernel_drops", 0) - (prev.get("kernel_drops", 0) if same else 0)
        seen = c.get("kernel_packets", 0) - (prev.get("kernel_packets", 0) if same else 0)
        dropping = drops >= self.min_drops or (seen > 0 and drops > self.drop_ratio * seen)
        # the sensor's last batch: its node is leaving the cluster. Its window ended as the sensor stopped,
        # by now at the latest (give a clock's skew): one from the future would hold the node's real
        # heartbeats back as older and hide its silence for as long (a forged batch, by root on another
        # node holding the cluster-wide key), so it counts as a plain heartbeat, whose silence alerts
        retiring = c.get("node_retiring", 0) > 0 and header.window_end_ns <= now_ns + self.silent_after_ns
        # A heartbeat that changes nothing the checks need is not written: the node was heard recently
        # enough (a third of the silence bound), same sensor, no drops. Idle clusters write the health
        # document a third as often (docs/cost.md); drops are then judged over the longer interval.
        fresh = now_ns - prev.get("last_seen_ns", -self.silent_after_ns) < self.silent_after_ns // 3
        if (same and fresh and not dropping and not prev.get("dropping") and not prev.get("silent")
                and retiring == prev.get("retired", False)):
            return []
        self.touched = True
        self._state["nodes"][node] = {
            "sensor_id": header.sensor_id, "last_seen_ns": now_ns, "window_end_ns": header.window_end_ns,
            "kernel_drops": c.get("kernel_drops", 0), "kernel_packets": c.get("kernel_packets", 0),
            "silent": False, "dropping": dropping, "retired": retiring,
        }
        if not dropping or prev.get("dropping"):
            return []
        evidence = {"kernel_drops_in_window": drops, "kernel_packets_in_window": seen,
                    "drop_ratio": round(drops / seen, 4) if seen else None, "sensor_id": header.sensor_id}
        return [_finding("sensor_drops", node, header.window_start_ns, header.window_end_ns, evidence)]

    def check(self, now_ns: int) -> list[Finding]:
        """Nodes whose sensors have been silent too long (reported once per silence; a retired node never
        is); those silent past ``forget_after_s``, their silence reported or their node retired, are
        forgotten (``touched`` says so)."""
        findings = []
        nodes = self._state["nodes"]
        for node, s in list(nodes.items()):
            quiet = now_ns - s["last_seen_ns"]
            if (s["silent"] or s.get("retired")) and quiet > self.forget_after_ns:
                del nodes[node]
                self.touched = True
                continue
            # the stored time may lag the last heartbeat by up to a third of the bound (observe)
            if quiet > self.silent_after_ns + self.silent_after_ns // 3 and not s["silent"] and not s.get("retired"):
                s["silent"] = True
                self.touched = True
                findings.append(_finding("sensor_silent", node, s["last_seen_ns"], now_ns,
                                         {"silent_for_s": round(quiet / SECOND, 1), "last_sensor_id": s["sensor_id"]}))
        return findings


def _finding(rule: str, node: str, first: int, last: int, evidence: dict[str, Any]) -> Finding:
    source = {"ip": "", "namespace": "kubesonar", "pod": "", "workload": "", "node": node, "labels": ""}
    return Finding(type=rule, source=source, first_seen_ns=first, last_seen_ns=last, evidence=evidence,
                   identity=(node,))
