"""Read classic pcap and pcapng files (or pipes) as batches of packets, streaming in bounded chunks.

Only the walk from one record to the next is a Python loop (each record's position depends on the
previous one's length); every per-packet field is then read vectorised from the chunk. Memory holds one
chunk at a time, whatever the file's size. The input is read strictly forwards, so a pipe, a FIFO or
standard input (``-``) works as well as a file.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import sys
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from kubesonar.sensor.dissect import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
)
from kubesonar.sensor.packets import PacketBatch
from kubesonar.sensor.record_walk import (
    STOP_CORRUPT,
    STOP_FULL,
    STOP_NEED_DATA,
    STOP_OTHER_BLOCK,
    walk_pcap,
    walk_pcapng,
)
from kubesonar.shared.errors import CaptureError

CHUNK_BYTES = 4 << 20
MAX_RECORD_BYTES = 16 << 20  # larger than any snaplen; a bigger length field means corruption
MAX_SNAPLEN = 262_144  # libpcap's MAXIMUM_SNAPLEN: a longer captured length is corruption, not a packet
STDIN = "-"
# 12 and 14 are DLT_RAW on some BSDs
SUPPORTED_LINKTYPES = frozenset({LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LOOP, LINKTYPE_LINUX_SLL,
                                 LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL2, 12, 14})
_MAX_SECONDS = (1 << 63) // 1_000_000_000 - 1  # the last second an int64 of nanoseconds holds (year 2262)

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000),  # microsecond, little-endian
    b"\xa1\xb2\xc3\xd4": (">", 1_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),  # nanosecond
    b"\xa1\xb2\x3c\x4d": (">", 1),
}
_PCAPNG_SHB = 0x0A0D0D0A
_SHB, _IDB, _OPB, _SPB, _EPB = _PCAPNG_SHB, 1, 2, 3, 6
_MIN_BLOCK = {_SHB: 28, _IDB: 20, _OPB: 32, _SPB: 16, _EPB: 32}  # the fixed fields of each block kind
_NO_TIME, _OUT_OF_RANGE = -1, -2  # timestamp units of a simple packet block, of a timestamp past 2**63
_CONTINUE = -1  # walk() result: more whole records are in the buffer (a new section): walk again


ProgressFn = Callable[[int], None]


def read_capture(path: str | os.PathLike[str], progress: ProgressFn | None = None) -> Iterator[PacketBatch]:
    """Yield the packets of a pcap or pcapng file, FIFO or stream (``-`` is standard input); raise
    CaptureError after the last good batch."""
    name = os.fspath(path)
    if name == STDIN:
        yield from _read_stream(sys.stdin.buffer, "<stdin>", progress)
        return
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise CaptureError(f"cannot open capture {name!r}: {exc.strerror}") from exc
    with handle:
        yield from _read_stream(handle, name, progress)


def _read_stream(handle: BinaryIO, name: str, progress: ProgressFn | None) -> Iterator[PacketBatch]:
    try:
        magic = _read_fully(handle, 4)
    except OSError as exc:
        raise CaptureError(f"cannot read capture {name!r}: {_reason(exc)}") from exc
    compression = _compression(magic)
    if compression == "gzip":
        yield from _read_gzip(handle, name, progress, magic)
    elif magic in _PCAP_MAGICS:
        yield from _PcapReader(handle, name, progress, magic).batches()
    elif len(magic) == 4 and struct.unpack("<I", magic)[0] == _PCAPNG_SHB:
        yield from _PcapngReader(handle, name, progress, magic).batches()
    elif not magic:
        raise CaptureError(f"{name}: empty file, not a capture")
    elif compression:
        raise CaptureError(f"{name}: {compression}-compressed; decompress it first "
                           f"({compression} -d, or {compression} -dc FILE | kubesonar flows -)")
    else:
        raise CaptureError(f"{name}: not a pcap or pcapng file (starts with {magic.hex()})")


# a compressed capture is read as it is decompressed, as Wireshark reads it: gzip; zstd, xz, bzip2 and
# lz4 are named in the error (python-zstandard's reader ends a cut stream as if it were whole)
_GZIP_MAGIC = b"\x1f\x8b"
_OTHER_COMPRESSIONS = {b"\x28\xb5\x2f\xfd": "zstd", b"\xfd7zX": "xz", b"BZh": "bzip2", b"\x04\x22\x4d\x18": "lz4"}


def _compression(magic: bytes) -> str | None:
    if magic.startswith(_GZIP_MAGIC):
        return "gzip"
    return next((tool for start, tool in _OTHER_COMPRESSIONS.items() if magic.startswith(start)), None)


def _read_gzip(handle: BinaryIO, name: str, progress: ProgressFn | None, magic: bytes) -> Iterator[PacketBatch]:
    """A gzip-compressed capture (``.pcap.gz``, ``.pcapng.gz``), decompressed as it is read: memory
    holds a chunk at a time, so a compression bomb costs time, never memory. Progress counts
    compressed bytes, as the file's size does."""
    raw = _Prefixed(magic, handle)
    inner = _Prefixed(b"", gzip.GzipFile(fileobj=io.BufferedReader(raw), mode="rb"),
                      faults=(EOFError, zlib.error), piece=_DECOMPRESSED_PIECE)
    try:
        inner_magic = _read_fully(inner, 4)
    except OSError as exc:
        raise CaptureError(f"{name}: gzip-compressed, but not readable: {_reason(exc)}") from exc
    if _compression(inner_magic):
        raise CaptureError(f"{name}: compressed twice (gzip outside); decompress it first")
    compressed_progress = (lambda _decompressed: progress(raw.consumed)) if progress else None
    yield from _read_stream(_Prefixed(inner_magic, inner), name, compressed_progress)


