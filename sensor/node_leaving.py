"""Whether a Node object says the node is leaving the cluster: read by a sensor stopped with SIGTERM, so
that a scale-down is not reported as a sensor gone silent (shared/health.py).

The signs, as the API returns them (JSON):

- ``metadata.deletionTimestamp``: the Node is being deleted (by hand, or by Karpenter, whose finalizer
  holds the object while it drains the node);
- ``spec.unschedulable``: cordoned, as ``kubectl drain`` and upgrades do before removing a node;
- a taint the autoscalers put on a node they are about to remove: ``ToBeDeletedByClusterAutoscaler``
  (cluster-autoscaler, as on EKS, GKE and AKS), ``karpenter.sh/disrupted`` (Karpenter v1) and
  ``karpenter.sh/disruption`` (Karpenter before v1). Sources: docs/sensor.md.
"""

from __future__ import annotations

from typing import Any

LEAVING_TAINTS = {
    "ToBeDeletedByClusterAutoscaler": "cluster-autoscaler",
    "karpenter.sh/disrupted": "Karpenter",
    "karpenter.sh/disruption": "Karpenter before v1",
}


def leaving_sign(node: dict[str, Any]) -> str:
    """What says this Node is leaving the cluster, in words for a log line; '' when nothing does."""
    if (node.get("metadata") or {}).get("deletionTimestamp"):
        return "the Node is being deleted"
    spec = node.get("spec") or {}
    for taint in spec.get("taints") or []:
        if taint.get("key") in LEAVING_TAINTS:
            return f"taint {taint['key']} ({LEAVING_TAINTS[taint['key']]})"
    if spec.get("unschedulable"):
        return "cordoned (spec.unschedulable)"
    return ""
