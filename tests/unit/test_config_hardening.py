"""Hostile configuration and inventories (issue 19): alias bombs, deep nesting, non-UTF-8, wrong shapes.
Each is one ConfigError line naming the file and the fault; the CLI prints it and exits 1."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kubesonar.functions.local.store import LocalObjectStore
from kubesonar.shared.allowlist import load_allowlist
from kubesonar.shared.errors import ConfigError
from kubesonar.shared.inventory import PodInventory
from kubesonar.shared.watchlist import WatchlistLoader, parse_watchlist

REPO = Path(__file__).resolve().parents[2]
KUBESONAR = Path(sys.executable).with_name("kubesonar")

ALIAS_BOMB = "\n".join(
    ['- rule: port_scan\n  reason: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    + [f"- &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)])
GOOD_POD = {"metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"image": "web:1"}]},
            "status": {"podIP": "10.0.0.5"}}


def _pods(*items) -> str:
    return json.dumps({"kind": "List", "items": list(items)})


def _with(path: str, value) -> dict:
    pod = json.loads(json.dumps(GOOD_POD))
    outer, inner = path.split(".")
    pod[outer][inner] = value
    return pod


MALFORMED_PODS = {
    "a list": "[1, 2]",
    "a number": "5",
    "items not a list": '{"kind": "List", "items": {"a": 1}}',
    "a pod that is a string": _pods("pod"),
    "spec null and status a list": _pods({"metadata": {"name": "x"}, "spec": None, "status": []}),
    "metadata a string": _pods({"metadata": "x"}),
    "a bad pod IP": _pods(_with("status.podIP", "10.0.0.999")),
    "podIPs a string": _pods(_with("status.podIPs", "10.0.0.1")),
    "podIPs of strings": _pods(_with("status.podIPs", ["10.0.0.1"])),
    "labels a list": _pods(_with("metadata.labels", ["a=b"])),
    "ownerReferences of strings": _pods(_with("metadata.ownerReferences", ["ReplicaSet"])),
    "containers an object": _pods(_with("spec.containers", {"image": "x"})),
    "a namespace that is a number": _pods(_with("metadata.namespace", 7)),
    "an owner that is a number": _pods(_with("metadata.ownerReferences", [{"kind": "ReplicaSet", "name": 5}])),
    "nested 100,000 deep": '{"kind": "List", "items": [' + "[" * 100_000 + "]" * 100_000 + "]}",
}


@pytest.mark.parametrize("fault", sorted(MALFORMED_PODS))
def test_a_malformed_pod_list_is_one_clear_error(tmp_path, fault):
    path = tmp_path / "pods.json"
    path.write_text(MALFORMED_PODS[fault])
    with pytest.raises(ConfigError) as info:
        PodInventory.load(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_a_pod_list_that_is_not_utf8_or_a_directory(tmp_path):
    (tmp_path / "pods.json").write_bytes(b'{"kind": "List", "items": [{"metadata": {"name": "\xff"}}]}')
    with pytest.raises(ConfigError, match="not UTF-8"):
        PodInventory.load(tmp_path / "pods.json")
    with pytest.raises(ConfigError, match="cannot read pod inventory"):
        PodInventory.load(tmp_path)


def test_nulls_where_the_api_may_print_them_load(tmp_path):
    """Found by the fuzzer: an owner whose name is null raised AttributeError."""
    pod = _with("metadata.ownerReferences", [{"kind": "ReplicaSet", "name": None}])
    pod["spec"]["nodeName"] = None
    (tmp_path / "pods.json").write_text(_pods(pod))
    inventory = PodInventory.load(tmp_path / "pods.json")
    assert len(inventory) == 1


def test_a_good_pod_list_still_loads(tmp_path):
    (tmp_path / "pods.json").write_text(_pods(GOOD_POD, {**GOOD_POD, "spec": None, "status": None}))
    assert len(PodInventory.load(tmp_path / "pods.json")) == 1


@pytest.mark.parametrize("text, fault", [
    (ALIAS_BOMB, "aliases"),
    ("- " + "[" * 20_000 + "]" * 20_000, "nested deeper"),
    ("- rule: port_scan\n  match: " + "{a: " * 20_000 + "1" + "}" * 20_000, "nested deeper"),
])
def test_hostile_yaml_allowlists_fail_fast(tmp_path, text, fault):
    path = tmp_path / "allow.yaml"
    path.write_text(text)
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=fault) as info:
        load_allowlist(path)
    assert time.perf_counter() - started < 5 and str(path) in str(info.value)


def test_an_allowlist_that_is_not_utf8(tmp_path):
    (tmp_path / "allow.yaml").write_bytes(b"- rule: port_scan\n  reason: caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_allowlist(tmp_path / "allow.yaml")


def test_a_watchlist_nested_100000_deep_is_reported_and_skipped(tmp_path):
    store = LocalObjectStore(tmp_path)
    store.put("watchlists/deep.json", ("[" * 100_000 + "]" * 100_000).encode())
    store.put("watchlists/ok.json", json.dumps({"entries": [{"indicator": "203.0.113.7"}]}).encode())
    entries, errors = WatchlistLoader().load(store)
    assert [e.indicator for e in entries] == ["203.0.113.7"]
    assert len(errors) == 1 and "deep" in errors[0] and "nested too deeply" in errors[0]


@pytest.mark.parametrize("data", [b"\xff\xfe", b'{"entries": [{"indicator": "x.example", "expires": "99999-01-01"}]}',
                                  b'{"entries": [{"indicator": 5}]}', b"null"])
def test_other_broken_watchlists_are_config_errors(data):
    with pytest.raises(ConfigError):
        parse_watchlist(data, "w")


@pytest.mark.parametrize("option, name, content", [
    ("--pods", "pods.json", MALFORMED_PODS["spec null and status a list"].encode()),
    ("--pods", "pods.json", b"\xff\xff"),
    ("--allowlist", "allow.yaml", ALIAS_BOMB.encode()),
])
def test_the_cli_prints_one_line_and_exits_1(tmp_path, option, name, content):
    (tmp_path / name).write_bytes(content)
    done = subprocess.run([str(KUBESONAR), "analyze", option, str(tmp_path / name),
                           str(REPO / "examples/cluster-traffic.pcap")], capture_output=True, timeout=180, check=False)
    lines = done.stderr.decode().strip().splitlines()
    assert done.returncode == 1, done.stderr.decode()
    assert len(lines) == 1 and lines[0].startswith("kubesonar: error:") and name in lines[0]
