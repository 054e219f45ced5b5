"""The compiled kernels of the per-packet path (and of the flows' JSON text), from the native module
when it was built, else JIT.

The native module (``kubesonar.sensor._native``, built by ``python -m kubesonar.sensor.build_native``
at image and zip build) holds the kernels compiled ahead of time: loading it takes milliseconds and
needs neither numba nor a writable cache, as on a read-only root filesystem. Without it the same
kernels are compiled by numba on first use and cached (NUMBA_CACHE_DIR; sensor/jit.py). Setting
KUBESONAR_NATIVE=0 uses the JIT kernels even where the native module exists.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

from kubesonar.sensor.walk_codes import STOP_CORRUPT, STOP_FULL, STOP_NEED_DATA, STOP_OTHER_BLOCK

_SENSOR = Path(__file__).resolve().parent
# what the kernels are compiled from: a native module built from other versions of these is stale
KERNEL_SOURCES = tuple(_SENSOR / f for f in (
    "walk_kernel.py", "dissect_kernel.py", "flow_kernel.py", "ring_kernel.py", "ping_kernel.py", "ping_fill.py",
    "text_kernel.py", "text_layout.py", "flow_layout.py", "ring_layout.py", "walk_codes.py", "payload_kinds.py",
    "jit.py")) + (
    _SENSOR.parent / "shared" / "flow.py",)


def source_digest() -> int:
    """CRC-32 of the kernels' sources, which the native module carries from its build (zlib: no import
    cost at startup, and a stale build is what it guards against, not an adversary)."""
    crc = 0
    for path in KERNEL_SOURCES:
        crc = zlib.crc32(path.read_bytes(), crc)
    return crc


try:
    if os.environ.get("KUBESONAR_NATIVE", "1") == "0":  # tests compare both paths
        raise ImportError("native kernels switched off by KUBESONAR_NATIVE=0")
    from kubesonar.sensor._native import (
        add_packets,
        built_from,
        dissect_batch,
        json_lines,
        ping_data,
        rehash,
        release,
        walk_pcap,
        walk_pcapng,
        walk_v3_blocks,
    )

    if built_from() != source_digest():  # built before a kernel changed: it would not do what the code says
        import logging  # here: a module of 2 ms that the usual start needs nowhere else

        logging.getLogger(__name__).warning("the native kernels were built from other sources than these: "
                                            "using the JIT kernels (rebuild: python -m kubesonar.sensor.build_native)")
        raise ImportError("stale native module")
    NATIVE = True
except (ImportError, OSError):
    from kubesonar.sensor.dissect_kernel import dissect_batch
    from kubesonar.sensor.flow_kernel import add_packets, rehash, release
    from kubesonar.sensor.ping_kernel import ping_data
    from kubesonar.sensor.ring_kernel import walk_v3_blocks
    from kubesonar.sensor.text_kernel import json_lines
    from kubesonar.sensor.walk_kernel import walk_pcap, walk_pcapng

    NATIVE = False

__all__ = [
    "NATIVE", "STOP_CORRUPT", "STOP_FULL", "STOP_NEED_DATA", "STOP_OTHER_BLOCK", "add_packets",
    "dissect_batch", "json_lines", "ping_data", "rehash", "release", "walk_v3_blocks", "walk_pcap", "walk_pcapng",
]
