"""KubeSonar sensor: packets to bidirectional flow records, and publishing them.

numba's cache directory is chosen by sensor/jit.py, the one module that imports numba, not here: with
the native kernels a start needs neither numba nor that directory's probe of the filesystem.
"""
