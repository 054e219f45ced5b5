"""What a cluster, node or sensor name may be: the names become object-store key segments and labels,
so a ``/``, a space or a non-ASCII letter would file state under another name (``team/prod`` under
``team``) or break a store. Kubernetes names (RFC 1123) fit; so do host names with capitals or ``_``.
"""

from __future__ import annotations

import re

MAX_CLUSTER = 63
MAX_NODE = 253  # a Kubernetes node name is a DNS subdomain
MAX_SENSOR_ID = 300  # <node>/<hex>
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?\Z")


def name_fault(kind: str, value: str, limit: int) -> str | None:
    """Why ``value`` is not a valid ``kind`` name, or None when it is."""
    if not value:
        return f"{kind} name is empty"
    if len(value) > limit:
        return f"{kind} name of {len(value)} characters is longer than {limit}"
    if not _NAME.match(value):
        return (f"{kind} name {value[:80]!r} may hold only ASCII letters, digits, '.', '_' and '-', "
                "beginning and ending with a letter or digit")
    return None


def sensor_id_fault(value: str) -> str | None:
    """A sensor id is ``<node>/<suffix>``: both parts names (a bare name is accepted for old senders)."""
    if len(value) > MAX_SENSOR_ID:
        return f"sensor id of {len(value)} characters is longer than {MAX_SENSOR_ID}"
    parts = value.split("/")
    if len(parts) > 2:
        return f"sensor id {value[:80]!r} has more than one '/'"
    for part in parts:
        fault = name_fault("sensor id", part, MAX_NODE)
        if fault:
            return fault
    return None


def header_name_faults(cluster: str, node: str, sensor_id: str) -> list[str]:
    faults = [name_fault("cluster", cluster, MAX_CLUSTER), name_fault("node", node, MAX_NODE),
              sensor_id_fault(sensor_id)]
    return [f for f in faults if f]
