"""Compile the per-packet kernels ahead of time into ``kubesonar/sensor/_native*.so``.

    python -m kubesonar.sensor.build_native [--output-dir DIR]

Run where the package is installed, at image or zip build (needs a C compiler; numba's pycc drives
it). The module it writes needs only numpy at run time: the sensor then starts without importing
numba or compiling anything, and a read-only root filesystem needs no cache directory. Without it the
kernels are compiled by numba on first use (sensor/record_walk.py chooses).
"""

from __future__ import annotations

import argparse
import inspect
import warnings
from pathlib import Path

from kubesonar.sensor import numba_cache as _numba_cache  # noqa: F401 - before numba is imported

# Contiguous arrays only ([::1]): with any layout every index went through a stride read at run
# time, which cost a fifth of dissection and a tenth of the flow step against numba's JIT, which
# specialises on the arrays it is given. Callers hand over contiguous arrays (sensor/dissect.py).
_SIGNATURES = {
    "walk_pcap": "UniTuple(i8, 3)(u1[::1], i8, b1, i8, i8, i8[::1], i8[::1], i8[::1], i8[::1])",
    "walk_pcapng": "UniTuple(i8, 3)(u1[::1], i8, b1, i8, i8[::1])",
    # the packet columns in sensor/dissect.py's types (_DTYPES)
    "dissect_batch": "void(u1[::1], i8[::1], i8[::1], i8[::1], i8[::1], b1[::1], u8[:, ::1], u8[:, ::1], u2[::1], "
                     "u2[::1], u1[::1], u4[::1], u1[::1], u4[::1], u4[::1], i2[::1], i2[::1], b1[::1], b1[::1], "
                     "b1[::1], u8[:, ::1], u8[:, ::1], u4[::1], i4[::1], u4[::1], u1[::1])",
    "add_packets": "UniTuple(i8, 2)(i8[::1], u8[:, ::1], u8[:, ::1], u2[::1], u2[::1], u1[::1], u4[::1], u1[::1], "
                   "u4[::1], u4[::1], i2[::1], i2[::1], b1[::1], u8[:, ::1], u8[:, ::1], u4[::1], u1[::1], u4[::1], "
                   "u1[::1], i4[::1], i4[::1], i8[::1], u1[::1], u1[::1], i8[::1], i8, i8, i8, i8, u8[:, ::1], "
                   "u8[:, ::1], i8[:, ::1], f8[:, ::1], i8[::1], i8[::1], i8[::1], u8[:, ::1], u8[:, ::1], i8[:, ::1], "
                   "u1[::1], i8)",
    "walk_v3_blocks": "UniTuple(i8, 3)(u1[::1], i8, i8, b1, i8[::1], i8[::1], i8[::1], i8[::1], i8[::1])",
    "release": "void(i8[::1], u8[:, ::1], i8[:, ::1], i8[::1], i8[::1], i8[::1])",
    "rehash": "void(i8[::1], u8[:, ::1], i8[:, ::1], i8)",
    "ping_data": "void(i8[:, ::1], i8[::1], b1[::1])",
    "json_lines": "i8(i8[:, ::1], i8[::1], i8[::1], u1[::1], i8[::1], u1[::1])",
}


def _entry(dispatcher):
    """A function that only calls ``dispatcher``, exported in its place: pycc compiles what it exports
    with numba's runtime (NRT), whose atomic reference counts of every array handed to an inlined
    helper took 40% of dissection; the kernels themselves are compiled without it (sensor/jit.py)."""
    arguments = ", ".join(inspect.signature(dispatcher.py_func).parameters)
    scope = {"kernel": dispatcher}
    exec(f"def entry({arguments}):\n    return kernel({arguments})\n", scope)
    return scope["entry"]


def _returning(value: int):
    """A function that returns ``value``, compiled as a literal."""
    scope: dict = {}
    exec(f"def built_from():\n    return {int(value)}\n", scope)
    return scope["built_from"]


def build(output_dir: Path) -> Path:
    from numba.core.errors import NumbaPendingDeprecationWarning
    from numba.pycc import CC

    from kubesonar.sensor import dissect_kernel, flow_kernel, ping_kernel, ring_kernel, text_kernel, walk_kernel
    from kubesonar.sensor.record_walk import source_digest

    kernels = {
        "walk_pcap": walk_kernel.walk_pcap, "walk_pcapng": walk_kernel.walk_pcapng,
        "dissect_batch": dissect_kernel.dissect_batch, "add_packets": flow_kernel.add_packets,
        "walk_v3_blocks": ring_kernel.walk_v3_blocks, "release": flow_kernel.release, "rehash": flow_kernel.rehash,
        "ping_data": ping_kernel.ping_data, "json_lines": text_kernel.json_lines,
    }
    warnings.simplefilter("ignore", NumbaPendingDeprecationWarning)
    cc = CC("_native")
    cc.output_dir = str(output_dir)
    cc.verbose = False
    for name, dispatcher in kernels.items():
        cc.export(name, _SIGNATURES[name])(_entry(dispatcher))
    cc.export("built_from", "i8()")(_returning(source_digest()))  # record_walk refuses a stale module
    cc.compile()
    return next(output_dir.glob("_native*.so"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    print(build(args.output_dir))


if __name__ == "__main__":
    main()
