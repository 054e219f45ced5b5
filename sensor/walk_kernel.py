"""The record walk, compiled: hopping from each record of a capture chunk to the next.

Each record's position depends on the previous record's length, so this cannot be vectorised; it is
compiled with numba when numba is installed (a few ns a record) and runs as plain Python otherwise.
A classic pcap record's header is read in the same pass; pcapng blocks are read vectorised after it.
"""

from __future__ import annotations

import numpy as np

from kubesonar.sensor.jit import njit
from kubesonar.sensor.walk_codes import STOP_CORRUPT, STOP_FULL, STOP_NEED_DATA, STOP_OTHER_BLOCK


@njit(cache=True, nogil=True, inline="always")
def _u32(buf: np.ndarray, at: int, little: bool) -> int:
    i = np.uint64(at)  # unsigned: numba checks a signed index for counting from the end at every read
    b0, b1, b2, b3 = (np.int64(buf[i]), np.int64(buf[i + np.uint64(1)]), np.int64(buf[i + np.uint64(2)]),
                      np.int64(buf[i + np.uint64(3)]))
    if little:
        return b0 | (b1 << 8) | (b2 << 16) | (b3 << 24)
    return b3 | (b2 << 8) | (b1 << 16) | (b0 << 24)


@njit(cache=True, nogil=True)
def walk_pcap(buf: np.ndarray, pos: int, little: bool, max_caplen: int, ts_scale: int, offset: np.ndarray,
              caplen: np.ndarray, wirelen: np.ndarray, ts: np.ndarray) -> tuple[int, int, int]:
    """The packets of a classic pcap chunk: each one's data offset, captured and wire length (at least
    the captured one) and time in ns (``ts_scale`` ns a unit of the fraction) into the output arrays;
    return (count, stop position, stop reason)."""
    end = len(buf)
    n = 0
    while pos + 16 <= end:
        if n == len(offset):
            return n, pos, STOP_FULL
        cap = _u32(buf, pos + 8, little)
        if cap > max_caplen:
            return n, pos, STOP_CORRUPT
        if pos + 16 + cap > end:
            break
        offset[n] = pos + 16
        caplen[n] = cap
        wirelen[n] = max(_u32(buf, pos + 12, little), cap)
        ts[n] = _u32(buf, pos, little) * 1_000_000_000 + _u32(buf, pos + 4, little) * ts_scale
        n += 1
        pos += 16 + cap
    return n, pos, STOP_NEED_DATA


@njit(cache=True, nogil=True)
def walk_pcapng(buf: np.ndarray, pos: int, little: bool, max_block: int, out: np.ndarray) -> tuple[int, int, int]:
    """Offsets of consecutive enhanced packet blocks; stops at any other block for Python to handle."""
    end = len(buf)
    n = 0
    while pos + 12 <= end:
        if n == len(out):
            return n, pos, STOP_FULL
        block_type = _u32(buf, pos, little)
        if block_type == 0x0A0D0D0A:  # a new section may switch byte order: Python reads it
            return n, pos, STOP_OTHER_BLOCK
        length = _u32(buf, pos + 4, little)
        if length < 12 or length % 4 != 0 or length > max_block:
            return n, pos, STOP_CORRUPT
        if pos + length > end:
            break
        if block_type != 6:
            return n, pos, STOP_OTHER_BLOCK
        if _u32(buf, pos + length - 4, little) != length or length < 32:
            return n, pos, STOP_CORRUPT
        out[n] = pos
        n += 1
        pos += length
    return n, pos, STOP_NEED_DATA
