"""Flow records as JSON lines or CSV rows, written column by column.

The text is byte for byte what ``json.dumps`` and ``csv.DictWriter`` write for
:meth:`FlowRecords.iter_dicts`, built without a dict or an encoder call per row. JSON lines are laid
out as bytes by numpy: each column becomes a matrix of one row's text per line (integers digit by
digit, strings and addresses once per distinct value), padded with NUL (which JSON text never holds
raw); the lines are those matrices side by side, the padding deleted. A column holding one value
across a batch is folded into the constant text between the columns that vary.
Writing a row at a time cost more than the whole flow engine on a large capture; a text per value
(``int.__repr__`` through ``map``) still cost a third of the whole process.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from json.encoder import encode_basestring_ascii
from typing import Any, BinaryIO, TextIO

import numpy as np

from kubesonar.shared.flow import (
    DICT_FIELDS,
    TIME_COLUMNS,
    ConnState,
    EndReason,
    FlowRecords,
    address_text,
)

_ROWS_PER_WRITE = 8192  # bounds the text held at once, whatever the size of a batch
_ROWS_HELD = 4096  # small batches are joined up to this many rows first; more cost cache misses
_ENUMS = {"state": ConnState, "end_reason": EndReason}
_ADDRESSES_KEPT = 1 << 16
_NO_ADDRESS = {bytes(16): '""'}  # a tunnel column's "no tunnel"


def write_jsonl(stream: Iterable[FlowRecords], out: TextIO) -> None:
    for lines in _jsonl_chunks(stream):
        out.write(lines.decode("ascii"))


def write_jsonl_bytes(stream: Iterable[FlowRecords], out: BinaryIO) -> None:
    """The lines of :func:`write_jsonl`, to a binary stream: decoding the ASCII text only for a text
    stream to encode it again cost 30 ms a 20,000-flow capture."""
    for lines in _jsonl_chunks(stream):
        out.write(lines)


def _jsonl_chunks(stream: Iterable[FlowRecords]) -> Iterator[bytes]:
    """The lines of _ROWS_HELD records or more at a time: a capture's batches end a few hundred
    flows each, and each column laid out costs a few numpy calls whatever its length."""
    texts = _JsonTexts()
    pending: list[FlowRecords] = []
    held = 0
    for records in chain(stream, [None]):
        if records is not None:
            pending.append(records)
            held += len(records)
            if held < _ROWS_HELD:
                continue
        whole = FlowRecords.concat(pending) if len(pending) > 1 else (pending or [FlowRecords.empty()])[0]
        pending, held = [], 0
        for start in range(0, len(whole), _ROWS_PER_WRITE):
            yield _jsonl_rows(whole.take(slice(start, start + _ROWS_PER_WRITE)), texts)


def write_csv(stream: Iterable[FlowRecords], out: TextIO) -> None:
    """A header, then one row per record; nothing at all when there are no records (as DictWriter)."""
    writer = csv.writer(out)
    header_written = False
    for records in stream:
        if not len(records):
            continue
        columns = records.readable_columns()
        if not header_written:
            writer.writerow(columns)
            header_written = True
        writer.writerows(zip(*columns.values(), strict=True))


# a column's JSON texts: one text for every row, or a byte matrix of one row's text per line, NUL-padded
_Texts = str | np.ndarray


def _jsonl_rows(records: FlowRecords, texts: _JsonTexts) -> bytes:
    """The JSON lines of a batch (ASCII: json.dumps escapes everything else, NUL included)."""
    rows = len(records)
    if not rows:
        return b""
    parts: list[bytes | np.ndarray] = []
    fixed = ""
    for index, (name, key) in enumerate(DICT_FIELDS):
        fixed += ("{" if index == 0 else ", ") + json.dumps(key) + ": "
        column = texts.column(records, name)
        if isinstance(column, str):
            fixed += column
        else:
            parts += [fixed.encode("ascii"), column]
            fixed = ""
    parts.append((fixed + "}\n").encode("ascii"))
    lines = np.empty((rows, sum(len(p) if isinstance(p, bytes) else p.shape[1] for p in parts)), dtype=np.uint8)
    at = 0
    for part in parts:
        if isinstance(part, bytes):
            lines[:, at : at + len(part)] = np.frombuffer(part, dtype=np.uint8)
            at += len(part)
        else:
            lines[:, at : at + part.shape[1]] = part
            at += part.shape[1]
    # the padding out: bytes.replace deletes a single byte at memchr speed, a boolean mask was slower
    return lines.tobytes().replace(b"\0", b"")


class _JsonTexts:
    """Column texts, with what the batches of one output share cached: addresses and times repeat."""

    def __init__(self) -> None:
        self._addresses: dict[bytes, str] = dict(_NO_ADDRESS)
        self._times: tuple[FlowRecords, np.ndarray, np.ndarray] | None = None  # the last time column laid

    def column(self, records: FlowRecords, name: str) -> _Texts:
        if name == "flow_id":
            return _hex_texts(records.flow_id)
        column = records[name]
        if name in TIME_COLUMNS:
            return self._time_texts(records, column)
        if name in _ENUMS:
            return _enum_texts(column, _ENUMS[name])
        if column.dtype.kind in "iu":
            return _int_texts(column)
        if column.dtype.kind == "V":
            if not column.view(np.uint8).any():
                return '""'
            return _distinct_texts(column.tolist(), self._address_texts)
        return _distinct_texts(column.tolist(), _object_texts)

    def _time_texts(self, records: FlowRecords, ns: np.ndarray) -> _Texts:
        """Seconds as json.dumps writes them. Each distinct time once would cost more (they rarely
        repeat), but a time column mostly repeats the one before it (conn_start is first_ts except in
        interim records): only the times that differ from it are written anew."""
        seconds = ns / 1e9
        if (ns == ns[0]).all():
            return json.dumps(float(seconds[0]))
        if self._times is None or self._times[0] is not records:
            texts = _seconds_bytes(ns, seconds)
        else:
            _, ns_before, texts = self._times
            new = np.flatnonzero(ns != ns_before)
            if len(new):
                fresh = _seconds_bytes(ns[new], seconds[new])
                texts = texts.astype(max(texts.dtype, fresh.dtype, key=lambda dtype: dtype.itemsize))
                texts[new] = fresh
        self._times = (records, ns, texts)
        return _matrix(texts)

    def _address_texts(self, distinct: list[bytes]) -> list[str]:
        cache = self._addresses
        if len(cache) > _ADDRESSES_KEPT:  # a flood of spoofed sources must not grow it without end
            cache.clear()
            cache.update(_NO_ADDRESS)
        for raw in distinct:
            if raw not in cache:
                cache[raw] = '"' + address_text(raw) + '"'
        return list(map(cache.__getitem__, distinct))

def _seconds_bytes(ns: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """json.dumps of each ``ns / 1e9`` (``seconds``). A capture's times are mostly whole microseconds,
    and there (1 s to 2**33 s) the microsecond decimal is float.__repr__'s text: it parses back to the
    same double when ``micros / 1e6`` does (micros < 2**53 is exact, so that division is rounded once,
    as parsing is), and no shorter decimal can, doubles there being under 1e-6 apart. The rest: repr."""
    micros, below = np.divmod(ns, 1000)
    easy = (below == 0) & (ns >= 10**9) & (ns < 2**33 * 10**9)
    easy &= micros.astype(np.float64) / 1e6 == seconds
    if not easy.any():
        return _float_bytes(seconds)
    whole, fraction = np.divmod(micros[easy], 10**6)
    digits = _six_digits(fraction)
    kept = np.cumsum(digits[:, ::-1] != 0, axis=1)[:, ::-1] > 0  # trailing zeros go: "1.5", not "1.500000"
    kept[:, 0] = True  # but one digit stays: "2.0"
    point = np.full((len(whole), 1), ord("."), dtype=np.uint8)
    laid = np.hstack([_int_matrix(whole), point, np.where(kept, digits + ord("0"), 0).astype(np.uint8)])
    texts = np.ascontiguousarray(laid).view(f"S{laid.shape[1]}").ravel()
    if easy.all():
        return texts
    rest = _float_bytes(seconds[~easy])
    out = np.empty(len(ns), dtype=max(texts.dtype, rest.dtype, key=lambda dtype: dtype.itemsize))
    out[easy], out[~easy] = texts, rest
    return out


def _six_digits(fraction: np.ndarray) -> np.ndarray:
    """The six decimal digits of each microsecond fraction, leading zeros kept, as an (n, 6) matrix:
    dividing by the scalar 10 (a multiplication in numpy) rather than by a row of powers of ten."""
    rest = fraction.astype(np.uint64)
    digits = np.empty((6, len(rest)), dtype=np.uint64)
    ten = np.uint64(10)
    for place in range(5, -1, -1):
        higher = rest // ten
        digits[place] = rest - higher * ten
        rest = higher
    return digits.T


def _float_bytes(values: np.ndarray) -> np.ndarray:
    texts = list(map(float.__repr__, values.tolist()))
    if not np.isfinite(values).all():  # json writes Infinity and NaN
        texts = list(map(json.dumps, values.tolist()))
    return np.array(texts, dtype=bytes)


def _object_texts(distinct: list[Any]) -> list[str]:
    encode = encode_basestring_ascii if set(map(type, distinct)) == {str} else json.dumps
    return list(map(encode, distinct))  # encode_basestring_ascii: json.dumps of a str


def _distinct_texts(values: list[Any], encode: Callable[[list[Any]], list[str]]) -> _Texts:
    """Texts of values encoded once per distinct value (equal values share a text, as in a dict)."""
    if values.count(values[0]) == len(values):
        return encode(values[:1])[0]
    which = dict.fromkeys(values)
    distinct = list(which)
    which.update(zip(distinct, range(len(distinct))))
    table = np.array(encode(distinct), dtype=bytes)
    return _matrix(table[np.fromiter(map(which.__getitem__, values), dtype=np.intp, count=len(values))])


def _matrix(texts: np.ndarray) -> np.ndarray:
    """Fixed-width byte strings (NUL-padded) as a byte matrix."""
    return texts.view(np.uint8).reshape(len(texts), texts.dtype.itemsize)


def _enum_texts(column: np.ndarray, enum: type[ConnState] | type[EndReason]) -> _Texts:
    if column.max() >= len(enum):  # values are 0..len-1; past them, what the enum says of it
        enum(int(column.max()))
    table = np.array([json.dumps(member.name.lower()) for member in enum], dtype=bytes)
    if (column == column[0]).all():
        return table[column[0]].decode("ascii")
    return _matrix(table[column])


def _int_texts(column: np.ndarray) -> _Texts:
    """Decimal texts of an integer column, right-aligned in a matrix of its widest one, NUL-padded."""
    if (column == column[0]).all():
        return str(int(column[0]))
    negative = column < 0 if column.dtype.kind == "i" else None
    if negative is not None and negative.any():
        # |int64 min| wraps to itself, which reads right as unsigned
        return np.hstack([np.where(negative, np.uint8(ord("-")), np.uint8(0))[:, None],
                          _int_matrix(np.abs(column.astype(np.int64)).view(np.uint64))])
    return _int_matrix(column.astype(np.uint64))


def _int_matrix(magnitude: np.ndarray) -> np.ndarray:
    """Decimal digits of non-negative integers, right-aligned, NUL where a shorter one has none.

    Digit by digit from the right, dividing by the scalar 10 (numpy divides by a scalar with a
    multiplication): dividing the matrix by a row of powers of ten cost three times as much."""
    rest = magnitude.astype(np.uint64)  # a copy, divided down below
    width = len(str(int(rest.max())))
    digits = np.empty((width, len(rest)), dtype=np.uint8)
    ten = np.uint64(10)
    for place in range(width):
        higher = rest // ten
        digit = (rest - higher * ten).astype(np.uint8) + np.uint8(ord("0"))
        if place:
            digit[rest == 0] = 0  # no leading zeros; zero itself is written
        digits[width - 1 - place] = digit
        rest = higher
    return digits.T


_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _hex_texts(ids: np.ndarray) -> np.ndarray:
    """``f'"{i:016x}"'`` of each id."""
    nibbles = ids[:, None] >> np.arange(60, -4, -4, dtype=np.uint64) & np.uint64(15)
    quote = np.full((len(ids), 1), ord('"'), dtype=np.uint8)
    return np.hstack([quote, _HEX_DIGITS[nibbles], quote])

