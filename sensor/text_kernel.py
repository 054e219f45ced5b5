"""Compiled: flow records laid out as JSON lines, every byte written once into one buffer.

kubesonar/flow_text.py decides what each field's text is (json.dumps's, checked by its tests) and hands
over numbers and a table of the texts it wrote itself; here each line is the constant text before each
field, then the field's number as digits or one of those texts. With numpy each field was a matrix of
its own, padded, laid side by side and the padding deleted: a third of ``kubesonar flows``' writing.
"""

from __future__ import annotations

import math

import numpy as np

from kubesonar.sensor.jit import njit
from kubesonar.sensor.text_layout import DECIMAL, FLOW_ID, IPV4, SECONDS, UNSIGNED

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_QUOTE, _DOT, _MINUS, _ZERO = ord('"'), ord("."), ord("-"), ord("0")

# Positions are uint64: numba checks a signed index for a negative one (counted from the end) at every
# access, which kept the text copies from being vectorised: ten times slower. Mixing them with int64
# would make floats, hence the explicit types.


@njit(cache=True, nogil=True, inline="always")
def _text(texts, starts, which, out, at):
    start = np.uint64(starts[which])
    size = np.uint64(starts[which + 1]) - start
    for k in range(size):
        out[at + k] = texts[start + k]
    return at + size


@njit(cache=True, nogil=True, inline="always")
def _digits(value, out, at):
    """The decimal digits of ``value`` (a uint64), no leading zeros."""
    ten = np.uint64(10)
    width = np.uint64(1)
    bound = ten
    while width < np.uint64(20) and value >= bound:  # 10**20 is past uint64: the bound wraps there
        bound *= ten
        width += np.uint64(1)
    return _padded_digits(value, width, out, at)


@njit(cache=True, nogil=True, inline="always")
def _padded_digits(value, width, out, at):
    """The last ``width`` decimal digits of ``value`` (a uint64), zeros in front where it has fewer."""
    ten = np.uint64(10)
    place = at + width
    while place > at:
        place -= np.uint64(1)
        higher = value // ten
        out[place] = np.uint8(_ZERO + (value - higher * ten))
        value = higher
    return at + width


@njit(cache=True, nogil=True, inline="always")
def _seconds(ns, out, at):
    """``float.__repr__(ns / 1e9)`` for ``ns`` >= MIN_SECONDS_NS: the shortest decimal that reads back
    as that double, the nearest one of those, an even last digit between two as near (as Python's
    dtoa). The double is ``mantissa / 2**shift``, shift 19-26 here; a decimal of ``k`` places reads
    back when it lies within half a unit in the last place of it (on the edge only for an even
    mantissa: reading rounds ties to even), checked in integers. Places are tried from the most that
    are still wider than that unit: one candidate at most reads back there, and any shorter one that
    did would be the same number, so its trailing zeros cut give the shortest."""
    fraction, exponent = math.frexp(np.float64(ns) / 1e9)
    mantissa = np.uint64(fraction * 9007199254740992.0)  # * 2**53: the 53-bit integer
    shift = np.uint64(53 - exponent)
    unit = np.uint64(1) << shift  # the double's units (of 2**-shift) in a second
    whole = mantissa >> shift
    part = mantissa & (unit - np.uint64(1))  # the fraction of a second, in those units
    ten = np.uint64(10)
    scale = np.uint64(1)  # 10**k
    width = np.uint64(0)  # k
    while scale * ten < unit:
        scale *= ten
        width += np.uint64(1)
    while True:  # ends by k = 8: 10**-8 s is under the unit's 2**-26
        scaled = part * scale  # under 2**26 * 10**8
        below = scaled >> shift  # the k-decimal candidate below, in 10**-k
        rest = scaled - (below << shift)  # how far above it the double lies, in 2**-shift / 10**k
        nearest, off = below, rest
        if rest + rest > unit or (rest + rest == unit and below % np.uint64(2)):
            nearest, off = below + np.uint64(1), unit - rest
        if off + off < scale or (off + off == scale and mantissa % np.uint64(2) == 0):
            break
        scale *= ten
        width += np.uint64(1)
    if nearest == scale:  # rounded up to the next second
        whole += np.uint64(1)
        nearest = np.uint64(0)
    while width > np.uint64(1) and nearest % ten == np.uint64(0):
        nearest //= ten
        width -= np.uint64(1)
    at = _digits(whole, out, at)
    at = _byte(_DOT, out, at)
    if width == np.uint64(0):
        return _byte(_ZERO, out, at)
    return _padded_digits(nearest, width, out, at)


@njit(cache=True, nogil=True, inline="always")
def _byte(value, out, at):
    out[at] = value
    return at + np.uint64(1)


@njit(cache=True, nogil=True)
def json_lines(values, kinds, before, texts, starts, out) -> int:
    """Lay out ``values.shape[1]`` lines in ``out``; return the bytes written. Field ``f`` of a line is
    the table's text ``before[f]``, then ``values[f, line]`` written as ``kinds[f]`` says
    (sensor/text_layout.py); the line ends with the text ``before[-1]``. The table's text ``k`` is
    ``texts[starts[k]:starts[k + 1]]``."""
    at = np.uint64(0)
    fields = values.shape[0]
    for line in range(values.shape[1]):
        for field in range(fields):
            at = _text(texts, starts, before[field], out, at)
            value = values[field, line]
            kind = kinds[field]
            if value < 0 and kind >= SECONDS:
                at = _text(texts, starts, -1 - value, out, at)
            elif kind == DECIMAL:
                if value < 0:
                    at = _byte(_MINUS, out, at)
                    at = _digits(np.uint64(-(value + 1)) + np.uint64(1), out, at)  # -(int64 min) overflows
                else:
                    at = _digits(np.uint64(value), out, at)
            elif kind == UNSIGNED:
                at = _digits(np.uint64(value), out, at)
            elif kind == FLOW_ID:
                at = _byte(_QUOTE, out, at)
                bits = np.uint64(value)
                place = at + np.uint64(16)
                while place > at:
                    place -= np.uint64(1)
                    out[place] = _HEX[bits & np.uint64(15)]
                    bits >>= np.uint64(4)
                at = _byte(_QUOTE, out, at + np.uint64(16))
            elif kind == SECONDS:
                at = _seconds(value, out, at)
            elif kind == IPV4:
                at = _byte(_QUOTE, out, at)
                for shift in range(24, -8, -8):
                    at = _digits(np.uint64((value >> shift) & 255), out, at)
                    at = _byte(_DOT, out, at)
                out[at - np.uint64(1)] = _QUOTE
        at = _text(texts, starts, before[fields], out, at)
    return np.int64(at)
