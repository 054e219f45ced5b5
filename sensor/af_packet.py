"""Live capture on Linux: an AF_PACKET socket with a memory-mapped TPACKET_V3 receive ring.

The kernel fills whole blocks of packets in memory shared with us; we hand every block it has
retired to the flow engine as one :class:`PacketBatch` (offsets into the ring, no copy) and give the
blocks back. A block is retired when full or after ``retire_ms``, so a quiet link still flushes.
Only the hop from one packet header to the next is sequential; numba compiles it (see record_walk).
"""

from __future__ import annotations

import mmap
import os
import select
import socket
import struct
from dataclasses import dataclass

import numpy as np

from kubesonar.sensor.bpf import BpfProgram, accept_all
from kubesonar.sensor.capture_file import PacketBatch
from kubesonar.sensor.dissect import LINKTYPE_ETHERNET, LINKTYPE_RAW
from kubesonar.sensor.record_walk import njit
from kubesonar.shared.errors import CaptureError

SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_MR_PROMISC = 1
TPACKET_V3 = 2
ETH_P_ALL = 0x0003
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
_ARPHRD_ETHER, _ARPHRD_LOOPBACK = 1, 772

_SLL_PKTTYPE = 48 + 10  # TPACKET_ALIGN(sizeof(tpacket3_hdr)) + offsetof(sockaddr_ll, sll_pkttype)
_PACKET_OUTGOING = 4
_BLOCK_STATUS = struct.Struct("<I")  # tpacket_block_desc.hdr.bh1.block_status, at offset 8
_BLOCK_HEAD = struct.Struct("<III")  # block_status, num_pkts, offset_to_first_pkt


@dataclass(frozen=True)
class RingConfig:
    block_size: int = 1 << 20  # bytes per block; a multiple of the page size
    block_count: int = 32  # the ring holds block_size * block_count bytes
    retire_ms: int = 100  # hand over a block this long after its first packet, full or not
    snaplen: int = 256  # bytes kept of each packet: headers, tunnels, never payload beyond them


@dataclass
class SocketStats:
    packets: int = 0  # seen by the kernel for this socket
    drops: int = 0  # the ring was full: lost
    freezes: int = 0


@njit(cache=True, nogil=True)
def _walk_block(ring: np.ndarray, block: int, count: int, first: int, out: np.ndarray) -> int:
    """Fill out[i] = (offset of frame, captured length, wire length, seconds, nanoseconds, packet type)."""
    pos = block + first
    n = 0
    for _ in range(count):
        if n == len(out) or pos + 28 > len(ring):
            break
        nxt = np.int64(ring[pos]) | (np.int64(ring[pos + 1]) << 8) | (np.int64(ring[pos + 2]) << 16) | (np.int64(ring[pos + 3]) << 24)
        sec = np.int64(ring[pos + 4]) | (np.int64(ring[pos + 5]) << 8) | (np.int64(ring[pos + 6]) << 16) | (np.int64(ring[pos + 7]) << 24)
        nsec = np.int64(ring[pos + 8]) | (np.int64(ring[pos + 9]) << 8) | (np.int64(ring[pos + 10]) << 16) | (np.int64(ring[pos + 11]) << 24)
        snap = np.int64(ring[pos + 12]) | (np.int64(ring[pos + 13]) << 8) | (np.int64(ring[pos + 14]) << 16) | (np.int64(ring[pos + 15]) << 24)
        wire = np.int64(ring[pos + 16]) | (np.int64(ring[pos + 17]) << 8) | (np.int64(ring[pos + 18]) << 16) | (np.int64(ring[pos + 19]) << 24)
        mac = np.int64(ring[pos + 24]) | (np.int64(ring[pos + 25]) << 8)
        out[n, 0] = pos + mac
        out[n, 1] = snap
        out[n, 2] = wire
        out[n, 3] = sec
        out[n, 4] = nsec
        out[n, 5] = ring[pos + _SLL_PKTTYPE]  # sockaddr_ll follows the header
        n += 1
        if nxt == 0:
            break
        pos += nxt
    return n


def _arphrd(name: str) -> int:
    try:
        with open(f"/sys/class/net/{name}/type") as f:
            return int(f.read())
    except OSError:
        raise CaptureError(f"no network interface named {name!r} (see 'ip link')") from None


def interface_linktype(name: str) -> tuple[int, int]:
    """(socket type, LINKTYPE_*) for an interface: Ethernet framing where it has one, else raw IP."""
    arphrd = _arphrd(name)
    if arphrd in (_ARPHRD_ETHER, _ARPHRD_LOOPBACK):
        return socket.SOCK_RAW, LINKTYPE_ETHERNET
    return socket.SOCK_DGRAM, LINKTYPE_RAW  # tun, WireGuard, IP-in-IP: the kernel gives the IP packet


