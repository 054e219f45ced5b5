"""Why the record walk stopped (sensor/walk_kernel.py): the reader decides what to do next."""

STOP_NEED_DATA = 0  # the next record runs past the end of the chunk
STOP_OTHER_BLOCK = 1  # pcapng: a block that is not an enhanced packet block
STOP_CORRUPT = 2  # a length that cannot be right
STOP_FULL = 3  # the output array is full
