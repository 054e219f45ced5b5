"""Every setting a user is told to set exists: each option of every command is read from
KUBESONAR_<COMMAND>_<OPTION> (its flag's name, as the docs say), and every KUBESONAR_* name that the docs,
the manifests, the Terraform modules or the image set is one the code reads. A misspelt or stale name is
otherwise silently ignored and the default runs instead."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import click
import pytest

from kubesonar.cli import main

from conftest import REPO

# a whole name: not a prefix such as KUBESONAR_SENSOR_<OPTION> or KUBESONAR_NATS_*
_NAME = re.compile(r"KUBESONAR_[A-Z0-9_]*[A-Z0-9](?![A-Za-z0-9_<*.])")
# what tells a user (or a deployment) to set a name
_TOLD = ["README.md", "docs/*.md", "infra/**/*.md", "infra/**/*.tf", "infra/**/*.yaml", "functions/*/README.md",
         "sensor/Dockerfile"]
# what reads names: the package, the lab, the benchmarks and the scripts name them; a test harness a doc points
# to (KUBESONAR_SCREENSHOTS) counts where it reads the environment
_READERS = ["kubesonar/**/*.py", "shared/**/*.py", "sensor/**/*.py", "functions/**/*.py", "lab/**/*.py",
            "bench/**/*.py", "scripts/*"]
_TEST_READ = re.compile(r"environ(?:\.get\(|\[)[\"'](KUBESONAR_[A-Z0-9_]+)[\"']")


def _options(group: click.Group = main, prefix: str = "KUBESONAR", parent: click.Context | None = None
             ) -> Iterator[tuple[click.Context, click.Option, str]]:
    """(context, option, KUBESONAR_<COMMAND>_<OPTION> from its flag) for every option of every command."""
    parent = parent or click.Context(main, info_name="kubesonar", auto_envvar_prefix="KUBESONAR")
    for name, command in group.commands.items():
        ctx = click.Context(command, info_name=name, parent=parent)
        command_prefix = f"{prefix}_{name.upper().replace('-', '_')}"
        for param in command.params:
            flags = [o for o in param.opts if o.startswith("--")] if isinstance(param, click.Option) else []
            if flags:
                yield ctx, param, f"{command_prefix}_{flags[0][2:].upper().replace('-', '_')}"
        if isinstance(command, click.Group):
            yield from _options(command, command_prefix, ctx)


def test_every_option_is_read_from_its_flags_environment_variable(monkeypatch):
    for name in [n for n in os.environ if n.startswith("KUBESONAR_")]:
        monkeypatch.delenv(name)
    for ctx, option, documented in _options():
        monkeypatch.setenv(documented, "42")
        read = option.resolve_envvar_value(ctx)
        monkeypatch.delenv(documented)
        assert read == "42", f"{option.opts[0]} of `{ctx.command_path}` ignores {documented}"


def _read_by_the_code() -> set[str]:
    names = set()
    for ctx, option, _ in _options():  # what click reads: the automatic name and the option's own
        names.add(f"{ctx.auto_envvar_prefix}_{option.name.upper()}")
        names |= {option.envvar} if isinstance(option.envvar, str) else set(option.envvar or ())
    for pattern in _READERS:
        for path in REPO.glob(pattern):
            if path.is_file() and ".venv" not in path.parts:
                names |= set(_NAME.findall(path.read_text(errors="replace")))
    for path in REPO.glob("tests/**/*.py"):
        names |= set(_TEST_READ.findall(path.read_text()))
    return names


def _told() -> dict[str, set[str]]:
    told: dict[str, set[str]] = {}
    for pattern in _TOLD:
        for path in REPO.glob(pattern):
            if path.is_file():
                for name in _NAME.findall(path.read_text(errors="replace")):
                    told.setdefault(name, set()).add(str(path.relative_to(REPO)))
    return told


def test_every_setting_the_docs_manifests_and_terraform_name_is_one_the_code_reads():
    told = _told()
    assert {"KUBESONAR_SENSOR_QUEUE", "KUBESONAR_BACKEND_QUEUE", "KUBESONAR_STATE_BUCKET"} <= set(told)  # they are read
    unknown = {name: sorted(paths) for name, paths in told.items() if name not in _read_by_the_code()}
    assert not unknown, f"named but never read (a user setting it changes nothing): {unknown}"


@pytest.mark.parametrize("pattern", _TOLD)
def test_each_place_that_tells_exists(pattern):
    assert any(REPO.glob(pattern)), pattern
