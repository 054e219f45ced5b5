"""The TPACKET_V3 block walk, compiled: the packets of the blocks the kernel has handed over.

A V3 ring is a circle of fixed-size blocks, each holding a variable number of variable-length
packets chained by ``tp_next_offset``; finding packet i needs packet i - 1, so the walk cannot be
vectorised. It gathers each packet's position, lengths and time into the arrays the dissection
takes, and never trusts the ring: an offset or length that leaves its block ends the walk of that
block and its remaining packets are counted as malformed, never read.
"""

from __future__ import annotations

import numpy as np

from kubesonar.sensor.jit import njit
from kubesonar.sensor.ring_layout import (
    BLOCK_FIRST_PKT,
    BLOCK_HEADER,
    BLOCK_LEN,
    BLOCK_NUM_PKTS,
    BLOCK_STATUS,
    PACKET_OUTGOING,
    PKT_HEADER,
    PKT_LEN,
    PKT_MAC,
    PKT_NEXT,
    PKT_NSEC,
    PKT_SEC,
    PKT_SNAPLEN,
    PKT_TYPE,
    TP_STATUS_USER,
)


@njit(cache=True, nogil=True, inline="always")
def _u32(buf: np.ndarray, at: int) -> int:
    return (np.int64(buf[at]) | (np.int64(buf[at + 1]) << 8) | (np.int64(buf[at + 2]) << 16)
            | (np.int64(buf[at + 3]) << 24))


@njit(cache=True, nogil=True)
def walk_v3_blocks(ring: np.ndarray, block_size: int, first: int, skip_outgoing: bool, offset: np.ndarray,
                caplen: np.ndarray, wirelen: np.ndarray, ts: np.ndarray, blocks: np.ndarray) -> tuple[int, int, int]:
    """Walk the blocks flagged ours from block ``first`` on, in ring order, writing each packet's data
    offset (into ``ring``), captured and wire length and time (ns) to the output arrays and each block
    walked to ``blocks``; return (packets, blocks, malformed packets). Stops at the first block still
    the kernel's, when ``blocks`` is full, or before a block whose packets would not fit (unless it is
    the first: then the packets past the arrays' room are counted malformed)."""
    count = len(ring) // block_size
    room = len(offset)
    n = 0
    taken = 0
    bad = 0
    block = first
    while taken < len(blocks) and taken < count:
        base = block * block_size
        if (_u32(ring, base + BLOCK_STATUS) & TP_STATUS_USER) == 0:
            break
        packets = _u32(ring, base + BLOCK_NUM_PKTS)
        if n > 0 and n + packets > room:
            break
        blocks[taken] = block
        taken += 1
        end = _u32(ring, base + BLOCK_LEN)  # bytes the kernel used in the block, header included
        if end < BLOCK_HEADER or end > block_size:
            end = block_size
        pos = _u32(ring, base + BLOCK_FIRST_PKT)
        for i in range(packets):
            if pos < BLOCK_HEADER or pos + PKT_HEADER > end:
                bad += packets - i
                break
            at = base + pos
            mac = np.int64(ring[at + PKT_MAC]) | (np.int64(ring[at + PKT_MAC + 1]) << 8)
            snap = _u32(ring, at + PKT_SNAPLEN)
            if mac < PKT_HEADER or pos + mac + snap > end or n == room:
                bad += packets - i
                break
            if not (skip_outgoing and ring[at + PKT_TYPE] == PACKET_OUTGOING):
                offset[n] = at + mac
                caplen[n] = snap
                wirelen[n] = _u32(ring, at + PKT_LEN)
                ts[n] = _u32(ring, at + PKT_SEC) * 1_000_000_000 + _u32(ring, at + PKT_NSEC)
                n += 1
            step = _u32(ring, at + PKT_NEXT)
            if step == 0 and i + 1 < packets:  # the chain ends before the count does
                bad += packets - i - 1
                break
            pos += step
        block = (block + 1) % count
    return n, taken, bad
