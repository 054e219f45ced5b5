"""The ``kubesonar`` command's entry point; the commands themselves are kubesonar/cli_commands.py's (click).

``kubesonar flows --format jsonl CAPTURE...`` in its plain form is read here without click, whose
import took a tenth of a large capture's whole run: only the three options of ``flows`` (once each,
as ``--name value``), values that click takes as they are, readable files that are not directories, and
no KUBESONAR_FLOWS_* (or other) setting in the environment that click would read. Anything else, help
and every error of usage included, goes to click, so what the command accepts and says stays click's.
"""

from __future__ import annotations

import errno
import gc
import math
import os
import stat
import sys
from typing import Any

from kubesonar.shared.errors import KubeSonarError

_FLOWS_OPTIONS = {"--format": "fmt", "--active-timeout": "active_s", "--idle-timeout": "idle_s"}
# what click reads from the environment for ``flows``: its options, the group's --version and --help,
# shell completion
_CLICK_SETTINGS = ("KUBESONAR_FLOWS_", "KUBESONAR_VERSION", "KUBESONAR_HELP")


def run() -> None:
    plain = _plain_flows(sys.argv[1:])
    if plain is None:
        from kubesonar.cli_commands import main

        try:
            main()
        except KubeSonarError as exc:
            import click

            click.echo(f"kubesonar: error: {exc}", err=True)
            sys.exit(1)
        return
    captures, timeouts = plain
    try:
        errors = _flows(captures, timeouts)
    except KubeSonarError as exc:
        _say(f"kubesonar: error: {exc}")
        sys.exit(1)
    except OSError as exc:  # as click: a closed pipe (``| head``) ends the command quietly
        if exc.errno != errno.EPIPE:
            raise
        sys.stdout, sys.stderr = _QuietFlush(sys.stdout), _QuietFlush(sys.stderr)
        sys.exit(1)
    except (EOFError, KeyboardInterrupt):
        _say("")  # as click: end the terminal's ^C line, then say so
        _say("Aborted!")
        sys.exit(1)
    for error in errors:
        _say(f"kubesonar: error: {error}")
    if errors:
        sys.exit(1)


def _flows(captures: tuple[str, ...], timeouts: dict[str, float]) -> list[str]:
    collecting = gc.isenabled()
    gc.disable()  # while the modules load: what they make is never garbage
    from kubesonar.flows_command import print_flows
    from kubesonar.sensor.flow_table import FlowTimeouts

    if collecting:
        gc.enable()
    return print_flows(captures, "jsonl", FlowTimeouts(**timeouts), sys.stdout, lambda: sys.stdout.buffer)


def _plain_flows(args: list[str]) -> tuple[tuple[str, ...], dict[str, float]] | None:
    """(captures, timeouts given) of a plain ``flows --format jsonl`` command line, else None."""
    if not args or args[0] != "flows" or sys.stdout is None or sys.stderr is None:
        return None
    if not all(arg.isascii() and arg.isprintable() for arg in args):  # click's texts could differ
        return None
    if any(name.startswith(_CLICK_SETTINGS) or (name.startswith("_") and name.endswith("_COMPLETE"))
           for name in os.environ):
        return None
    given: dict[str, str] = {}
    captures: list[str] = []
    rest = iter(args[1:])
    for arg in rest:
        if arg in _FLOWS_OPTIONS and _FLOWS_OPTIONS[arg] not in given:
            value = next(rest, None)
            if value is None:
                return None
            given[_FLOWS_OPTIONS[arg]] = value
        elif arg.startswith("-") and arg != "-":  # any other option, a repeated one, --help, --
            return None
        else:
            captures.append(arg)
    if given.pop("fmt", None) != "jsonl" or not captures or not all(map(_plain_capture, captures)):
        return None
    timeouts = {}
    for name, text in given.items():
        try:
            seconds = float(text)  # as click's FloatRange(min=0.001)
        except ValueError:
            return None
        if not (math.isfinite(seconds) and seconds >= 0.001):
            return None
        timeouts[name] = seconds
    return tuple(captures), timeouts


def _plain_capture(path: str) -> bool:
    """What click.Path(dir_okay=False) takes as it is: a path that is not there, or a readable file."""
    try:
        found = os.stat(path)
    except OSError:
        return True
    return not stat.S_ISDIR(found.st_mode) and os.access(path, os.R_OK)


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class _QuietFlush:
    """A stream whose flush ignores a closed pipe: the interpreter's last flush of it then says nothing."""

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped

    def flush(self) -> None:
        try:
            self.wrapped.flush()
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


def __getattr__(name: str) -> Any:
    """The commands (``main``, the click group, and the rest) are kubesonar/cli_commands.py's."""
    if name.startswith("__"):  # what the import system asks of every module (``from ... import run``)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from kubesonar import cli_commands

    return getattr(cli_commands, name)
