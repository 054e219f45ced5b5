"""glibc's allocator kept from handing a batch's big blocks back to the kernel between batches.

A capture is read in batches that each allocate the same few MiB (the chunk, the packet fields, the
records, the JSON text). glibc serves blocks that big with mmap, or trims them off the heap, and so
returns them to the kernel when freed: the next batch faults the same pages in again, each zeroed by
the kernel, 5% of ``kubesonar flows`` on a large capture. Raising both thresholds keeps them in the
heap for the next batch; the peak stays what the largest batch needs. Elsewhere than glibc, nothing.
"""

from __future__ import annotations

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc refuses more on 64-bit systems
_TRIM_THRESHOLD = 256 << 20


def keep_freed_blocks() -> bool:
    """Whether glibc took the thresholds (for the process, from now on)."""
    import ctypes  # numpy has loaded it already

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl's malloc has no mallopt)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
