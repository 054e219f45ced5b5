"""Reading configuration files that may be hostile: UTF-8 only, YAML without alias bombs or deep
nesting, JSON without deep nesting. Every fault is one ConfigError line naming the file.

Limits: YAML may use at most :data:`MAX_ALIASES` aliases (an allowlist needs none; the 621-byte
"billion laughs" needs a few dozen) and :data:`MAX_DEPTH` levels of nesting (an allowlist needs 4);
JSON is bounded by the interpreter's recursion limit, which its C parser checks. So neither recursion
nor memory depends on what a file claims.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from kubesonar.shared.errors import ConfigError

MAX_ALIASES = 16
MAX_DEPTH = 64
MAX_BYTES = 64 << 20


def read_text(path: str | Path, what: str) -> str:
    """A file's text, which must be UTF-8 and at most :data:`MAX_BYTES`."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    return decode_text(data, f"{what} {path}")


def decode_text(data: bytes, where: str) -> str:
    if len(data) > MAX_BYTES:
        raise ConfigError(f"{where}: larger than {MAX_BYTES >> 20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 1]!r})") from None


class _LimitedLoader(yaml.SafeLoader):
    """SafeLoader's composer, counting aliases and depth as it goes."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise _Limit(f"line {mark.line + 1}: more than {MAX_ALIASES} YAML aliases")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _Limit(f"line {mark.line + 1}: nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Limit(Exception):
    pass


def compose_yaml(text: str, where: str) -> yaml.Node | None:
    """The YAML node graph of ``text`` (None when empty), within the limits."""
    loader = _LimitedLoader(text)
    try:
        return loader.get_single_node()
    except _Limit as exc:
        raise ConfigError(f"{where} {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{where}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    finally:
        loader.dispose()


def load_json(data: bytes | str, where: str) -> Any:
    """A JSON document; one nested past the interpreter's recursion limit (~1,000 levels, far beyond any
    real inventory or watchlist) is refused, not a RecursionError."""
    text = decode_text(data, where) if isinstance(data, (bytes, bytearray)) else data
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not JSON: line {exc.lineno}: {exc.msg}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None


_BREAK = re.compile(r"\r\n|[\r\n\x85\u2028\u2029]")  # what YAML counts as a line break (its marks' lines)


def block_item_span(text: str, root: yaml.SequenceNode, index: int) -> tuple[int, int] | None:
    """Where item ``index`` of the block sequence ``root`` (composed from ``text``) is written: (start,
    end) offsets of whole lines, to cut it out and leave every other line as it was. Its lines are its
    dash's line through its last line of content, with the comment lines right above it at the dash's
    indentation (no blank line between: its own note, such as "# ticket 123") and those right after
    it indented deeper (inside it); a comment after a blank line, or one above the next item, is not
    its. None for a flow sequence ([...]), which has no lines of its own per item."""
    if root.flow_style:
        return None
    starts = [0] + [m.end() for m in _BREAK.finditer(text)]
    lines = [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]
    dash = _dash_line(lines, root.value[index])
    if dash is None:
        return None
    column = _indent(lines[dash])
    stop = _dash_line(lines, root.value[index + 1]) if index + 1 < len(root.value) else len(lines)
    if stop is None:
        return None
    end = stop
    while end > dash + 1 and (not lines[end - 1].strip() or _comment(lines[end - 1], column)):
        end -= 1  # blank lines, and the next item's notes, are not this item's
    start = dash
    while start > 0 and _comment(lines[start - 1], column) and _indent(lines[start - 1]) == column:
        start -= 1
    return starts[start], starts[end] if end < len(starts) else len(text)


def _dash_line(lines: list[str], item: yaml.Node) -> int | None:
    """The line of an item's "-": its own first line, or the line above it that holds only the dash."""
    line = item.start_mark.line
    if lines[line][: item.start_mark.column].strip().startswith("-"):
        return line
    for above in range(line - 1, -1, -1):
        stripped = lines[above].strip()
        if stripped == "-" or stripped.startswith("- #"):
            return above
        if stripped and not stripped.startswith("#"):
            return None
    return None


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _comment(line: str, column: int) -> bool:
    """A comment line at ``column`` or left of it (deeper ones belong to the item above)."""
    return line.lstrip(" ").startswith("#") and _indent(line) <= column
