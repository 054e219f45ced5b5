"""Pod lifecycle events a sensor saw on its node, carried in the batch next to the flows (schema 2),
so the backend knows a new workload the moment its pod starts, traffic or not."""

from __future__ import annotations

from collections.abc import Iterator
from enum import IntEnum
from typing import Any

from kubesonar.shared.flow import Column
from kubesonar.shared.table import Table


class PodEventType(IntEnum):
    UNKNOWN = 0
    ADDED = 1
    MODIFIED = 2
    DELETED = 3


POD_EVENT_COLUMNS: tuple[Column, ...] = (
    Column("ts", "i8", "when the sensor saw the event, ns since the epoch"),
    Column("event", "u1", "PodEventType"),
    Column("addr", "V16", "the pod's (first) IP address; zero if it has none yet"),
    Column("namespace", "O", "namespace"),
    Column("pod", "O", "pod name"),
    Column("workload_kind", "O", "Deployment, StatefulSet, DaemonSet, Job, CronJob, ... or Pod"),
    Column("workload_name", "O", "the owning workload's name"),
    Column("node", "O", "node name"),
    Column("labels", "O", "sorted key=value pairs joined by ','"),
    Column("images", "O", "sorted distinct container images joined by ','"),
    Column("service_account", "O", "service account name"),
)


class PodEvents(Table):
    """Pod events as equal-length numpy columns, one per :data:`POD_EVENT_COLUMNS` entry."""

    NAME = "pods"
    COLUMNS = POD_EVENT_COLUMNS
    __slots__ = ()

    def iter_dicts(self) -> Iterator[dict[str, Any]]:
        for row in super().iter_dicts():
            row["event"] = PodEventType(row["event"]).name.lower()
            yield row