class RingSocket:
    """One interface's capture socket and ring. ``read()`` returns what the kernel has retired."""

    def __init__(self, interface: str, config: RingConfig | None = None, program: BpfProgram | None = None):
        self.interface = interface
        self.config = config or RingConfig()
        kind, self.linktype = interface_linktype(interface)
        # loopback shows every packet twice, leaving and arriving: keep the arrival (as libpcap does)
        self._skip_outgoing = _arphrd(interface) == _ARPHRD_LOOPBACK
        self.stats = SocketStats()
        self._block = 0
        self._pending: list[int] = []  # blocks handed out and not yet given back
        try:
            self._sock = socket.socket(socket.AF_PACKET, kind, socket.htons(ETH_P_ALL))
        except PermissionError:
            raise CaptureError("live capture needs CAP_NET_RAW (run as root or grant the capability)") from None
        try:
            self._setup(program or accept_all(self.config.snaplen))
        except OSError as exc:
            self._sock.close()
            raise CaptureError(f"cannot capture on {interface}: {exc.strerror or exc}") from None

    def _setup(self, program: BpfProgram) -> None:
        c = self.config
        s = self._sock
        s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        # the filter goes on before the bind, so nothing unfiltered (or longer than snaplen) gets in
        program.attach(s)
        req = struct.pack("<7I", c.block_size, c.block_count, 2048, c.block_size * c.block_count // 2048,
                          c.retire_ms, 0, 0)
        s.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        self._map = mmap.mmap(s.fileno(), c.block_size * c.block_count, mmap.MAP_SHARED,
                              mmap.PROT_READ | mmap.PROT_WRITE)
        self.ring = np.frombuffer(self._map, dtype=np.uint8)
        s.bind((self.interface, ETH_P_ALL))
        index = socket.if_nametoindex(self.interface)
        # promiscuous for this socket only (undone when it closes): a bridge passes us forwarded frames
        s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, struct.pack("<iHH8s", index, PACKET_MR_PROMISC, 0, b""))
        self._out = np.zeros((c.block_size // 32, 6), dtype=np.int64)

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self) -> PacketBatch | None:
        """Every block the kernel has retired, as one batch pointing into the ring; None if there are none.
        Call :meth:`release` once the batch has been accounted."""
        self.release()
        c = self.config
        parts = []
        for _ in range(c.block_count):
            base = self._block * c.block_size
            status, count, first = _BLOCK_HEAD.unpack_from(self._map, base + 8)
            if not status & TP_STATUS_USER:
                break
            n = _walk_block(self.ring, base, count, first, self._out)
            parts.append(self._out[:n].copy())
            self._pending.append(base)
            self._block = (self._block + 1) % c.block_count
        if not parts:
            return None
        frames = np.concatenate(parts)
        if self._skip_outgoing:
            frames = frames[frames[:, 5] != _PACKET_OUTGOING]
        return PacketBatch(
            data=self.ring, offset=frames[:, 0], caplen=frames[:, 1], wirelen=frames[:, 2],
            ts=frames[:, 3] * 1_000_000_000 + frames[:, 4], linktype=np.full(len(frames), self.linktype),
        )

    def release(self) -> None:
        for base in self._pending:
            _BLOCK_STATUS.pack_into(self._map, base + 8, TP_STATUS_KERNEL)
        self._pending.clear()

    def read_stats(self) -> SocketStats:
        """Add the kernel's counters since the last call (reading resets them) and return the totals."""
        packets, drops, freezes = struct.unpack("<III", self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12))
        self.stats.packets += packets
        self.stats.drops += drops
        self.stats.freezes += freezes
        return self.stats

    def close(self) -> None:
        self.release()
        self.ring = None  # drop the numpy view before the map it points into
        try:
            self._map.close()
        except (BufferError, AttributeError):
            pass
        self._sock.close()


def wait_readable(sockets: list[RingSocket], timeout_s: float) -> list[RingSocket]:
    """The sockets with retired blocks, waiting at most ``timeout_s``."""
    if not sockets:
        return []
    poller = select.poll()
    by_fd = {s.fileno(): s for s in sockets}
    for fd in by_fd:
        poller.register(fd, select.POLLIN | select.POLLERR)
    try:
        ready = poller.poll(max(0, int(timeout_s * 1000)))
    except InterruptedError:  # pragma: no cover - a signal: let the caller look at its clock
        return []
    return [by_fd[fd] for fd, _ in ready]


def list_interfaces() -> list[str]:
    return sorted(os.listdir("/sys/class/net"))
