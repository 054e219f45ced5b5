"""What ``kubesonar flows`` does once its options are read: the flows of captures, printed.

Free of click, so the command's plain form starts without it (kubesonar/cli.py); the click command
(kubesonar/cli_commands.py) calls the same function for every other form.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, BinaryIO, TextIO

if TYPE_CHECKING:
    from kubesonar.sensor.flow_table import FlowTimeouts
    from kubesonar.shared.flow import FlowRecords

_TABLE_COLUMNS = ("first_ts", "src_ip", "src_port", "dst_ip", "dst_port", "proto", "packets_out",
                  "bytes_out", "packets_in", "bytes_in", "state")
_PROGRESS_MIN_BYTES = 16 << 20


def print_flows(captures: tuple[str, ...], fmt: str, timeouts: FlowTimeouts, out: TextIO,
                binary_out: Callable[[], BinaryIO]) -> list[str]:
    """Write the flows of ``captures`` to ``out`` (JSON lines to ``binary_out()``, under it); return
    what went wrong with the captures, the flows read before each fault written all the same."""
    collecting = gc.isenabled()
    gc.disable()  # while its modules load: what they make is never garbage
    from kubesonar.allocator import keep_freed_blocks
    from kubesonar.sensor.offline import CaptureStats, flows_from_captures  # numba: not for the live sensor

    # what starting made (modules, classes, functions) is never garbage: the collections a long read
    # triggers need not walk it again (2% of a 1M-packet capture's CPU)
    gc.freeze()
    if collecting:
        gc.enable()
    keep_freed_blocks()
    stats = CaptureStats()
    with _progress(captures) as advance:
        stream = flows_from_captures(captures, timeouts=timeouts, stats=stats, progress=advance)
        _write_flows(stream, fmt, out, binary_out)
    return stats.errors


def _write_flows(stream: Iterator[FlowRecords], fmt: str, out: TextIO, binary_out: Callable[[], BinaryIO]) -> None:
    if fmt == "jsonl":
        from kubesonar.flow_text import write_jsonl_bytes

        out.flush()  # the lines go under it, as bytes
        write_jsonl_bytes(stream, binary_out())
    elif fmt == "csv":
        from kubesonar.flow_text import write_csv

        write_csv(stream, out)
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(*_TABLE_COLUMNS, box=None)
        rows = sorted((row for records in stream for row in records.iter_dicts()), key=lambda r: r["first_ts"])
        for row in rows:
            table.add_row(*(_cell(name, row[name]) for name in _TABLE_COLUMNS))
        if table.row_count:
            Console(width=None if out.isatty() else 160).print(table)


def _cell(name: str, value: object) -> str:
    if name == "first_ts":
        from datetime import UTC, datetime

        return datetime.fromtimestamp(float(value), tz=UTC).strftime("%H:%M:%S.%f")
    return str(value)


@contextmanager
def _progress(captures: tuple[str, ...]) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on stderr when it is a terminal and the captures are large."""
    sizes = [os.path.getsize(p) if os.path.isfile(p) else 0 for p in captures]
    if not sys.stderr.isatty() or sum(sizes) < _PROGRESS_MIN_BYTES:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    done_before = {"files": 0, "bytes": 0, "last": 0}
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), transient=True,
                  console=Console(stderr=True)) as bar:
        task = bar.add_task("reading captures", total=sum(sizes))

        def advance(consumed_in_file: int) -> None:
            if consumed_in_file < done_before["last"]:  # the next file began
                done_before["bytes"] += done_before["last"]
            done_before["last"] = consumed_in_file
            bar.update(task, completed=done_before["bytes"] + consumed_in_file)

        yield advance
