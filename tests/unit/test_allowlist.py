"""Allowlist files: what they silence, and clear errors naming the line."""

from __future__ import annotations

import subprocess

import pytest

from kubesonar.compose import analyze
from kubesonar.shared.alerts import Finding
from kubesonar.shared.allowlist import is_allowed, load_allowlist
from kubesonar.shared.errors import ConfigError

from conftest import PCAPS

SCAN = str(PCAPS / "portscan/evilfingers_nmap_TCP_SYN_SCAN.pcap")


def _finding(**source):
    base = {"ip": "10.244.1.7", "namespace": "monitoring", "workload": "monitoring/Deployment/prometheus",
            "labels": "app=prometheus,tier=ops"}
    return Finding("port_scan", dict(base, **source), 0, 0, {}, destination={"port": 9100})


@pytest.mark.parametrize(
    "match, allowed",
    [
        ("namespace: monitoring", True),
        ("namespace: shop", False),
        ("workload: Deployment/prometheus", True),
        ("workload: prometheus", True),
        ("workload: StatefulSet/prometheus", False),
        ("label: app=prometheus", True),
        ("label: app=web", False),
        ("cidr: 10.244.0.0/16", True),
        ("cidr: 10.245.0.0/16", False),
        ("port: 9100", True),
        ("port: 9000-9099", False),
        ("{namespace: monitoring, label: tier=ops, port: 9000-9200}", True),
    ],
)
def test_matching(tmp_path, match, allowed):
    flow = match if match.startswith("{") else "{" + match + "}"
    (tmp_path / "a.yaml").write_text(f"- rule: port_scan\n  reason: scrapes\n  match: {flow}\n")
    assert is_allowed(_finding(), load_allowlist(tmp_path / "a.yaml")) is allowed


def test_an_entry_only_silences_its_rules(tmp_path):
    (tmp_path / "a.yaml").write_text("- rule: [new_workload]\n  match: {namespace: monitoring}\n")
    assert not is_allowed(_finding(), load_allowlist(tmp_path / "a.yaml"))


@pytest.mark.parametrize(
    "text, line, says",
    [
        ("- rule: port_scan\n  match:\n    namspace: x\n", 3, "unknown match field 'namspace'"),
        ("- rule: port_scam\n  match: {namespace: x}\n", 1, "unknown rule 'port_scam'"),
        ("- rule: port_scan\n  match: {cidr: 10.0.0.999/8}\n", 2, "is not an address or network"),
        ("- rule: port_scan\n  match: {port: 70000}\n", 2, "is not a port"),
        ("- rule: port_scan\n  match: {label: app}\n", 2, "key=value"),
        ("- rule: port_scan\n", 1, "at least one field"),
        ("- rule: port_scan\n  match: {namespace: x}\n  colour: red\n", 3, "unknown field 'colour'"),
        ("rule: port_scan\n", 1, "a list of entries"),
        ("- rule: port_scan\n  match: {namespace: [x\n", 3, "not valid YAML"),
    ],
)
def test_a_bad_file_is_a_clear_error_naming_the_line(tmp_path, text, line, says):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_allowlist(tmp_path / "bad.yaml")
    assert f"bad.yaml line {line}:" in str(err.value) and says in str(err.value)


def test_allowlisted_scanner_raises_nothing_through_the_pipeline(tmp_path):
    (tmp_path / "a.yaml").write_text("- rule: port_scan\n  reason: our vulnerability scanner\n  match: {cidr: 192.168.1.10/32}\n")
    assert analyze([SCAN], allowlists=[str(tmp_path / "a.yaml")]).alerts == []
    (tmp_path / "b.yaml").write_text("- rule: port_scan\n  match: {cidr: 192.168.2.0/24}\n")
    assert len(analyze([SCAN], allowlists=[str(tmp_path / "b.yaml")]).alerts) == 1


def test_the_cli_reports_a_bad_allowlist_in_one_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("- rule: port_scan\n  match: {port: http}\n")
    out = subprocess.run(["kubesonar", "analyze", "--allowlist", str(tmp_path / "bad.yaml"), SCAN],
                         capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "bad.yaml line 2" in out.stderr


@pytest.mark.parametrize("before, number, after", [
    # an indented list, the dash alone on its line, a block scalar with a blank line in it
    ("  # mine\n  - rule: port_scan\n    match: {namespace: a}\n  -\n    rule: port_scan\n    reason: |\n      two\n\n"
     "      lines\n    match: {namespace: b}\n", 2, "  # mine\n  - rule: port_scan\n    match: {namespace: a}\n"),
    # Windows line ends stay as they were
    ("# a\r\n- rule: port_scan\r\n  match: {namespace: a}\r\n# b\r\n- rule: port_scan\r\n  match: {namespace: b}\r\n",
     1, "# b\r\n- rule: port_scan\r\n  match: {namespace: b}\r\n"),
    # the last entry of a file with no final line end
    ("- rule: port_scan\n  match: {namespace: a}\n- rule: port_scan\n  match: {namespace: b}", 2,
     "- rule: port_scan\n  match: {namespace: a}\n"),
    # a list in flow style has no lines per entry: written anew
    ("[{rule: port_scan, match: {namespace: a}}, {rule: port_scan, match: {namespace: b}}]\n", 1,
     "- rule: port_scan\n  match:\n    namespace: b\n"),
])
def test_remove_keeps_every_line_but_the_entrys(tmp_path, before, number, after):
    from kubesonar.functions.local.store import LocalObjectStore
    from kubesonar.shared.lists_store import allowlist_key, remove_allow_entry

    store = LocalObjectStore(tmp_path)
    store.put(allowlist_key("x"), before.encode())
    remove_allow_entry(store, "x", number)
    assert store.get(allowlist_key("x")).data.decode() == after
