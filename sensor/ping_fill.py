"""What ping writes into echo data, shared by the compiled judge (sensor/ping_kernel.py) and its numpy
reference (sensor/app_layer.py); no numba here, so the native path never loads it."""

import numpy as np

PATTERN_WINDOW = 112  # data bytes compared with the patterns; the snap length bounds it anyway
MAX_PERIOD = 16  # ping -p takes up to 16 pattern bytes; a zero fill has period 1
WINDOWS_PING = np.frombuffer(b"abcdefghijklmnopqrstuvw", dtype=np.uint8).astype(np.int64)
CLOCK_SKEW_S = 366 * 86_400  # how far a sender's clock may be from the capture's and still be a clock
MICROSECONDS = 1_000_000
