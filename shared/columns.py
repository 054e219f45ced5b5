"""Column codecs of the batch format: integers (optionally as deltas or as differences to another column,
then frame of reference scaled by their common divisor, packed to the narrowest width, wide ones split
into byte planes so zstd sees runs), dictionary-encoded strings and dictionary-encoded 16-byte addresses.
Layouts are in docs/flow-format.md."""

from __future__ import annotations

import struct
from enum import IntEnum

import numpy as np

from kubesonar.shared.errors import BatchFormatError


class Encoding(IntEnum):
    UNKNOWN = 0
    INT = 1
    STRING_DICT = 2
    ADDR_DICT = 3


class IntTransform(IntEnum):
    """What is stored before frame-of-reference packing (``d = base + stored * scale``, modulo 2**64)."""

    FRAME_OF_REFERENCE = 0  # value = d
    DELTA = 1  # value[i] = origin + d[0] + ... + d[i], with d[0] = 0: for sorted times
    MINUS_COLUMN = 2  # value = reference column + d: for a time close to another


class Layout(IntEnum):
    PLAIN = 0  # little-endian values one after the other
    BYTE_PLANES = 1  # all lowest bytes, then all second bytes, ...: zstd finds more runs in wide values


INT_DTYPES = ("u1", "u2", "u4", "u8", "i1", "i2", "i4", "i8")
_WIDTHS = (1, 2, 4, 8)
_TRANSFORMS = frozenset(int(t) for t in IntTransform)  # built once: decoding checks every column
_LAYOUTS = frozenset(int(t) for t in Layout)
_U64 = np.uint64


class Reader:
    """Bounds-checked reading of a byte string; every fault is a BatchFormatError naming what and where."""

    def __init__(self, data: bytes | memoryview, what: str):
        self.data = memoryview(data)
        self.pos = 0
        self.what = what

    def take(self, size: int, field: str) -> memoryview:
        if size < 0 or self.pos + size > len(self.data):
            raise BatchFormatError(
                f"{self.what} truncated: {field} needs {size} bytes at offset {self.pos}, "
                f"{len(self.data) - self.pos} left"
            )
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def unpack(self, fmt: str, field: str) -> tuple:
        s = struct.Struct("<" + fmt)
        return s.unpack(self.take(s.size, field))

    def text(self, field: str, length_fmt: str = "H") -> str:
        (size,) = self.unpack(length_fmt, f"{field} length")
        raw = self.take(size, field)
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BatchFormatError(f"{self.what}: {field} is not UTF-8 ({exc.reason})") from None

    def peek_text(self, field: str) -> str:
        """The next text, without moving on."""
        at = self.pos
        try:
            return self.text(field)
        finally:
            self.pos = at

    def done(self) -> None:
        if self.pos != len(self.data):
            raise BatchFormatError(f"{self.what}: {len(self.data) - self.pos} unexpected bytes after the end")


def pack_text(value: str, length_fmt: str = "H") -> bytes:
    raw = value.encode("utf-8")
    limit = (1 << (8 * struct.calcsize(length_fmt))) - 1
    if len(raw) > limit:
        raise BatchFormatError(f"string of {len(raw)} bytes exceeds the format's {limit}-byte limit")
    return struct.pack("<" + length_fmt, len(raw)) + raw


# -- integers -----------------------------------------------------------------------------------------


def _pack(stored: np.ndarray) -> tuple[int, int, bytes]:
    top = int(stored.max()) if len(stored) else 0
    width = next(w for w in _WIDTHS if top < (1 << (8 * w)))
    narrow = stored.astype(f"<u{width}")
    if width >= 4:
        return width, Layout.BYTE_PLANES, narrow.view(np.uint8).reshape(-1, width).T.tobytes()
    return width, Layout.PLAIN, narrow.tobytes()


def encode_int(values: np.ndarray, transform: IntTransform, reference: np.ndarray | None = None) -> bytes:
    dtype = values.dtype.str.lstrip("<>|=")
    if dtype not in INT_DTYPES:
        raise BatchFormatError(f"cannot encode dtype {values.dtype} as an integer column")
    signed = dtype[0] == "i" or transform != IntTransform.FRAME_OF_REFERENCE
    wide = values.astype(np.int64) if dtype[0] == "i" else values.astype(_U64).view(np.int64)
    origin = 0
    with np.errstate(over="ignore"):
        if transform == IntTransform.DELTA:
            origin = int(wide[0]) if len(wide) else 0
            wide = np.diff(wide, prepend=wide[:1])  # wraps modulo 2**64, as decoding does
        elif transform == IntTransform.MINUS_COLUMN:
            assert reference is not None
            wide = wide - reference.astype(np.int64)
        base = (wide.min() if signed else wide.view(_U64).min()) if len(wide) else 0
        base_bits = int(np.asarray(base).astype(np.int64 if signed else _U64).view(_U64))
        diff = wide.view(_U64) - _U64(base_bits)  # exact: the true difference is below 2**64
        scale = (int(np.gcd.reduce(diff)) if len(diff) else 1) or 1
        stored = diff // _U64(scale)
    width, layout, body = _pack(stored)
    head = struct.pack("<BBQQQBB", INT_DTYPES.index(dtype), int(transform), origin & (2**64 - 1), base_bits,
                       scale, width, int(layout))
    return head + body


