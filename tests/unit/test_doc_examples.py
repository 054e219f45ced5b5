"""The examples the pages show are what the code does: every flag a page gives a `kubesonar` command is one
that command takes, the error a page quotes for a mistake in its own example document is the error that
mistake gives, and the flow-format page's header names the schema the encoder writes. A user who copies the
example and makes the mistake should read the message the page promised, line number included."""

from __future__ import annotations

import re

import click
import pytest

from kubesonar.cli import main
from kubesonar.shared.errors import ConfigError

from conftest import REPO

PAGES = sorted([REPO / "README.md", *REPO.glob("docs/*.md"), *REPO.glob("infra/**/README.md"),
                *REPO.glob("functions/*/README.md")])
# `kubesonar COMMAND [SUBCOMMAND] ...` up to the end of the command line, a comment or a code span
_COMMAND_LINE = re.compile(r"kubesonar ((?:[a-z]+ ?){1,2})([^`|#;&]*)")


def _commands_shown(page: str) -> list[tuple[click.Command, str, str]]:
    """(command, its words, what follows them on the line) for each `kubesonar ...` a page shows."""
    shown = []
    for line in page.replace("\\\n", " ").splitlines():  # a shell line continued with a backslash is one
        for match in _COMMAND_LINE.finditer(line):
            command, words = main, []
            for word in match.group(1).split():
                if not (isinstance(command, click.Group) and word in command.commands):
                    break
                command, words = command.commands[word], [*words, word]
            if words:
                rest = " ".join(match.group(1).split()[len(words):]) + " " + match.group(2)
                shown.append((command, " ".join(words), rest))
    return shown


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_flag_a_page_gives_a_command_is_one_it_takes(page):
    unknown = []
    for command, words, rest in _commands_shown(page.read_text()):
        takes = {o for p in command.params for o in [*p.opts, *p.secondary_opts]} | {"--help"}
        unknown += [f"kubesonar {words} {flag}" for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", rest)
                    if flag not in takes]
    assert not unknown, unknown


def test_the_pages_show_commands_with_flags():
    shown = [c for p in PAGES for c in _commands_shown(p.read_text())]
    assert len(shown) > 50 and any(words == "alerts update" and "--allowlist" in rest for _, words, rest in shown)


def _page(name: str) -> str:
    return (REPO / "docs" / name).read_text()


def _first_block(page: str, language: str) -> str:
    return page.split(f"```{language}\n", 1)[1].split("```", 1)[0]


def test_the_allowlist_error_quoted_is_the_one_the_example_gives(tmp_path):
    from kubesonar.shared.allowlist import load_allowlist

    page = _page("allowlists.md")
    quoted = re.search(r"`(allow\.yaml line \d+: unknown match field 'namspace'[^`]*)`", page).group(1)
    (tmp_path / "allow.yaml").write_text(_first_block(page, "yaml").replace("namespace:", "namspace:", 1))
    with pytest.raises(ConfigError) as raised:
        load_allowlist(tmp_path / "allow.yaml")
    assert str(raised.value).replace(str(tmp_path / "allow.yaml"), "allow.yaml") == quoted


def test_the_routing_error_quoted_is_the_one_the_example_gives():
    from kubesonar.shared.notify.routing import parse_routing

    page = _page("notifications.md")
    quoted = re.search(r"`(config/routing\.yaml line \d+: min_severity must be one of [^`]*)`", page).group(1)
    example = _first_block(page, "yaml")
    env = {"SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/x", "TEAMS_WORKFLOW_URL": "https://t.example/w",
           "KUBESONAR_WEBHOOK_SECRET": "s"}
    parse_routing(example, env=env)  # the example itself is valid
    with pytest.raises(ConfigError) as raised:
        parse_routing(example.replace("min_severity: high", "min_severity: hihg", 1), env=env)
    assert str(raised.value) == quoted


def test_the_flow_format_header_names_the_schema_written():
    from kubesonar.shared.flow import FLOW_SCHEMA_VERSION, SCHEMA_COLUMNS

    page = _page("flow-format.md")
    assert f"flow schema version {FLOW_SCHEMA_VERSION}." in page
    row = re.search(r"\| 2 \| flow schema version \((\d+); (\d+) to (\d+) still read\) \|", page)
    assert row, "the header table's schema row"
    written, oldest, newest_old = map(int, row.groups())
    assert written == FLOW_SCHEMA_VERSION
    assert list(range(oldest, newest_old + 1)) == [v for v in SCHEMA_COLUMNS if v != FLOW_SCHEMA_VERSION]
