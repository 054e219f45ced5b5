"""A batch of raw packets, whichever way they were captured (a file chunk or a live ring)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PacketBatch:
    """Packets of one chunk: ``data[offset[i]:offset[i] + caplen[i]]`` is packet i."""

    data: np.ndarray  # uint8
    offset: np.ndarray  # int64
    caplen: np.ndarray  # int64, bytes captured
    wirelen: np.ndarray  # int64, bytes on the wire
    ts: np.ndarray  # int64 ns since the epoch
    linktype: np.ndarray  # int64 LINKTYPE_* per packet

    def __len__(self) -> int:
        return len(self.offset)
