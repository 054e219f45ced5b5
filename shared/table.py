"""Side tables a batch carries next to its flows (pod events, DNS messages): equal-length numpy columns
with a fixed schema, built from rows by the sensor and read back as dicts by reports."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np

from kubesonar.shared.flow import Column, address_text, checked_columns


class Table:
    """Columns of one schema (:attr:`COLUMNS`); subclasses name it (:attr:`NAME`, the table's wire name)."""

    NAME: ClassVar[str]
    COLUMNS: ClassVar[tuple[Column, ...]]
    __slots__ = ("columns",)

    def __init__(self, columns: dict[str, np.ndarray]):
        dtypes = {c.name: np.dtype(c.dtype) for c in self.COLUMNS}
        self.columns = checked_columns(columns, dtypes, f"{self.NAME} row")

    @classmethod
    def empty(cls):
        return cls({c.name: np.zeros(0, dtype=c.dtype) for c in cls.COLUMNS})

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]]):
        """Rows with the column names as keys (addresses as 16 bytes); a missing value is '' or 0."""
        columns = {}
        for c in cls.COLUMNS:
            values = [row.get(c.name, "" if c.dtype == "O" else 0) for row in rows]
            if c.dtype == "V16":
                values = [bytes(v) if v else bytes(16) for v in values]
            if c.dtype == "O":
                columns[c.name] = np.empty(len(values), dtype=object)
                columns[c.name][:] = values
            else:
                columns[c.name] = np.array(values, dtype=c.dtype).reshape(len(values))
        return cls(columns)

    @classmethod
    def concat(cls, tables: list):
        tables = [t for t in tables if len(t)]
        if not tables:
            return cls.empty()
        return cls({c.name: np.concatenate([t.columns[c.name] for t in tables]) for c in cls.COLUMNS})

    def take(self, rows):
        return type(self)({n: a[rows] for n, a in self.columns.items()})

    def __len__(self) -> int:
        return len(self.columns[self.COLUMNS[0].name])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def iter_dicts(self) -> Iterator[dict[str, Any]]:
        lists = {n: a.tolist() for n, a in self.columns.items()}
        addresses = [c.name for c in self.COLUMNS if c.dtype == "V16"]
        for i in range(len(self)):
            row = {n: lists[n][i] for n in lists}
            for name in addresses:
                row[name] = address_text(row[name]) if any(row[name]) else ""
            yield row
