"""The entry point's plain ``flows`` form, read without click: it takes only what click takes as it is."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kubesonar.cli import _plain_flows

from conftest import PCAPS

CAPTURE = str(PCAPS / "portscan/evilfingers_nmap_UDP_SCAN.pcap")


def test_the_plain_form_is_read_here():
    assert _plain_flows(["flows", "--format", "jsonl", CAPTURE]) == ((CAPTURE,), {})
    assert _plain_flows(["flows", CAPTURE, "--idle-timeout", "5", "--format", "jsonl", "-",
                         "--active-timeout", "1e3"]) == ((CAPTURE, "-"), {"idle_s": 5.0, "active_s": 1000.0})


@pytest.mark.parametrize("args", [
    [], ["analyze", CAPTURE], ["flows", CAPTURE], ["flows", "--format", "csv", CAPTURE],
    ["flows", "--format=jsonl", CAPTURE], ["flows", "--format", "jsonl", "--format", "jsonl", CAPTURE],
    ["flows", "--format", "jsonl"], ["flows", "--format", "jsonl", "--help", CAPTURE],
    ["flows", "--format", "jsonl", "--", CAPTURE], ["flows", "--format", "jsonl", "--idle-timeout"],
    ["flows", "--format", "jsonl", "--idle-timeout", "0", CAPTURE],
    ["flows", "--format", "jsonl", "--idle-timeout", "nan", CAPTURE],
    ["flows", "--format", "jsonl", "--idle-timeout", "soon", CAPTURE],
    ["flows", "--format", "jsonl", os.path.dirname(__file__)], ["flows", "--format", "jsonl", "caf\u00e9.pcap"],
])
def test_every_other_form_goes_to_click(args):
    assert _plain_flows(args) is None


@pytest.mark.parametrize("name", ["KUBESONAR_FLOWS_IDLE_TIMEOUT", "KUBESONAR_VERSION", "_KUBESONAR_COMPLETE"])
def test_a_setting_click_would_read_from_the_environment_goes_to_click(monkeypatch, name):
    monkeypatch.setenv(name, "1")
    assert _plain_flows(["flows", "--format", "jsonl", CAPTURE]) is None


def _kubesonar(*args: str, env: dict[str, str] | None = None) -> tuple[int, bytes, bytes, bytes]:
    """Status, output and errors of the command, and whether it loaded click."""
    code = ("import sys\nfrom kubesonar.cli import run\nsys.argv[0] = 'kubesonar'\ntry:\n    run()\n"
            "finally:\n    print('click' in sys.modules, file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code, "flows", *args], capture_output=True,
                          env={**os.environ, **(env or {})}, check=False)
    stderr, _, loaded = done.stderr.rstrip(b"\n").rpartition(b"\n")
    return done.returncode, done.stdout, stderr, loaded


def test_the_plain_form_writes_what_the_click_command_writes_without_loading_click(tmp_path):
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(open(CAPTURE, "rb").read()[:3000])  # flows, then an error
    args = ["--format", "jsonl", "--idle-timeout", "60", CAPTURE, str(cut), str(tmp_path / "missing.pcap")]
    plain = _kubesonar(*args)
    by_click = _kubesonar(*args, env={"KUBESONAR_FLOWS_ACTIVE_TIMEOUT": "300"})  # the default, from click
    assert (plain[3], by_click[3]) == (b"False", b"True")
    assert plain[:3] == by_click[:3]
    assert plain[0] == 1 and plain[1].count(b"\n") > 10 and plain[2].count(b"kubesonar: error:") == 2
