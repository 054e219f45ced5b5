"""KubeSonar: network threat detection for Kubernetes."""

import os

# KubeSonar does no linear algebra; numpy's OpenBLAS would start a thread per core at import all
# the same, 50-70 ms of CPU at every start (CLI, sensor, function) on a 2-core node. Set before
# anything imports numpy; a process that wants BLAS threads sets the variable itself.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
