"""Whether a Node object says the node is leaving the cluster: read by a sensor stopped with SIGTERM, so
that a scale-down is not reported as a sensor gone silent (shared/health.py).

The signs, as the API returns them (JSON):

- ``metadata.deletionTimestamp``: the Node is being deleted (by hand, or by Karpenter, whose finalizer
  holds the object while it drains the node); a Node already gone (the read's 404) is taken so too
  (sensor/kube.py);
- ``spec.unschedulable``: cordoned, as ``kubectl drain`` and upgrades do before removing a node;
- a taint the autoscalers put on a node they are about to remove: ``ToBeDeletedByClusterAutoscaler``
  (cluster-autoscaler, as on EKS, GKE and AKS), ``karpenter.sh/disrupted`` (Karpenter v1) and
  ``karpenter.sh/disruption`` (Karpenter before v1). Sources: docs/sensor.md.

A cordon alone does not tell why the sensor was stopped: DaemonSet pods tolerate it, so a drain leaves the
sensor running, and its SIGTERM comes either from the node shutting down (leaving) or from its own Pod
deleted through the API, a rollout or ``kubectl delete pod`` that the DaemonSet controller answers with a
new pod on the same node (staying). :func:`replaced_on_this_node` reads the sensor's own Pod to tell.
"""

from __future__ import annotations

from typing import Any

LEAVING_TAINTS = {
    "ToBeDeletedByClusterAutoscaler": "cluster-autoscaler",
    "karpenter.sh/disrupted": "Karpenter",
    "karpenter.sh/disruption": "Karpenter before v1",
}
CORDONED = "cordoned (spec.unschedulable)"  # the one sign that needs the sensor's own Pod to be read


def leaving_sign(node: dict[str, Any]) -> str:
    """What says this Node is leaving the cluster, in words for a log line; '' when nothing does."""
    if (node.get("metadata") or {}).get("deletionTimestamp"):
        return "the Node is being deleted"
    spec = node.get("spec") or {}
    for taint in spec.get("taints") or []:
        if taint.get("key") in LEAVING_TAINTS:
            return f"taint {taint['key']} ({LEAVING_TAINTS[taint['key']]})"
    if spec.get("unschedulable"):
        return CORDONED
    return ""


def replaced_on_this_node(own_pod: dict[str, Any], node: str) -> bool:
    """Whether the sensor's own Pod, on ``node``, was deleted through the API (``metadata.deletionTimestamp``):
    the DaemonSet controller starts its successor on the same node. A node shutting down (graceful node
    shutdown, the VM stopped after a drain) stops its pods without deleting them. A Pod on another node
    (POD_NAME naming some other pod) says nothing of this one."""
    on_node = (own_pod.get("spec") or {}).get("nodeName") == node
    return on_node and bool((own_pod.get("metadata") or {}).get("deletionTimestamp"))
