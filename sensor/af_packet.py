"""Live capture on Linux: an AF_PACKET socket with a memory-mapped receive ring.

TPACKET_V3 where the kernel has it (Linux 3.2+): the kernel fills blocks of variable-length packets
and hands a block over when it is full or its timeout passes; a compiled walk
(sensor/ring_kernel.py) gathers the packets of the blocks handed over into one :class:`PacketBatch`
(offsets into the ring, no copy), and the blocks are given back once the batch is accounted. Else
TPACKET_V2: fixed frames, read as strided numpy views and given back with one vectorised store.
Small packets take a V3 ring's room by their size, a V2 ring's by a whole frame each.
"""

from __future__ import annotations

import logging
import mmap
import os
import select
import socket
import struct
from dataclasses import dataclass

import numpy as np

from kubesonar.sensor.bpf import BpfProgram, accept_all, capture_program
from kubesonar.sensor.dissect import LINKTYPE_ETHERNET, LINKTYPE_RAW
from kubesonar.sensor.packets import PacketBatch
from kubesonar.sensor.record_walk import walk_v3_blocks
from kubesonar.sensor.ring_layout import BLOCK_STATUS
from kubesonar.shared.errors import CaptureError, ConfigError

SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_IGNORE_OUTGOING = 23  # Linux 4.20
PACKET_MR_PROMISC = 1
PACKET_FANOUT = 18
PACKET_FANOUT_HASH = 0  # by the kernel's symmetric flow hash: both directions of a flow to one socket
PACKET_FANOUT_FLAG_DEFRAG = 0x8000  # reassemble fragments first, so they hash with their flow
TPACKET_V2, TPACKET_V3 = 1, 2
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
RING_VERSIONS = ("auto", "v3", "v2")
log = logging.getLogger(__name__)


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
    version: str = "auto"  # "v3", falling back to "v2" where the kernel refuses it; or either, forced
    # V3: the kernel hands a block over after this long even if not full. Each block handed over part
    # full is a block less of ring: at 5 ms, 256 blocks held only 1.3 s of a quiet node's traffic, and a
    # window's publishing can stall the loop longer; at 100 ms they hold 25 s (libpcap waits 1 s)
    block_timeout_ms: int = 100

    def __post_init__(self) -> None:
        if self.block_size % self.frame_size or self.frame_count % (self.block_size // self.frame_size):
            raise ConfigError("ring: block size must hold whole frames and the frames whole blocks")
        if self.snaplen + 96 > self.frame_size:
            raise ConfigError(f"ring: a {self.frame_size}-byte frame cannot hold a {self.snaplen}-byte snap")
        if self.version not in RING_VERSIONS:
            raise ConfigError(f"ring version {self.version!r}: choose one of {', '.join(RING_VERSIONS)}")

    @property
    def ring_bytes(self) -> int:
        return self.frame_size * self.frame_count

    @property
    def block_count(self) -> int:
        return self.ring_bytes // self.block_size


@dataclass
class SocketStats:
    packets: int = 0  # seen by the kernel for this socket
    drops: int = 0  # the ring was full: lost
    malformed: int = 0  # V3: packets a block claimed that lay outside it, skipped unread


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
                 programs: dict[int, BpfProgram] | None = None, arrivals_only: bool = False,
                 fanout_group: int | None = None):
        """``programs``: the BPF program for each link type (Ethernet framing or raw IP), compiled once by
        the caller; without one for this interface's type, accept everything up to the snap length.
        ``arrivals_only``: leave out the packets the interface sends. ``fanout_group``: join this
        PACKET_FANOUT group (hash by flow), shared by the sockets of other workers on the interface."""
        self.interface = interface
        self.config = config or RingConfig()
        kind, self.linktype = interface_linktype(interface)
        # loopback shows every packet leaving and arriving: keep the arrival (as libpcap does)
        self.arrivals_only = arrivals_only or _arphrd(interface) == _ARPHRD_LOOPBACK
        self._skip_outgoing = self.arrivals_only
        self.stats = SocketStats()
        self.version = 0  # TPACKET_V3 or TPACKET_V2 once set up
        self._next = 0  # the next frame (V2) or block (V3) the kernel fills, in ring order
        self._pending = np.zeros(0, dtype=np.int64)  # frames or blocks handed out and not yet given back
        try:
            # protocol 0: the socket receives nothing until it is bound to its interface (with ETH_P_ALL)
            self._sock = socket.socket(socket.AF_PACKET, kind, 0)
        except PermissionError:
            raise CaptureError("live capture needs CAP_NET_RAW (run as root or grant the capability)") from None
        try:
            program = (programs or {}).get(self.linktype) or capture_program("", self.linktype == LINKTYPE_RAW,
                                                                              self.config.snaplen)
            self._setup(program, fanout_group)
        except OSError as exc:
            self._sock.close()
            raise CaptureError(f"cannot capture on {interface}: {exc.strerror or exc}") from None

    def _setup(self, program: BpfProgram, fanout_group: int | None) -> None:
        c = self.config
        s = self._sock
        # the filter goes on before the bind, so nothing unfiltered (or longer than snaplen) gets in; a
        # fanout member drops everything until it has joined its group, as a bound socket outside the
        # group would see every packet, the other workers' included
        (accept_all(0) if fanout_group is not None else program).attach(s)
        if c.version != "v2":
            try:
                self._map_v3()
            except OSError as exc:
                if c.version == "v3":
                    raise
                log.info("capture on %s: TPACKET_V3 refused (%s); using a TPACKET_V2 ring", self.interface,
                         exc.strerror or exc)
        if not self.version:
            self._map_v2()
        log.info("capture on %s: TPACKET_V%d ring of %d MiB", self.interface, 3 if self.version == TPACKET_V3 else 2,
                 c.ring_bytes >> 20)
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
        if fanout_group is not None:  # after the bind: a group is joined on one interface
            mode = PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG
            s.setsockopt(SOL_PACKET, PACKET_FANOUT, struct.pack("<I", (fanout_group & 0xFFFF) | (mode << 16)))
            program.attach(s)

    def _map_v3(self) -> None:
        c = self.config
        self._sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        try:
            # struct tpacket_req3: block size and count, frame size and count (unused by V3 but checked),
            # block timeout (ms), private bytes per block, features
            req = struct.pack("<7I", c.block_size, c.block_count, c.frame_size, c.frame_count,
                              c.block_timeout_ms, 0, 0)
            self._sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self._mmap()
        except OSError:
            try:  # back to V2 for the fallback: allowed while no ring is set
                self._sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
            except OSError:
                pass
            raise
        self.version = TPACKET_V3
        self._block_status = np.frombuffer(self._map, dtype="<u4")[BLOCK_STATUS // 4 :: c.block_size // 4]
        # room for a read's packets, and at least a block of the smallest ones (every packet takes more
        # than 64 bytes of a block: header, address, frame), so a read always takes a whole block
        room = max(c.frames_per_read, c.block_size // 64)
        self._out = [np.zeros(room, dtype=np.int64) for _ in range(4)]
        self._blocks = np.zeros(c.block_count, dtype=np.int64)

    def _map_v2(self) -> None:
        c = self.config
        self._sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        req = struct.pack("<4I", c.block_size, c.block_count, c.frame_size, c.frame_count)
        self._sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        self._mmap()
        self.version = TPACKET_V2
        # each header field of every frame as one strided view (frames are contiguous: blocks hold whole frames)
        words = np.frombuffer(self._map, dtype="<u4")
        step = c.frame_size // 4
        self._status, self._len = words[_STATUS // 4 :: step], words[_LEN // 4 :: step]
        self._snap = words[_SNAPLEN // 4 :: step]
        self._sec, self._nsec = words[_SEC // 4 :: step], words[_NSEC // 4 :: step]
        self._mac = np.frombuffer(self._map, dtype="<u2")[_MAC // 2 :: c.frame_size // 2]
        self._pkttype = self.ring[_PKTTYPE :: c.frame_size]

    def _mmap(self) -> None:
        self._map = mmap.mmap(self._sock.fileno(), self.config.ring_bytes, mmap.MAP_SHARED,
                              mmap.PROT_READ | mmap.PROT_WRITE)
        self.ring = np.frombuffer(self._map, dtype=np.uint8)

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self) -> PacketBatch | None:
        """The packets the kernel has handed over since the last read (about ``frames_per_read`` at
        most), as one batch pointing into the ring; None if there are none. Call :meth:`release` once
        accounted."""
        self.release()
        return self._read_v3() if self.version == TPACKET_V3 else self._read_v2()

    def _read_v3(self) -> PacketBatch | None:
        c = self.config
        offset, caplen, wirelen, ts = self._out
        # whole blocks, as many as the arrays hold: at most frames_per_read packets
        n, taken, bad = walk_v3_blocks(self.ring, c.block_size, self._next, self._skip_outgoing, offset, caplen,
                                       wirelen, ts, self._blocks)
        if not taken:
            return None
        self.stats.malformed += bad
        self._pending = self._blocks[:taken].copy()
        self._next = (self._next + taken) % c.block_count
        if not n:
            return None
        return PacketBatch(data=self.ring, offset=offset[:n].copy(), caplen=caplen[:n].copy(),
                           wirelen=wirelen[:n].copy(), ts=ts[:n].copy(), linktype=np.full(n, self.linktype))

    def _read_v2(self) -> PacketBatch | None:
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
        """Give the frames (V2) or blocks (V3) of the last batch back to the kernel."""
        if len(self._pending):
            status = self._block_status if self.version == TPACKET_V3 else self._status
            status[self._pending] = TP_STATUS_KERNEL
            self._pending = self._pending[:0]

    def read_stats(self) -> SocketStats:
        """Add the kernel's counters since the last call (reading resets them) and return the totals."""
        # struct tpacket_stats (V2) and the head of struct tpacket_stats_v3 (V3): packets, drops
        raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12 if self.version == TPACKET_V3 else 8)
        packets, drops = struct.unpack_from("<II", raw)
        self.stats.packets += packets
        self.stats.drops += drops
        return self.stats

    def close(self) -> None:
        if self.version:
            self.release()
        self.ring = self._status = self._len = self._snap = self._sec = self._nsec = self._mac = self._pkttype = None
        self._block_status = None
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
