"""Pod lifecycle events a sensor saw on its node, carried in the batch next to the flows (schema 2),
so the backend knows a new workload the moment its pod starts, traffic or not."""

from __future__ import annotations

from collections.abc import Iterator
from enum import IntEnum
from typing import Any

import numpy as np
from kubesonar.shared.flow import Column, address_text, checked_columns


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
_NAMES = tuple(c.name for c in POD_EVENT_COLUMNS)
_DTYPES = {c.name: np.dtype(c.dtype) for c in POD_EVENT_COLUMNS}


class PodEvents:
    """Pod events as equal-length numpy columns, one per :data:`POD_EVENT_COLUMNS` entry."""

    __slots__ = ("columns",)

    def __init__(self, columns: dict[str, np.ndarray]):
        self.columns = checked_columns(columns, _DTYPES, "pod event")

    @classmethod
    def empty(cls) -> PodEvents:
        return cls({c.name: np.zeros(0, dtype=c.dtype) for c in POD_EVENT_COLUMNS})

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]]) -> PodEvents:
        """Rows with the column names as keys (``addr`` as 16 bytes); missing strings are ''."""
        columns = {}
        for c in POD_EVENT_COLUMNS:
            values = [row.get(c.name, "" if c.dtype == "O" else 0) for row in rows]
            if c.dtype == "V16":
                values = [bytes(v) if v else bytes(16) for v in values]
            columns[c.name] = np.array(values, dtype=object if c.dtype == "O" else c.dtype)
            if c.dtype == "O" and not rows:
                columns[c.name] = np.zeros(0, dtype=object)
        return cls(columns)

    def __len__(self) -> int:
        return len(self.columns["ts"])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def iter_dicts(self) -> Iterator[dict[str, Any]]:
        lists = {n: a.tolist() for n, a in self.columns.items()}
        for i in range(len(self)):
            row = {n: lists[n][i] for n in _NAMES}
            row["addr"] = address_text(row["addr"]) if any(row["addr"]) else ""
            row["event"] = PodEventType(row["event"]).name.lower()
            yield row
