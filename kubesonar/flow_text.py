"""Flow records as JSON lines or CSV rows, written column by column.

The text is byte for byte what ``json.dumps`` and ``csv.DictWriter`` write for
:meth:`FlowRecords.iter_dicts`, built without a dict or an encoder call per row. JSON lines are laid
out by a compiled kernel (sensor/text_kernel.py) into one buffer: integers, flow ids, IPv4 addresses
and times (float.__repr__'s shortest digits) it writes from their numbers; every other text (strings
and IPv6 addresses once per distinct value, enum names, times before 1972) is made here and it copies. A
column holding one value across a batch is folded into the constant text between the columns that vary.
Writing a row at a time cost more than the whole flow engine on a large capture; a text per value
(``int.__repr__`` through ``map``) still cost a third of the whole process, numpy byte matrices side by
side a sixth.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from json.encoder import encode_basestring_ascii
from typing import Any, BinaryIO, NamedTuple, TextIO

import numpy as np

from kubesonar.sensor.record_walk import json_lines
from kubesonar.sensor.text_layout import DECIMAL, FLOW_ID, IPV4, MIN_SECONDS_NS, SECONDS, TEXT, UNSIGNED, WIDEST
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
_V4_MAPPED = np.frombuffer(b"\0" * 10 + b"\xff\xff", dtype=np.uint8)


def write_jsonl(stream: Iterable[FlowRecords], out: TextIO) -> None:
    for lines in _jsonl_chunks(stream):
        out.write(str(lines, "ascii"))


def write_jsonl_bytes(stream: Iterable[FlowRecords], out: BinaryIO) -> None:
    """The lines of :func:`write_jsonl`, to a binary stream: decoding the ASCII text only for a text
    stream to encode it again cost 30 ms a 20,000-flow capture."""
    for lines in _jsonl_chunks(stream):
        out.write(lines)


def _jsonl_chunks(stream: Iterable[FlowRecords]) -> Iterator[memoryview | bytes]:
    """The lines of _ROWS_HELD records or more at a time: a capture's batches end a few hundred
    flows each, and each column costs a few numpy calls whatever its length."""
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


class _Field(NamedTuple):
    """A field the JSON-lines kernel writes (sensor/text_layout.py): a value per row, how to write it,
    and the texts that negative values stand for (-1 - v is the index of v's text)."""

    kind: int
    values: np.ndarray  # int64
    texts: list[str]


# a column's JSON text: one text for every row, or a field that varies
_Texts = str | _Field


def _jsonl_rows(records: FlowRecords, texts: _JsonTexts) -> memoryview | bytes:
    """The JSON lines of a batch (ASCII: json.dumps escapes everything else)."""
    if not len(records):
        return b""
    lines = _Lines(len(records))
    fixed = ""
    for index, (name, key) in enumerate(DICT_FIELDS):
        fixed += ("{" if index == 0 else ", ") + json.dumps(key) + ": "
        column = texts.column(records, name)
        if isinstance(column, str):
            fixed += column
        else:
            lines.add(fixed, column)
            fixed = ""
    return lines.laid_out(fixed + "}\n")


class _Lines:
    """The kernel's input: the varying fields' values and kinds, the constant texts between them, one
    table of every text, and how long a line can get."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.fields: list[_Field] = []
        self.table: list[str] = []
        self.before: list[int] = []  # the table's index of the constant text before each field
        self.widest = 0

    def add(self, fixed: str, field: _Field) -> None:
        self.before.append(self._text(fixed))
        shift = len(self.table)
        if shift and field.texts:  # the field's text k is the table's shift + k
            field = field._replace(values=np.where(field.values < 0, field.values - shift, field.values))
        self.table += field.texts
        self.fields.append(field)
        self.widest += max(WIDEST[field.kind], max(map(len, field.texts), default=0))

    def laid_out(self, end: str) -> memoryview:
        self.before.append(self._text(end))
        values = np.empty((len(self.fields), self.rows), dtype=np.int64)
        for row, field in zip(values, self.fields, strict=True):
            row[:] = field.values
        kinds = np.array([field.kind for field in self.fields], dtype=np.int64)
        table = np.frombuffer(bytearray("".join(self.table).encode("ascii")), dtype=np.uint8)
        starts = np.zeros(len(self.table) + 1, dtype=np.int64)
        np.cumsum(list(map(len, self.table)), out=starts[1:])
        out = np.empty(self.rows * self.widest, dtype=np.uint8)
        size = json_lines(values, kinds, np.array(self.before, dtype=np.int64), table, starts, out)
        return memoryview(out)[:size]

    def _text(self, text: str) -> int:
        self.table.append(text)
        self.widest += len(text)
        return len(self.table) - 1


class _JsonTexts:
    """Column texts, with what the batches of one output share cached: addresses repeat."""

    def __init__(self) -> None:
        self._addresses: dict[bytes, str] = dict(_NO_ADDRESS)

    def column(self, records: FlowRecords, name: str) -> _Texts:
        if name == "flow_id":
            return _Field(FLOW_ID, records.flow_id.view(np.int64), [])
        column = records[name]
        if name in TIME_COLUMNS:
            return _seconds_texts(column)
        if name in _ENUMS:
            return _enum_texts(column, _ENUMS[name])
        if column.dtype.kind in "iu":
            return _int_texts(column)
        if column.dtype.kind == "V":
            return self._address_field(column)
        return _distinct_texts(column.tolist(), _object_texts)

    def _address_field(self, column: np.ndarray) -> _Texts:
        """IPv4 addresses (the usual ones) as their 32 bits, the kernel writes them; the others as
        texts, each distinct one made once."""
        raw = np.ascontiguousarray(column).view(np.uint8).reshape(len(column), 16)
        if not raw.any():
            return '""'
        mapped = (raw[:, :12] == _V4_MAPPED).all(axis=1)
        values = np.ascontiguousarray(raw[:, 12:]).view(">u4").ravel().astype(np.int64)
        if mapped.all():
            if (values == values[0]).all():
                return self._address_texts([column[0].tobytes()])[0]
            return _Field(IPV4, values, [])
        others = np.flatnonzero(~mapped)
        which = dict.fromkeys(column[others].tolist())
        distinct = list(which)
        which.update(zip(distinct, range(len(distinct))))
        values[others] = -1 - np.fromiter(map(which.__getitem__, column[others].tolist()), dtype=np.int64,
                                          count=len(others))
        return _Field(IPV4, values, self._address_texts(distinct))

    def _address_texts(self, distinct: list[bytes]) -> list[str]:
        cache = self._addresses
        if len(cache) > _ADDRESSES_KEPT:  # a flood of spoofed sources must not grow it without end
            cache.clear()
            cache.update(_NO_ADDRESS)
        for raw in distinct:
            if raw not in cache:
                cache[raw] = '"' + address_text(raw) + '"'
        return list(map(cache.__getitem__, distinct))


def _seconds_texts(ns: np.ndarray) -> _Texts:
    """json.dumps of each ``ns / 1e9``: the kernel writes float.__repr__'s digits of the times it can
    (all but those before 1972); the others are texts."""
    if (ns == ns[0]).all():
        return json.dumps(float(ns[0] / 1e9))
    values = ns.astype(np.int64)  # a copy
    early = np.flatnonzero(ns < MIN_SECONDS_NS)
    if not len(early):
        return _Field(SECONDS, values, [])
    values[early] = -1 - np.arange(len(early))
    return _Field(SECONDS, values, list(map(json.dumps, (ns[early] / 1e9).tolist())))


def _object_texts(distinct: list[Any]) -> list[str]:
    encode = encode_basestring_ascii if set(map(type, distinct)) == {str} else json.dumps
    return list(map(encode, distinct))  # encode_basestring_ascii: json.dumps of a str


def _distinct_texts(values: list[Any], encode: Callable[[list[Any]], list[str]]) -> _Texts:
    """Texts of values encoded once per distinct value (equal values share a text, as in a dict)."""
    if values.count(values[0]) == len(values):
        return encode(values[:1])[0]
    which = dict.fromkeys(values)
    distinct = list(which)
    which.update(zip(distinct, range(-1, -1 - len(distinct), -1)))
    return _Field(TEXT, np.fromiter(map(which.__getitem__, values), dtype=np.int64, count=len(values)),
                  encode(distinct))


def _enum_texts(column: np.ndarray, enum: type[ConnState] | type[EndReason]) -> _Texts:
    if column.max() >= len(enum):  # values are 0..len-1; past them, what the enum says of it
        enum(int(column.max()))
    names = [json.dumps(member.name.lower()) for member in enum]
    if (column == column[0]).all():
        return names[column[0]]
    return _Field(TEXT, -1 - column.astype(np.int64), names)


def _int_texts(column: np.ndarray) -> _Texts:
    if (column == column[0]).all():
        return str(int(column[0]))
    if column.dtype == np.uint64:
        return _Field(UNSIGNED, column.view(np.int64), [])
    return _Field(DECIMAL, column.astype(np.int64), [])
