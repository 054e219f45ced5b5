"""The TPACKET_V3 block walk (sensor/ring_kernel.py) on block memory built by hand as the kernel lays it
out: packets in ring order, outgoing ones skipped on request, and a ring whose offsets and lengths lie
(a kernel bug, memory scribbled on) counted and skipped, never read out of bounds."""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kubesonar.sensor.record_walk import walk_v3_blocks
from kubesonar.sensor.ring_layout import BLOCK_HEADER, PACKET_OUTGOING

BLOCK = 4096
_HDR = 48 + 20  # tpacket3_hdr, sockaddr_ll
_MAC = 80  # where the kernel puts the frame: after the headers, aligned


def _block(packets: list[tuple[bytes, int, int]], status: int = 1) -> bytearray:
    """One block: ``packets`` as (frame, wire length, packet type), each at a 16-byte aligned slot."""
    block = bytearray(BLOCK)
    pos = BLOCK_HEADER
    for i, (frame, wirelen, pkttype) in enumerate(packets):
        step = (_MAC + len(frame) + 15) // 16 * 16
        nxt = step if i + 1 < len(packets) else 0
        struct.pack_into("<6IH", block, pos, nxt, 1_700_000_000 + i, 1000 * i, len(frame), wirelen, 1, _MAC)
        block[pos + 58] = pkttype
        block[pos + _MAC : pos + _MAC + len(frame)] = frame
        pos += step
    struct.pack_into("<4I", block, 8, status, len(packets), BLOCK_HEADER, pos)
    return block


def _walk(ring: bytearray, first: int = 0, skip_outgoing: bool = False, room: int = 64):
    buf = np.frombuffer(bytes(ring), dtype=np.uint8)
    out = [np.full(room, -1, dtype=np.int64) for _ in range(4)]
    blocks = np.zeros(len(ring) // BLOCK, dtype=np.int64)
    n, taken, bad = walk_v3_blocks(buf, BLOCK, first, skip_outgoing, *out, blocks)
    offset, caplen, wirelen, ts = (a[:n] for a in out)
    frames = [bytes(buf[o : o + c]) for o, c in zip(offset, caplen)]
    return frames, wirelen.tolist(), ts.tolist(), blocks[:taken].tolist(), bad


def _frames(count: int, tag: int) -> list[tuple[bytes, int, int]]:
    return [(bytes([tag, i]) * (20 + 7 * i), 1000 + i, 0) for i in range(count)]


def test_walks_the_blocks_handed_over_in_ring_order_from_the_next_one_and_wraps():
    a, b, c = _frames(3, 0xA), _frames(2, 0xB), _frames(4, 0xC)
    ring = _block(c) + _block([], status=0) + _block(a) + _block(b)  # block 1 is still the kernel's
    frames, wirelen, ts, blocks, bad = _walk(ring, first=2)
    assert frames == [f for f, _, _ in a + b + c]
    assert wirelen == [w for _, w, _ in a + b + c]
    assert ts[:3] == [(1_700_000_000 + i) * 1_000_000_000 + 1000 * i for i in range(3)]
    assert (blocks, bad) == ([2, 3, 0], 0)


def test_an_empty_handed_over_block_is_taken_so_it_goes_back_and_outgoing_packets_are_skipped_on_request():
    packets = [(b"in" * 20, 40, 0), (b"out" * 20, 60, PACKET_OUTGOING), (b"in2" * 20, 60, 3)]
    ring = _block([]) + _block(packets) + _block([], status=0)
    assert _walk(ring)[3] == [0, 1]
    assert _walk(ring, skip_outgoing=True)[0] == [b"in" * 20, b"in2" * 20]
    assert len(_walk(ring)[0]) == 3


def test_a_block_that_does_not_fit_the_arrays_waits_for_the_next_read_unless_it_is_the_first():
    ring = _block(_frames(3, 1)) + _block(_frames(3, 2))
    frames, _, _, blocks, bad = _walk(ring, room=4)
    assert (len(frames), blocks, bad) == (3, [0], 0)
    frames, _, _, blocks, bad = _walk(ring, room=2)  # one block of 3 in room for 2: the third is lost, counted
    assert (len(frames), blocks, bad) == (2, [0], 1)


def _poke(block: bytearray, at: int, value: int, fmt: str = "<I") -> bytearray:
    struct.pack_into(fmt, block, at, value)
    return block


def test_lying_offsets_and_lengths_are_counted_and_skipped():
    good = _frames(3, 5)
    second = 16 * ((_MAC + len(good[0][0]) + 15) // 16)  # where the second packet of a block starts
    cases = {
        "first packet outside the block": (_poke(_block(good), 16, BLOCK - 8), 0, 3),
        "first packet inside the descriptor": (_poke(_block(good), 16, 4), 0, 3),
        "a next offset past the block": (_poke(_block(good), BLOCK_HEADER, 1 << 31), 1, 2),
        "a snap length past the block": (_poke(_block(good), BLOCK_HEADER + second + 12, BLOCK), 1, 2),
        "the frame inside its own header": (_poke(_block(good), BLOCK_HEADER + 24, 8, "<H"), 0, 3),
        "more packets than the chain holds": (_poke(_block(good), 12, 1000), 3, 997),
        "a used length past the block": (_poke(_block(good), 20, 1 << 30), 3, 0),  # the block's own size bounds it
    }
    for name, (block, kept, bad) in cases.items():
        frames, _, _, blocks, counted = _walk(block + _block(_frames(2, 9)), room=2048)
        assert (len(frames), counted) == (kept + 2, bad), name
        assert frames[:kept] == [f for f, _, _ in good[:kept]] and blocks == [0, 1], name


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(8, 24 + 2 * _MAC), st.integers(0, 255)), max_size=12),
       st.lists(st.tuples(st.integers(0, BLOCK - 1), st.integers(0, 255)), max_size=40))
