"""Alerts as OCSF 1.3.0 Detection Findings (class_uid 2004), for SIEMs and AWS Security Lake."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kubesonar.shared.alerts import alert_rule

OCSF_VERSION = "1.3.0"
_SEVERITY_ID = {"informational": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
# OCSF status_id: 1 New, 2 In Progress, 4 Resolved
_STATUS_ID = {"open": 1, "acknowledged": 2, "resolved": 4, "false_positive": 4, "closed": 4}
_STATUS_NAME = {1: "New", 2: "In Progress", 4: "Resolved"}


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def _endpoint(side: dict[str, Any] | None) -> dict[str, Any] | None:
    if not side:
        return None
    endpoint: dict[str, Any] = {"ip": side["ip"]} if side.get("ip") else {}
    if side.get("pod"):
        endpoint["name"] = side["pod"]
    if side.get("workload"):
        endpoint["svc_name"] = side["workload"]
    if side.get("port"):
        endpoint["port"] = int(side["port"])
    return endpoint or None


def to_ocsf(alert: dict[str, Any], product_version: str = "unknown") -> dict[str, Any]:
    status_id = _STATUS_ID.get(alert["status"], 1)
    mitre = alert["mitre"]
    evidence: dict[str, Any] = {}
    for key, side in (("src_endpoint", alert["source"]), ("dst_endpoint", alert.get("destination"))):
        endpoint = _endpoint(side)
        if endpoint:
            evidence[key] = endpoint
    return {
        "activity_id": 2 if alert["count"] > 1 else 1,
        "activity_name": "Update" if alert["count"] > 1 else "Create",
        "category_uid": 2,
        "category_name": "Findings",
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "type_uid": 200400 + (2 if alert["count"] > 1 else 1),
        "severity_id": _SEVERITY_ID[alert["severity"]],
        "severity": alert["severity"].capitalize(),
        "status_id": status_id,
        "status": _STATUS_NAME[status_id],
        "time": _ms(alert["last_seen"]),
        "start_time": _ms(alert["first_seen"]),
        "end_time": _ms(alert["last_seen"]),
        "count": alert["count"],
        "message": f"{alert['title']}: {alert['source'].get('workload') or alert['source'].get('ip')}",
        "metadata": {
            "version": OCSF_VERSION,
            "product": {"name": "KubeSonar", "vendor_name": "KubeSonar", "version": product_version},
            "labels": list(alert.get("tags", [])),
        },
        "finding_info": {
            "uid": alert["id"],
            "title": alert["title"],
            "desc": alert["description"],
            "types": list(dict.fromkeys((alert["type"], alert_rule(alert)))),
            "first_seen_time": _ms(alert["first_seen"]),
            "last_seen_time": _ms(alert["last_seen"]),
            "attacks": [{
                "technique": {"uid": mitre["technique_id"], "name": mitre["technique"]},
                "tactic": {"name": mitre["tactic"]},
            }],
        },
        "evidences": [evidence] if evidence else [],
        "unmapped": {"kubesonar": {"cluster": alert.get("cluster", ""), "evidence": alert["evidence"],
                                   "assignee": alert.get("assignee"), "source": alert["source"]}},
    }