# a decompressor that meets corrupt data drops what that call made: read in pieces, a fault costs at
# most one piece of the records before it
_DECOMPRESSED_PIECE = 64 << 10


class _Prefixed(io.RawIOBase):
    """Bytes already read from a stream (a format's magic), then the rest of it: a pipe cannot seek
    back. ``consumed`` counts the bytes handed out. A decompressor's ``faults`` (a stream cut short,
    corrupt data) are OSErrors, as any other read's; ``piece`` bounds each read."""

    def __init__(self, prefix: bytes, stream: BinaryIO, faults: tuple[type[Exception], ...] = (),
                 piece: int = 0):
        self._prefix, self._stream, self._faults, self.consumed = prefix, stream, faults, 0
        self._read_some = getattr(stream, "readinto1", stream.readinto)
        self._piece = piece

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        if self._piece:
            view = view[: self._piece]
        if self._prefix:
            n = min(len(self._prefix), len(view))
            view[:n], self._prefix = self._prefix[:n], self._prefix[n:]
        else:  # one read at a time: a fault after some bytes leaves those bytes handed out
            try:
                n = self._read_some(view) or 0
            except self._faults as exc:
                raise OSError(_reason(exc)) from exc
        self.consumed += n
        return n


def _reason(exc: BaseException) -> str:
    """What went wrong reading: an OS error's text, or a decompressor's (whose OSError has no strerror)."""
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _read_fully(handle: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes, fewer only at the end: a pipe hands out what it has, a file all of it."""
    parts, got = [], 0
    while got < size:
        part = handle.read(size - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


class _ChunkedReader:
    """Feeds a record walker chunk by chunk, keeping the unread tail of each chunk."""

    def __init__(self, handle: BinaryIO, name: str, progress: ProgressFn | None, prefix: bytes):
        self.handle = handle
        self.name = name
        self.progress = progress
        self.prefix = prefix  # the magic, already read to tell the format
        self.consumed = 0  # file offset of the first byte of the current chunk
        self._pending_error: CaptureError | None = None  # raised once the packets before it are out
        self._read_error: CaptureError | None = None  # raised once the chunk read before it is walked

    def _hand_over(self, error: CaptureError) -> CaptureError:
        """``error``, no longer held by the reader: held, the frames of its traceback (which hold the
        reader, and the caller's flow table) and the error would make a reference cycle, kept in memory
        until the cyclic collector ran; a fuzzing run's peak memory grew past 1 GB so."""
        self._pending_error = self._read_error = None
        return error

    def _fail(self, what: str, at: int) -> CaptureError:
        return CaptureError(f"{self.name}: {what} at byte {at}; flows up to there were kept")

    def _chunk(self, tail: bytes | memoryview, size: int) -> memoryview:
        """A new chunk: ``tail`` (the unread end of the last one), then up to ``size`` bytes read into it
        in place. Each chunk is its own buffer, as the batches walked from it point into it; an
        uninitialised one (numpy's), as every byte used is read into it: zeroing 4 MiB a chunk first
        cost as much as the record walk."""
        chunk = memoryview(np.empty(len(tail) + size, dtype=np.uint8))
        chunk[: len(tail)] = tail
        got = len(tail)
        try:
            while got < len(chunk):
                n = self.handle.readinto(chunk[got:])
                if not n:
                    break
                got += n
        except OSError as exc:  # the bytes read before the fault are walked first; their whole records are kept
            self._read_error = CaptureError(f"{self.name}: read failed ({_reason(exc)}); flows up to there "
                                               "were kept")
        return chunk[:got]  # shorter only at the end of the input

    def batches(self) -> Iterator[PacketBatch]:
        buf = self._chunk(self.prefix, CHUNK_BYTES - len(self.prefix))
        try:
            start = self.read_header(buf)
        except CaptureError:
            if self._read_error:  # the header is cut by the failed read, not by the file
                raise self._hand_over(self._read_error) from None
            raise
        while True:
            batch, start, need = self.walk(buf, start)
            if batch is not None and len(batch):
                yield batch
            if self._pending_error:
                raise self._hand_over(self._pending_error)
            if self.progress:
                self.progress(self.consumed + start)
            if need == _CONTINUE:
                continue
            if self._read_error:
                raise self._hand_over(self._read_error)
            # the chunk goes before the next is made (the caller is done with its batch), so the next
            # takes its memory rather than pages touched for the first time: its unread end is copied out
            tail, batch, buf = bytes(memoryview(buf)[start:]), None, None
            buf = self._chunk(tail, max(CHUNK_BYTES, need))
            if len(buf) == len(tail):  # nothing more to read
                if self._read_error:  # not the end: the read failed before it got a byte
                    raise self._hand_over(self._read_error)
                if tail:
                    raise self._fail(
                        f"truncated record ({len(tail)} bytes left, record needs more)", self.consumed + start)
                self.finish()
                return
            self.consumed += start
            start = 0

    def read_header(self, buf: memoryview) -> int:
        raise NotImplementedError

    def walk(self, buf: memoryview, start: int) -> tuple[PacketBatch | None, int, int]:
        """Parse whole records from ``buf[start:]``; return the batch, where to resume, bytes needed
        (or _CONTINUE when whole records remain)."""
        raise NotImplementedError

    def finish(self) -> None:
        """Called at the clean end of the input."""


def _read_u32(data: np.ndarray, at: np.ndarray, order: str) -> np.ndarray:
    """32-bit fields at arbitrary offsets: one gather through a one-byte-stride view."""
    words = np.ndarray((max(len(data) - 3, 0),), dtype=order + "u4", buffer=data, strides=(1,))
    return words[at].astype(np.int64)


def _read_u32s(data: np.ndarray, at: np.ndarray, count: int, order: str) -> np.ndarray:
    """``count`` consecutive 32-bit fields at each offset, as an (n, count) array: one gather."""
    size = 4 * count
    rows = np.ndarray((max(len(data) - size + 1, 0),), dtype=np.dtype((order + "u4", (count,))), buffer=data,
                      strides=(1,))
    return rows[at].astype(np.int64)


def _unsupported_linktype(name: str, linktype: int) -> CaptureError:
    supported = ", ".join(map(str, sorted(SUPPORTED_LINKTYPES)))
    return CaptureError(f"{name}: link type {linktype} is not supported (supported: {supported})")


class _PcapReader(_ChunkedReader):
    def read_header(self, buf: memoryview) -> int:
        if len(buf) < 24:
            raise self._fail("truncated pcap file header", 0)
        self.order, self.ts_scale = _PCAP_MAGICS[bytes(buf[:4])]
        _, _, _, _, _snaplen, linktype = struct.unpack_from(self.order + "HHiIII", buf, 4)
        self.linktype = linktype & 0x0FFFFFFF
        if self.linktype not in SUPPORTED_LINKTYPES:
            raise _unsupported_linktype(self.name, self.linktype)
        # libpcap caps the header's snaplen at MAXIMUM_SNAPLEN and refuses longer records: a file cannot
        # make us allocate more than that per packet, whatever it claims
        self.max_caplen = MAX_SNAPLEN
        # offset, caplen, wirelen, ts of each record the walk finds (a record is 16 bytes or more)
        self._columns = np.empty((4, CHUNK_BYTES // 16 + 1), dtype=np.int64)
        return 24

    def walk(self, buf: memoryview, start: int) -> tuple[PacketBatch | None, int, int]:
        data = np.frombuffer(buf, dtype=np.uint8)
        count, pos, stop = walk_pcap(data, start, self.order == "<", self.max_caplen, self.ts_scale, *self._columns)
        offset, caplen, wirelen, ts = self._columns[:, :count].copy()  # the next walk writes over them
        batch = PacketBatch(data, offset, caplen, wirelen, ts, np.full(count, self.linktype, dtype=np.int64))
        if stop == STOP_CORRUPT:
            (bad,) = struct.unpack_from(self.order + "I", buf, pos + 8)
            self._pending_error = self._fail(
                f"corrupt record header (captured length {bad}, over the {MAX_SNAPLEN}-byte maximum)",
                self.consumed + pos)
            return batch, len(buf), 0
        if stop == STOP_FULL:
            return batch, pos, _CONTINUE
        need = 0
        if pos + 16 <= len(buf):  # a record whose data is not read yet
            need = 16 + struct.unpack_from(self.order + "I", buf, pos + 8)[0]
        return batch, pos, need


@dataclass
class _Interface:
    linktype: int
    snaplen: int
    ts_decimal: int = 6  # if_tsresol: units are 10**-ts_decimal s (default microseconds) ...
    ts_shift: int = -1  # ... or, when >= 0, 2**-ts_shift s
    ts_offset_s: int = 0


# one slow-path packet: (data offset, interface, timestamp units or -1 for none, caplen, wirelen, block offset)
_Slow = tuple[int, int, int, int, int, int]


class _PcapngReader(_ChunkedReader):
    """pcapng: each section (SHB) has its own byte order and interface table; packets are read with
    the section they belong to."""

    def read_header(self, buf: memoryview) -> int:
        self.order = "<"
        self.interfaces: list[_Interface] = []
        self.unsupported: Counter[int] = Counter()  # link type -> packets skipped
        self._last_ts = 0
        self._offsets = np.empty(CHUNK_BYTES // 32 + 1, dtype=np.int64)
        return 0

    def finish(self) -> None:
        if self.unsupported:
            kinds = ", ".join(f"{n} on link type {lt}" for lt, n in sorted(self.unsupported.items()))
            raise CaptureError(f"{self.name}: packets skipped ({kinds}): link type not supported "
                               f"(supported: {', '.join(map(str, sorted(SUPPORTED_LINKTYPES)))})")

    def _section_header(self, buf: memoryview, pos: int) -> None:
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

    def _interface(self, buf: memoryview, pos: int, length: int) -> None:
        linktype, _, snaplen = struct.unpack_from(self.order + "HHI", buf, pos + 8)
        iface = _Interface(linktype=linktype, snaplen=snaplen)
        opt, end = pos + 16, pos + length - 4
        while opt + 4 <= end:
            code, olen = struct.unpack_from(self.order + "HH", buf, opt)
            if code == 0:
                break
            if opt + 4 + olen > end:
                raise self._fail(f"interface option {code} runs past its block", self.consumed + pos)
            value = buf[opt + 4 : opt + 4 + olen]
            if code == 9 and olen >= 1:  # if_tsresol
                self._resolution(iface, value[0], pos)
            elif code == 14 and olen == 8:  # if_tsoffset, seconds
                offset = struct.unpack(self.order + "q", value)[0]
                if abs(offset) > _MAX_SECONDS:
                    raise self._fail(f"interface time offset {offset} s is out of range", self.consumed + pos)
                iface.ts_offset_s = offset
            opt += 4 + ((olen + 3) & ~3)
        self.interfaces.append(iface)

    def _resolution(self, iface: _Interface, code: int, pos: int) -> None:
        exp = code & 0x7F
        if code & 0x80:
            if exp > 62:  # units of 2**-63 s or finer cannot hold a second in an int64
                raise self._fail(f"interface time resolution 2^-{exp} s is not supported", self.consumed + pos)
            iface.ts_shift = exp
        else:
            if exp > 18:
                raise self._fail(f"interface time resolution 10^-{exp} s is not supported", self.consumed + pos)
            iface.ts_decimal = exp

    def walk(self, buf: memoryview, start: int) -> tuple[PacketBatch | None, int, int]:
        data = np.frombuffer(buf, dtype=np.uint8)
        end = len(buf)
        pos = start
        epb: list[np.ndarray] = []
        slow: list[_Slow] = []
        need = 0
        try:
            pos, need = self._walk_blocks(buf, data, pos, epb, slow)
        except CaptureError as exc:  # the packets before the fault still count
            self._pending_error, pos, need = exc, end, 0
        blocks = np.concatenate(epb) if epb else np.zeros(0, dtype=np.int64)
        if len(blocks):
            self._check_epb_lengths(data, blocks)
        if slow and len(blocks):  # interleaved block kinds: keep file order with one slow path
            slow += self._epb_tuples(buf, blocks.tolist())
            slow.sort()
            blocks = blocks[:0]
        batch = self._epb_batch(data, blocks) if len(blocks) else self._slow_batch(data, slow)
        return batch, pos, need

    def _walk_blocks(self, buf: memoryview, data: np.ndarray, pos: int, epb: list[np.ndarray],
                     slow: list[_Slow]) -> tuple[int, int]:
        """Collect the packet blocks from ``pos`` on; return where to resume and the bytes needed."""
        end = len(buf)
        need = 0
        while True:
            count, pos, stop = walk_pcapng(data, pos, self.order == "<", MAX_RECORD_BYTES, self._offsets)
            if count:
                epb.append(self._offsets[:count].copy())
            if stop == STOP_CORRUPT:
                btype, blen = struct.unpack_from(self.order + "II", buf, pos)
                raise self._fail(f"corrupt pcapng block (type {btype:#x}, length {blen})", self.consumed + pos)
            if stop == STOP_FULL:
                need = _CONTINUE
                break
            if stop == STOP_NEED_DATA:
                if pos + 12 <= end:
                    need = struct.unpack_from(self.order + "I", buf, pos + 4)[0]
                break
            if stop == STOP_OTHER_BLOCK:
                if (epb or slow) and struct.unpack_from("<I", buf, pos)[0] == _PCAPNG_SHB:
                    need = _CONTINUE  # a new section: the packets so far belong to the old one
                    break
                blen = self._other_block(buf, pos, slow)
                if blen == 0:
                    need = 12 if pos + 12 > end else struct.unpack_from(self.order + "I", buf, pos + 4)[0]
                    break
                pos += blen
        return pos, need

    def _other_block(self, buf: memoryview, pos: int, slow: list[_Slow]) -> int:
        """Handle a block that is not an EPB; return its length, or 0 when it is not all in ``buf``."""
        if struct.unpack_from("<I", buf, pos)[0] == _PCAPNG_SHB:
            self._section_header(buf, pos)
        btype, blen = struct.unpack_from(self.order + "II", buf, pos)
        if blen < _MIN_BLOCK.get(btype, 12) or blen % 4 or blen > MAX_RECORD_BYTES:
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
            slow.append((pos + 12, 0, -1, caplen, wirelen, pos))
        elif btype == _OPB:
            iface, _, hi, lo, caplen, wirelen = struct.unpack_from(self.order + "HHIIII", buf, pos + 8)
            if 28 + caplen > blen - 4:
                raise self._fail("captured length runs past its block", self.consumed + pos)
            slow.append((pos + 28, iface, _units(hi, lo), caplen, wirelen, pos))
        return blen

    def _check_epb_lengths(self, data: np.ndarray, blocks: np.ndarray) -> None:
        caplen = _read_u32(data, blocks + 20, self.order)
        block_len = _read_u32(data, blocks + 4, self.order)
        overflow = np.flatnonzero(28 + caplen > block_len - 4)
        if len(overflow):
            raise self._fail("captured length runs past its block", self.consumed + int(blocks[overflow[0]]))

    def _epb_tuples(self, buf: memoryview, epb: list[int]) -> list[_Slow]:
        unpack = struct.Struct(self.order + "IIIII").unpack_from
        out = []
        for pos in epb:
            iface, hi, lo, caplen, wirelen = unpack(buf, pos + 8)
            out.append((pos + 28, iface, _units(hi, lo), caplen, wirelen, pos))
        return out

    def _epb_batch(self, data: np.ndarray, blocks: np.ndarray) -> PacketBatch:
        iface, hi, lo, caplen, wirelen = _read_u32s(data, blocks + 8, 5, self.order).T
        units = np.where(hi >> 31, _OUT_OF_RANGE, (hi << 32) | lo)
        return self._batch(data, blocks + 28, iface, units, caplen, wirelen, blocks)

    def _slow_batch(self, data: np.ndarray, slow: list[_Slow]) -> PacketBatch:
        arr = np.asarray(slow, dtype=np.int64).reshape(-1, 6)
        pos, iface, units, caplen, wirelen, blocks = arr.T
        return self._batch(data, pos, iface, units, caplen, wirelen, blocks)

    def _batch(self, data, offset, iface, units, caplen, wirelen, blocks) -> PacketBatch:
        ifaces = self.interfaces
        bad = np.flatnonzero(iface >= len(ifaces))
        if len(bad):
            raise self._fail(f"packet names interface {int(iface[bad[0]])}, not declared",
                             self.consumed + int(blocks[bad[0]]))
        linktype = np.asarray([i.linktype for i in ifaces], dtype=np.int64)[iface] if len(iface) else iface
        ts = np.zeros(len(offset), dtype=np.int64)
        missing = units == _NO_TIME  # simple packet blocks carry no timestamp: reuse the previous one
        bad = units == _OUT_OF_RANGE
        for k, spec in enumerate(ifaces):
            sel = (iface == k) & ~missing & ~bad
            if sel.any():
                ts[sel], bad[sel] = _units_to_ns(units[sel], spec)
        if bad.any():  # keep the packets before the first one, then stop with the error
            first = int(np.argmax(bad))
            self._pending_error = self._pending_error or self._fail(
                "packet timestamp out of range (before 1970 or after 2262)", self.consumed + int(blocks[first]))
            offset, iface, caplen, wirelen, ts, linktype, missing = (
                a[:first] for a in (offset, iface, caplen, wirelen, ts, linktype, missing))
        if missing.any():
            idx = np.where(missing, 0, np.arange(len(ts)))
            np.maximum.accumulate(idx, out=idx)
            ts = np.where(missing & (idx == 0) & missing[0], self._last_ts, ts[idx])
        if len(ts):
            self._last_ts = int(ts[-1])
        usable = np.isin(linktype, list(SUPPORTED_LINKTYPES))
        if not usable.all():  # an interface of a kind we cannot read: counted, reported at the end
            self.unsupported.update(linktype[~usable].tolist())
            keep = np.flatnonzero(usable)
            offset, caplen, wirelen, ts, linktype = offset[keep], caplen[keep], wirelen[keep], ts[keep], linktype[keep]
        return PacketBatch(data, offset, caplen, np.maximum(wirelen, caplen), ts, linktype)


def _units(hi: int, lo: int) -> int:
    """A block's 64-bit timestamp; bit 63 set is past any time an int64 of nanoseconds holds."""
    return _OUT_OF_RANGE if hi >> 31 else (hi << 32) | lo


def _units_to_ns(units: np.ndarray, spec: _Interface) -> tuple[np.ndarray, np.ndarray]:
    """Nanoseconds since the epoch of timestamps in an interface's units (``units`` >= 0), and where
    the result would not fit an int64 or falls before 1970."""
    if spec.ts_shift >= 0:
        sec = units >> spec.ts_shift
        frac = units & ((1 << spec.ts_shift) - 1)
        drop = max(spec.ts_shift - 32, 0)  # keep frac * 1e9 inside int64
        frac_ns = ((frac >> drop) * 1_000_000_000) >> (spec.ts_shift - drop)
    else:
        per_sec = 10**spec.ts_decimal
        sec, frac = units // per_sec, units % per_sec
        if spec.ts_decimal <= 9:
            frac_ns = frac * 10 ** (9 - spec.ts_decimal)
        else:
            frac_ns = frac // 10 ** (spec.ts_decimal - 9)
    sec = np.minimum(sec, _MAX_SECONDS + 1) + spec.ts_offset_s  # both within +-2**34: no wrap
    out_of_range = (sec < 0) | (sec > _MAX_SECONDS)
    sec = np.where(out_of_range, 0, sec)
    return sec * 1_000_000_000 + frac_ns, out_of_range
