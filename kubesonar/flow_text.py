"""Flow records as JSON lines or CSV rows, written column by column.

The text is byte for byte what ``json.dumps`` and ``csv.DictWriter`` write for
:meth:`FlowRecords.iter_dicts`, built without a dict or an encoder call per row: each column is turned
into text once (numbers by a C-level ``map``, strings once per distinct value), and a column holding one
value across a batch is folded into the text between the columns that vary.
Writing a row at a time cost more than the whole flow engine on a large capture.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from json.encoder import encode_basestring_ascii
from typing import Any, TextIO

from kubesonar.shared.flow import FlowRecords

_ROWS_PER_WRITE = 8192  # bounds the text held at once, whatever the size of a batch


def write_jsonl(stream: Iterable[FlowRecords], out: TextIO) -> None:
    for records in stream:
        columns = records.readable_columns()
        for start in range(0, len(records), _ROWS_PER_WRITE):
            part = {name: values[start : start + _ROWS_PER_WRITE] for name, values in columns.items()}
            out.write(_jsonl_rows(part))


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


def _jsonl_rows(columns: dict[str, list[Any]]) -> str:
    """The JSON lines of equal-length columns, joined once: constant text and the columns that vary
    laid into one list by slice assignment (a ``%`` template per row cost twice as much)."""
    rows = len(next(iter(columns.values()), []))
    if not rows:
        return ""
    fixed, varying = [""], []  # fixed[j] comes before varying[j]; the last one ends the line
    float_texts: dict[float, str] = {}  # shared: the time columns mostly hold the same instants
    for index, (name, values) in enumerate(columns.items()):
        key = ("{" if index == 0 else ", ") + json.dumps(name) + ": "
        texts = _json_texts(values, float_texts)
        if isinstance(texts, str):
            fixed[-1] += key + texts
        else:
            fixed[-1] += key
            varying.append(texts)
            fixed.append("")
    fixed[-1] += "}\n"
    step = len(fixed) + len(varying)
    laid: list[str | None] = [None] * (rows * step)
    for j, text in enumerate(fixed):
        laid[2 * j :: step] = [text] * rows
    for j, texts in enumerate(varying):
        laid[2 * j + 1 :: step] = texts
    return "".join(laid)


def _json_texts(values: list[Any], float_texts: dict[float, str]) -> list[str] | str:
    """Each value as ``json.dumps`` writes it, or one text when the column holds a single value."""
    kinds = set(map(type, values))
    if kinds == {int}:  # not bool, which json writes as true/false
        return json.dumps(values[0]) if len(set(values)) == 1 else list(map(int.__repr__, values))
    if kinds == {float}:
        # cached by value: 0.0 and -0.0 would share a text, but the columns are times (integers / 1e9)
        new = set(values).difference(float_texts)
        new_texts = list(map(float.__repr__, new))
        if not _NOT_FINITE.isdisjoint(new_texts):  # json writes Infinity and NaN
            new_texts = list(map(json.dumps, new))
        float_texts.update(zip(new, new_texts))
        encoded = float_texts
    else:
        distinct = list(dict.fromkeys(values))
        encode = encode_basestring_ascii if set(map(type, distinct)) == {str} else json.dumps
        encoded = dict(zip(distinct, map(encode, distinct)))  # encode_basestring_ascii: json.dumps of a str
    texts = list(map(encoded.__getitem__, values))
    return texts[0] if len(set(texts)) == 1 else texts


_NOT_FINITE = frozenset(("inf", "-inf", "nan"))
