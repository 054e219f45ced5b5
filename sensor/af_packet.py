"""Live capture on Linux: an AF_PACKET socket with a memory-mapped TPACKET_V2 receive ring.

The kernel writes each packet (cut to ``snaplen`` by the socket's BPF program) into the next
fixed-size frame of a ring in memory shared with us and flags it as ours. Fixed frames make the ring
an array: the frames ready for us are read as strided numpy views, handed to the flow engine as one
:class:`PacketBatch` (offsets into the ring, no copy) and given back with one vectorised store. No
per-packet Python, and no JIT (TPACKET_V3's variable-length blocks would need one to walk), which
keeps the sensor's memory down.
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
from kubesonar.sensor.dissect import LINKTYPE_ETHERNET, LINKTYPE_RAW
from kubesonar.sensor.packets import PacketBatch
from kubesonar.shared.errors import CaptureError, ConfigError

SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_IGNORE_OUTGOING = 23  # Linux 4.20
PACKET_MR_PROMISC = 1
TPACKET_V2 = 1
ETH_P_ALL = 0x0003
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
_ARPHRD_ETHER, _ARPHRD_LOOPBACK = 1, 772
_PACKET_OUTGOING = 4
# struct tpacket2_hdr: status u32 @0, len u32 @4, snaplen u32 @8, mac u16 @12, net u16 @14, sec u32 @16,
# nsec u32 @20; struct sockaddr_ll follows at 32, its sll_pkttype at 32 + 10
_STATUS, _LEN, _SNAPLEN, _SEC, _NSEC = 0, 4, 8, 16, 20
_FIRST_LOOK = 512  # frames a read looks at first: a gathered read holds a few hundred at moderate rates
_MAC, _PKTTYPE = 12, 42


@dataclass(frozen=True)
class RingConfig:
    frame_size: int = 1024  # bytes per slot: header, address, and snaplen bytes of packet
    frame_count: int = 32_768  # slots; the ring takes frame_size * frame_count bytes (32 MiB)
    block_size: int = 128 << 10  # the kernel allocates the ring in blocks of this many bytes
    snaplen: int = 928  # bytes kept of each packet: headers, tunnels, and the first payload bytes the
    # DNS, JSON-RPC, ClientHello and ICMP readers use (sensor/app_layer.py); nothing else reads payload.
    # A TLS ClientHello is 140-701 bytes of frame in the shared captures; 400 bytes held 21 of 697.
    frames_per_read: int = 8_192  # hand over at most this many at once: bounds the engine's working memory
    gather_s: float = 0.005  # pause after draining the rings: 5 ms of a 1 M packets/s flood is 5,000 frames

    def __post_init__(self) -> None:
        if self.block_size % self.frame_size or self.frame_count % (self.block_size // self.frame_size):
            raise ConfigError("ring: block size must hold whole frames and the frames whole blocks")
        if self.snaplen + 96 > self.frame_size:
            raise ConfigError(f"ring: a {self.frame_size}-byte frame cannot hold a {self.snaplen}-byte snap")


@dataclass
class SocketStats:
    packets: int = 0  # seen by the kernel for this socket
    drops: int = 0  # the ring was full: lost


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
    """One interface's capture socket and ring. ``read()`` returns the packets the kernel has written."""

    def __init__(self, interface: str, config: RingConfig | None = None,
                 programs: dict[int, BpfProgram] | None = None, arrivals_only: bool = False):
        """``programs``: the BPF program for each link type (Ethernet framing or raw IP), compiled once by
        the caller; without one for this interface's type, accept everything up to the snap length.
        ``arrivals_only``: leave out the packets the interface sends."""
        self.interface = interface
        self.config = config or RingConfig()
        kind, self.linktype = interface_linktype(interface)
        # loopback shows every packet leaving and arriving: keep the arrival (as libpcap does)
        self.arrivals_only = arrivals_only or _arphrd(interface) == _ARPHRD_LOOPBACK
        self._skip_outgoing = self.arrivals_only
        self.stats = SocketStats()
        self._next = 0  # the next frame the kernel fills, in ring order
        self._pending = np.zeros(0, dtype=np.int64)  # frames handed out and not yet given back
        try:
            self._sock = socket.socket(socket.AF_PACKET, kind, socket.htons(ETH_P_ALL))
        except PermissionError:
            raise CaptureError("live capture needs CAP_NET_RAW (run as root or grant the capability)") from None
        try:
            self._setup((programs or {}).get(self.linktype) or accept_all(self.config.snaplen))
        except OSError as exc:
            self._sock.close()
            raise CaptureError(f"cannot capture on {interface}: {exc.strerror or exc}") from None

    def _setup(self, program: BpfProgram) -> None:
        c = self.config
        s = self._sock
        s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        # the filter goes on before the bind, so nothing unfiltered (or longer than snaplen) gets in
        program.attach(s)
        req = struct.pack("<4I", c.block_size, c.frame_count * c.frame_size // c.block_size, c.frame_size,
                          c.frame_count)
        s.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        self._map = mmap.mmap(s.fileno(), c.frame_size * c.frame_count, mmap.MAP_SHARED,
                              mmap.PROT_READ | mmap.PROT_WRITE)
        self.ring = np.frombuffer(self._map, dtype=np.uint8)
        # each header field of every frame as one strided view (frames are contiguous: blocks hold whole frames)
        words = np.frombuffer(self._map, dtype="<u4")
        step = c.frame_size // 4
        self._status, self._len = words[_STATUS // 4 :: step], words[_LEN // 4 :: step]
        self._snap = words[_SNAPLEN // 4 :: step]
        self._sec, self._nsec = words[_SEC // 4 :: step], words[_NSEC // 4 :: step]
        self._mac = np.frombuffer(self._map, dtype="<u2")[_MAC // 2 :: c.frame_size // 2]
        self._pkttype = self.ring[_PKTTYPE :: c.frame_size]
        if self.arrivals_only:
            try:  # the kernel then never writes them to the ring; read() filters where it cannot
                s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
                self._skip_outgoing = False
            except OSError:
                pass
        s.bind((self.interface, ETH_P_ALL))
        index = socket.if_nametoindex(self.interface)
        # promiscuous for this socket only (undone when it closes): a bridge passes us forwarded frames
        s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, struct.pack("<iHH8s", index, PACKET_MR_PROMISC, 0, b""))

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self) -> PacketBatch | None:
        """The frames the kernel has filled since the last read (at most ``frames_per_read``), as one
        batch pointing into the ring; None if there are none. Call :meth:`release` once accounted."""
        self.release()
        c = self.config
        frames = self._filled(min(_FIRST_LOOK, c.frames_per_read))
        if len(frames) == _FIRST_LOOK < c.frames_per_read:  # a busy ring: look further
            frames = self._filled(c.frames_per_read)
        if not len(frames):
            return None
        self._next = int(frames[-1] + 1) % c.frame_count
        self._pending = frames
        if self._skip_outgoing:
            frames = frames[self._pkttype[frames] != _PACKET_OUTGOING]
        return PacketBatch(
            data=self.ring, offset=frames * c.frame_size + self._mac[frames],
            caplen=self._snap[frames].astype(np.int64),
            wirelen=self._len[frames].astype(np.int64),
            ts=self._sec[frames].astype(np.int64) * 1_000_000_000 + self._nsec[frames],
            linktype=np.full(len(frames), self.linktype),
        )

    def _filled(self, most: int) -> np.ndarray:
        """The run of frames the kernel has filled from the next one on, in ring order, at most ``most``."""
        frames = (self._next + np.arange(most)) % self.config.frame_count
        ours = (self._status[frames] & TP_STATUS_USER) != 0
        return frames[: int(np.argmin(ours)) if not ours.all() else most]

    def release(self) -> None:
        """Give the frames of the last batch back to the kernel."""
        if len(self._pending):
            self._status[self._pending] = TP_STATUS_KERNEL
            self._pending = self._pending[:0]

    def read_stats(self) -> SocketStats:
        """Add the kernel's counters since the last call (reading resets them) and return the totals."""
        packets, drops = struct.unpack("<II", self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        self.stats.packets += packets
        self.stats.drops += drops
        return self.stats

    def close(self) -> None:
        self.release()
        self.ring = self._status = self._len = self._snap = self._sec = self._nsec = self._mac = self._pkttype = None
        try:
            self._map.close()
        except (BufferError, AttributeError):
            pass  # a batch still points into it; the map goes when that does
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