def decode_int(reader: Reader, rows: int, expected: str, reference: np.ndarray | None) -> np.ndarray:
    code, transform, origin, base_bits, scale, width, layout = reader.unpack("BBQQQBB", "integer column header")
    if code >= len(INT_DTYPES) or INT_DTYPES[code] != expected:
        raise BatchFormatError(f"{reader.what}: integer column has dtype code {code}, schema says {expected}")
    if width not in _WIDTHS:
        raise BatchFormatError(f"{reader.what}: integer width {width} is not 1, 2, 4 or 8")
    if transform not in _TRANSFORMS or layout not in _LAYOUTS:
        raise BatchFormatError(f"{reader.what}: unknown integer transform {transform} or layout {layout}")
    raw = np.frombuffer(reader.take(rows * width, "integer values"), dtype=np.uint8)
    if layout == Layout.BYTE_PLANES:
        raw = raw.reshape(width, rows).T.copy()
    stored = raw.view(f"<u{width}").ravel().astype(_U64)
    with np.errstate(over="ignore"):
        bits = _U64(base_bits) + stored * _U64(scale)
        if transform == IntTransform.DELTA:
            bits = _U64(origin) + np.cumsum(bits, dtype=_U64)
        elif transform == IntTransform.MINUS_COLUMN:
            if reference is None or len(reference) != rows:
                raise BatchFormatError(f"{reader.what}: column refers to a column that is not there")
            bits = reference.astype(np.int64).view(_U64) + bits
    return bits.view(np.int64).astype(expected) if expected[0] == "i" else bits.astype(expected)


# -- dictionaries -------------------------------------------------------------------------------------


def _factorize_strings(values: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Distinct strings and each row's index among them. Grouped by Python's string hash in numpy
    (checked exactly; a collision falls back to a dict), not np.unique on strings: numpy's fixed-width
    strings would drop trailing NUL characters, and sorting objects compares them one by one in Python."""
    if not len(values):
        return [], np.zeros(0, dtype=np.uint32)
    if (values == values[0]).all():  # the common case: one value (often '', no enrichment)
        return [values[0]], np.zeros(len(values), dtype=np.uint32)
    hashes = np.fromiter(map(hash, values.tolist()), dtype=np.int64, count=len(values))
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    entries = values[first]
    if (entries[inverse.ravel()] == values).all():
        return entries.tolist(), inverse.ravel().astype(np.uint32)
    index: dict[str, int] = {}
    inverse = np.fromiter((index.setdefault(v, len(index)) for v in values.tolist()), dtype=np.uint32,
                          count=len(values))
    return list(index), inverse


def encode_strings(values: np.ndarray) -> bytes:
    entries, inverse = _factorize_strings(values)
    parts = [struct.pack("<I", len(entries))]
    parts += [pack_text(u, "I") for u in entries]
    parts.append(encode_int(inverse, IntTransform.FRAME_OF_REFERENCE))
    return b"".join(parts)


def decode_strings(reader: Reader, rows: int) -> np.ndarray:
    (size,) = reader.unpack("I", "dictionary size")
    if size > rows or 4 * size > len(reader.data) - reader.pos:
        raise BatchFormatError(f"{reader.what}: dictionary of {size} entries for {rows} rows does not fit")
    entries = np.empty(size + 1, dtype=object)
    for i in range(size):
        entries[i] = reader.text("dictionary entry", "I")
    index = decode_int(reader, rows, "u4", None)
    if rows and int(index.max()) >= size:
        raise BatchFormatError(f"{reader.what}: dictionary index {int(index.max())} out of {size} entries")
    return entries[index] if rows else np.empty(0, dtype=object)


def encode_addresses(values: np.ndarray) -> bytes:
    # unique on the 16-byte values themselves: four times faster than on (n, 2) integer rows
    uniq, inverse = np.unique(np.ascontiguousarray(values, dtype="V16"), return_inverse=True)
    return (
        struct.pack("<I", len(uniq))
        + np.ascontiguousarray(uniq).tobytes()
        + encode_int(np.asarray(inverse, dtype=np.uint32).ravel(), IntTransform.FRAME_OF_REFERENCE)
    )


def decode_addresses(reader: Reader, rows: int) -> np.ndarray:
    (size,) = reader.unpack("I", "address dictionary size")
    if size > rows:
        raise BatchFormatError(f"{reader.what}: address dictionary of {size} entries for {rows} rows")
    table = np.frombuffer(reader.take(16 * size, "address dictionary"), dtype="V16")
    index = decode_int(reader, rows, "u4", None)
    if rows and int(index.max()) >= size:
        raise BatchFormatError(f"{reader.what}: address index {int(index.max())} out of {size} entries")
    return table[index] if rows else np.zeros(0, dtype="V16")