def test_scribbled_block_memory_never_reads_outside_the_ring(header_pokes, anywhere_pokes):
    """A block of good packets with bytes overwritten, most in the descriptor and first packet headers."""
    block = _block(_frames(12, 7))
    for at, value in header_pokes + anywhere_pokes:
        block[at] = value
    buf = np.frombuffer(bytes(block + _block([], status=0)), dtype=np.uint8)
    out = [np.zeros(64, dtype=np.int64) for _ in range(4)]
    blocks = np.zeros(2, dtype=np.int64)
    n, taken, bad = walk_v3_blocks(buf, BLOCK, 0, False, *out, blocks)
    offset, caplen = out[0][:n], out[1][:n]
    claimed = struct.unpack_from("<I", block, 12)[0]
    assert taken == (1 if block[8] & 1 else 0) and n <= 64 and (not taken or n + bad <= claimed)
    assert ((offset >= BLOCK_HEADER) & (offset + caplen <= BLOCK)).all()


def test_the_live_sensor_with_native_kernels_does_not_load_numba():
    """numba and llvmlite take ~100 MiB: a V3 flood peaked at 353 MiB against a 256 MiB budget when the
    socket module imported the ring layout from the kernel module, and with it numba."""
    import subprocess
    import sys

    from kubesonar.sensor.record_walk import NATIVE

    if not NATIVE:
        import pytest

        pytest.skip("no native module built (python -m kubesonar.sensor.build_native): the JIT needs numba")
    code = ("import sys\nfrom kubesonar.cli import main\nfrom kubesonar.compose import build_sensor\n"
            "from kubesonar.sensor import af_packet, capture, capture_workers, live\n"
            "from kubesonar.sensor.observe import warm_up\nwarm_up()\n"
            "print(sorted(m for m in ('numba', 'llvmlite') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_the_native_modules_source_digest_covers_every_module_the_kernels_import():
    """A native module built before a kernel (or a constant it imports) changed is refused for the JIT
    kernels (sensor/record_walk.py): every module the kernel modules import must be in the digest."""
    import ast

    from kubesonar.sensor.record_walk import KERNEL_SOURCES, source_digest

    listed = {p.resolve() for p in KERNEL_SOURCES}
    sensor = next(p for p in KERNEL_SOURCES if p.name == "flow_kernel.py").parent
    assert {p.resolve() for p in sensor.glob("*_kernel.py")} <= listed  # every kernel module, a new one too
    pending, seen = [p for p in listed if p.name.endswith("_kernel.py")], set()
    while pending:
        path = pending.pop()
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kubesonar."):
                base = sensor.parent.joinpath(*node.module.split(".")[1:])
                modules = [base.with_suffix(".py")] if base.with_suffix(".py").exists() else [
                    base / f"{alias.name}.py" for alias in node.names]  # from package import module
                for imported in (m.resolve() for m in modules):
                    if imported.name == "numba_cache.py":  # where numba caches: not compiled into a kernel
                        continue
                    assert imported in listed, f"{path.name} imports {node.module}, missing from KERNEL_SOURCES"
                    if imported not in seen:
                        pending.append(imported)
    assert isinstance(source_digest(), int) and 0 <= source_digest() < 1 << 32
