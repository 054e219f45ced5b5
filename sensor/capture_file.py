"""Read classic pcap and pcapng files as batches of packets, streaming in bounded chunks.

Only the walk from one record to the next is a Python loop (each record's position depends on the
previous one's length); every per-packet field is then read vectorised from the chunk. Memory holds one
chunk at a time, whatever the file's size.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

import numpy as np

from kubesonar.sensor.packets import PacketBatch
from kubesonar.sensor.record_walk import STOP_CORRUPT, STOP_FULL, STOP_NEED_DATA, STOP_OTHER_BLOCK, walk_pcap, walk_pcapng
from kubesonar.shared.errors import CaptureError

CHUNK_BYTES = 4 << 20
MAX_RECORD_BYTES = 16 << 20  # larger than any snaplen; a bigger length field means corruption

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000),  # microsecond, little-endian
    b"\xa1\xb2\xc3\xd4": (">", 1_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),  # nanosecond
    b"\xa1\xb2\x3c\x4d": (">", 1),
}
_PCAPNG_SHB = 0x0A0D0D0A
_PCAPNG_BOM = 0x1A2B3C4D
_IDB, _OPB, _SPB, _EPB = 1, 2, 3, 6


ProgressFn = Callable[[int], None]


def read_capture(path: str | os.PathLike[str], progress: ProgressFn | None = None) -> Iterator[PacketBatch]:
    """Yield the packets of a pcap or pcapng file; raise CaptureError after the last good batch."""
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise CaptureError(f"cannot open capture {os.fspath(path)!r}: {exc.strerror}") from exc
    with handle:
        magic = handle.read(4)
        handle.seek(0)
        if magic in _PCAP_MAGICS:
            yield from _PcapReader(handle, path, progress).batches()
        elif len(magic) == 4 and struct.unpack("<I", magic)[0] == _PCAPNG_SHB:
            yield from _PcapngReader(handle, path, progress).batches()
        elif not magic:
            raise CaptureError(f"{os.fspath(path)}: empty file, not a capture")
        else:
            raise CaptureError(
                f"{os.fspath(path)}: not a pcap or pcapng file (starts with {magic.hex()})"
            )


class _ChunkedReader:
    """Feeds a record walker chunk by chunk, keeping the unread tail of each chunk."""

    header_bytes = 0

    def __init__(self, handle: BinaryIO, path: str | os.PathLike[str], progress: ProgressFn | None):
        self.handle = handle
        self.name = os.fspath(path)
        self.progress = progress
        self.consumed = 0  # file offset of the first byte of the current chunk
        self._pending_error: CaptureError | None = None  # raised once the packets before it are out

    def _fail(self, what: str, at: int) -> CaptureError:
        return CaptureError(f"{self.name}: {what} at byte {at}; flows up to there were kept")

    def batches(self) -> Iterator[PacketBatch]:
        buf = self.handle.read(CHUNK_BYTES)
        start = self.read_header(buf)
        want = CHUNK_BYTES
        while True:
            batch, start, need = self.walk(buf, start)
            if batch is not None and len(batch):
                yield batch
            if self._pending_error:
                raise self._pending_error
            if self.progress:
                self.progress(self.consumed + start)
            more = self.handle.read(max(want, need))
            if not more:
                if start < len(buf):
                    raise self._fail(
                        f"truncated record ({len(buf) - start} bytes left, record needs more)",
                        self.consumed + start,
                    )
                return
            self.consumed += start
            buf = buf[start:] + more
            start = 0

    def read_header(self, buf: bytes) -> int:
        raise NotImplementedError

    def walk(self, buf: bytes, start: int) -> tuple[PacketBatch | None, int, int]:
        """Parse whole records from ``buf[start:]``; return the batch, where to resume, bytes needed."""
        raise NotImplementedError


def _read_u32(data: np.ndarray, at: np.ndarray, order: str) -> np.ndarray:
    """32-bit fields at arbitrary offsets: one gather through a one-byte-stride view."""
    words = np.ndarray((max(len(data) - 3, 0),), dtype=order + "u4", buffer=data, strides=(1,))
    return words[at].astype(np.int64)


class _PcapReader(_ChunkedReader):
    def read_header(self, buf: bytes) -> int:
        if len(buf) < 24:
            raise self._fail("truncated pcap file header", 0)
        self.order, self.ts_scale = _PCAP_MAGICS[buf[:4]]
        _, _, _, _, snaplen, linktype = struct.unpack_from(self.order + "HHiIII", buf, 4)
        self.linktype = linktype & 0x0FFFFFFF
        self.max_caplen = max(snaplen, 262_144)
        self._offsets = np.empty(CHUNK_BYTES // 16 + 1, dtype=np.int64)
        return 24

    def walk(self, buf: bytes, start: int) -> tuple[PacketBatch | None, int, int]:
        data = np.frombuffer(buf, dtype=np.uint8)
        count, pos, stop = walk_pcap(data, start, self.order == "<", self.max_caplen, self._offsets)
        rec = self._offsets[:count].copy()
        ts_sec, ts_frac, caplen, wirelen = (_read_u32(data, rec + 4 * k, self.order) for k in range(4))
        batch = self._batch(data, rec, ts_sec, ts_frac, caplen, wirelen)
        if stop == STOP_CORRUPT:
            (bad,) = struct.unpack_from(self.order + "I", buf, pos + 8)
            self._pending_error = self._fail(f"corrupt record header (captured length {bad})", self.consumed + pos)
            return batch, len(buf), 0
        need = 0
        if stop == STOP_NEED_DATA and pos + 16 <= len(buf):  # a record whose data is not read yet
            need = 16 + struct.unpack_from(self.order + "I", buf, pos + 8)[0]
        return batch, pos, need

    def _batch(self, data, rec, ts_sec, ts_frac, caplen, wirelen) -> PacketBatch:
        return PacketBatch(
            data=data,
            offset=rec + 16,
            caplen=caplen,
            wirelen=np.maximum(wirelen, caplen),
            ts=ts_sec * 1_000_000_000 + ts_frac * self.ts_scale,
            linktype=np.full(len(rec), self.linktype, dtype=np.int64),
        )


@dataclass
class _Interface:
    linktype: int
    snaplen: int
    ts_units_per_sec: int = 1_000_000  # if_tsresol; default microseconds
    ts_shift: int = -1  # >= 0 when if_tsresol is a power of two: units are 2**-ts_shift s
    ts_offset_s: int = 0


class _PcapngReader(_ChunkedReader):
    def read_header(self, buf: bytes) -> int:
        self.order = "<"
        self.interfaces: list[_Interface] = []
        self._last_ts = 0
        self._offsets = np.empty(CHUNK_BYTES // 32 + 1, dtype=np.int64)
        return 0

    def _section_header(self, buf: bytes, pos: int) -> None:
        if pos + 12 > len(buf):
            raise self._fail("truncated section header", self.consumed + pos)
        bom = buf[pos + 8 : pos + 12]
        if bom == b"\x4d\x3c\x2b\x1a":
            self.order = "<"
        elif bom == b"\x1a\x2b\x3c\x4d":
            self.order = ">"
        else:
            raise self._fail("pcapng section header with an invalid byte-order magic", self.consumed + pos)
        self.interfaces = []

    def _interface(self, buf: bytes, pos: int, length: int) -> None:
        linktype, _, snaplen = struct.unpack_from(self.order + "HHI", buf, pos + 8)
        iface = _Interface(linktype=linktype, snaplen=snaplen)
        opt, end = pos + 16, pos + length - 4
        while opt + 4 <= end:
            code, olen = struct.unpack_from(self.order + "HH", buf, opt)
            value = buf[opt + 4 : opt + 4 + olen]
            if code == 0:
                break
            if code == 9 and olen >= 1:  # if_tsresol
                exp = value[0] & 0x7F
                if value[0] & 0x80:
                    iface.ts_shift, iface.ts_units_per_sec = exp, 1 << exp
                else:
                    iface.ts_units_per_sec = 10**exp
            elif code == 14 and olen == 8:  # if_tsoffset
                iface.ts_offset_s = struct.unpack(self.order + "q", value)[0]
            opt += 4 + ((olen + 3) & ~3)
        self.interfaces.append(iface)

    def walk(self, buf: bytes, start: int) -> tuple[PacketBatch | None, int, int]:
        data = np.frombuffer(buf, dtype=np.uint8)
        end = len(buf)
        pos = start
        epb: list[np.ndarray] = []
        slow: list[tuple[int, int, int, int, int]] = []  # (pos, iface, ts units, caplen, wirelen)
        need = 0
        while True:
            count, pos, stop = walk_pcapng(data, pos, self.order == "<", MAX_RECORD_BYTES, self._offsets)
            if count:
                epb.append(self._offsets[:count].copy())
            if stop == STOP_CORRUPT:
                btype, blen = struct.unpack_from(self.order + "II", buf, pos)
                raise self._fail(f"corrupt pcapng block (type {btype:#x}, length {blen})", self.consumed + pos)
            if stop == STOP_FULL:
                break
            if stop == STOP_NEED_DATA:
                if pos + 12 <= end:
                    need = struct.unpack_from(self.order + "I", buf, pos + 4)[0]
                break
            if stop == STOP_OTHER_BLOCK:
                blen = self._other_block(buf, pos, slow)
                if blen == 0:
                    need = 12 if pos + 12 > end else struct.unpack_from(self.order + "I", buf, pos + 4)[0]
                    break
                pos += blen
        blocks = np.concatenate(epb) if epb else np.zeros(0, dtype=np.int64)
        if slow and len(blocks):  # interleaved block kinds: keep file order with one slow path
            slow += self._epb_tuples(buf, blocks.tolist())
            slow.sort()
            blocks = blocks[:0]
        batch = self._epb_batch(data, blocks) if len(blocks) else self._slow_batch(data, slow)
        return batch, pos, need

    def _other_block(self, buf: bytes, pos: int, slow: list) -> int:
        """Handle a block that is not an EPB; return its length, or 0 when it is not all in ``buf``."""
        if struct.unpack_from("<I", buf, pos)[0] == _PCAPNG_SHB:
            self._section_header(buf, pos)
        btype, blen = struct.unpack_from(self.order + "II", buf, pos)
        if blen < 12 or blen % 4 or blen > MAX_RECORD_BYTES:
            raise self._fail(f"corrupt pcapng block (type {btype:#x}, length {blen})", self.consumed + pos)
        if pos + blen > len(buf):
            return 0
        if struct.unpack_from(self.order + "I", buf, pos + blen - 4)[0] != blen:
            raise self._fail("corrupt pcapng block (trailing length differs)", self.consumed + pos)
        if btype == _IDB:
            self._interface(buf, pos, blen)
        elif btype == _SPB:
            (wirelen,) = struct.unpack_from(self.order + "I", buf, pos + 8)
            snap = self.interfaces[0].snaplen if self.interfaces else 0
            caplen = min(wirelen, blen - 16, snap or wirelen)
            slow.append((pos + 12, 0, -1, caplen, wirelen))
        elif btype == _OPB:
            iface, _, hi, lo, caplen, wirelen = struct.unpack_from(self.order + "HHIIII", buf, pos + 8)
            slow.append((pos + 28, iface, (hi << 32) | lo, caplen, wirelen))
        return blen

    def _epb_tuples(self, buf: bytes, epb: list[int]) -> list[tuple[int, int, int, int, int]]:
        unpack = struct.Struct(self.order + "IIIII").unpack_from
        out = []
        for pos in epb:
            iface, hi, lo, caplen, wirelen = unpack(buf, pos + 8)
            out.append((pos + 28, iface, (hi << 32) | lo, caplen, wirelen))
        return out

    def _epb_batch(self, data: np.ndarray, blocks: np.ndarray) -> PacketBatch:
        iface, hi, lo, caplen, wirelen = (_read_u32(data, blocks + 8 + 4 * k, self.order) for k in range(5))
        self._check_interfaces(iface, blocks)
        units = (hi << 32) | lo
        return self._batch(data, blocks + 28, iface, units, caplen, wirelen, blocks)

    def _slow_batch(self, data: np.ndarray, slow: list[tuple[int, int, int, int, int]]) -> PacketBatch:
        arr = np.asarray(slow, dtype=np.int64).reshape(-1, 5)
        pos, iface, units, caplen, wirelen = arr.T
        self._check_interfaces(iface, pos)
        return self._batch(data, pos, iface, units, caplen, wirelen, pos)

    def _check_interfaces(self, iface: np.ndarray, where: np.ndarray) -> None:
        bad = np.flatnonzero(iface >= len(self.interfaces))
        if len(bad):
            raise self._fail(f"packet names interface {int(iface[bad[0]])}, not declared", self.consumed + int(where[bad[0]]))

    def _batch(self, data, offset, iface, units, caplen, wirelen, blocks) -> PacketBatch:
        ifaces = self.interfaces
        linktype = np.asarray([i.linktype for i in ifaces], dtype=np.int64)[iface] if len(iface) else iface
        ts = np.zeros(len(offset), dtype=np.int64)
        for k, spec in enumerate(ifaces):
            sel = iface == k
            if sel.any():
                ts[sel] = _units_to_ns(units[sel], spec)
        missing = units < 0  # simple packet blocks carry no timestamp: reuse the previous one
        if missing.any():
            idx = np.where(missing, 0, np.arange(len(ts)))
            np.maximum.accumulate(idx, out=idx)
            ts = np.where(missing & (idx == 0) & missing[0], self._last_ts, ts[idx])
        if len(ts):
            self._last_ts = int(ts[-1])
        overflow = np.flatnonzero(offset + caplen > blocks + (self._block_len(data, blocks)))
        if len(overflow):
            raise self._fail("captured length runs past its block", self.consumed + int(blocks[overflow[0]]))
        return PacketBatch(data, offset, caplen, np.maximum(wirelen, caplen), ts, linktype)

    def _block_len(self, data: np.ndarray, blocks: np.ndarray) -> np.ndarray:
        return _read_u32(data, blocks + 4, self.order) - 4


def _units_to_ns(units: np.ndarray, spec: _Interface) -> np.ndarray:
    if spec.ts_shift >= 0:
        sec = units >> spec.ts_shift
        frac = units & ((1 << spec.ts_shift) - 1)
        ns = sec * 1_000_000_000 + ((frac * 1_000_000_000) >> spec.ts_shift)
    elif spec.ts_units_per_sec <= 1_000_000_000:
        ns = units * (1_000_000_000 // spec.ts_units_per_sec)
    else:
        ns = units // (spec.ts_units_per_sec // 1_000_000_000)
    return ns + spec.ts_offset_s * 1_000_000_000
