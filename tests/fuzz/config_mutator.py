"""Malformed allowlists (YAML), watchlists and pod lists (JSON): hostile shapes, values and encodings."""

from __future__ import annotations

import json
import random

GOOD_ALLOWLIST = """- rule: port_scan
  reason: prometheus scrapes every pod
  match:
    namespace: monitoring
    cidr: 10.244.0.0/16
    port: 9100-9110
"""
GOOD_WATCHLIST = {"entries": [{"indicator": "203.0.113.7", "reason": "c2", "expires": "2030-01-01T00:00:00Z"},
                              {"indicator": "198.51.100.0/24"}, {"indicator": "pool.evil.example"}]}
GOOD_PODS = {"kind": "List", "items": [
    {"metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web", "pod-template-hash": "abc"},
                  "ownerReferences": [{"kind": "ReplicaSet", "name": "web-abc", "controller": True}]},
     "spec": {"nodeName": "n1", "containers": [{"image": "web:1"}], "serviceAccountName": "web"},
     "status": {"podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}]}}]}

HOSTILE_VALUES = [None, True, 0, -1, 2**64, 1e308, float("nan"), "", "x" * 5000, "\u202e", "10.0.0.999",
                  "::ffff:1.2.3.4", [], {}, [None], {"a": {"b": {}}}, "2030-13-45", "../../etc/passwd",
                  "a" * 64 + ".example"]
YAML_SNIPPETS = ["&a [*a]", "!!python/object:os.system ls", "{a: 1, a: 2}", "? [a]\n: b", "- !!binary AAAA",
                 "--- \n--- \n", "\t- rule: x", "- rule: port_scan\n  match: {port: 99999}", "%YAML 9.9\n---\n- 1",
                 "- rule: [port_scan, port_scan]\n  match: {cidr: 300.0.0.0/8}", "- " + "[" * 70 + "]" * 70,
                 "- &x {rule: port_scan}\n- *x\n- *x", "\ufeff- rule: port_scan",
                 "- rule: port_scan\n  match:\n    label: noeq"]


def _replace_somewhere(doc, rng: random.Random):
    """``doc`` with one value, anywhere in it, replaced by a hostile one."""
    if isinstance(doc, dict) and doc and rng.random() < 0.8:
        key = rng.choice(list(doc))
        return {**doc, key: _replace_somewhere(doc[key], rng)}
    if isinstance(doc, list) and doc and rng.random() < 0.8:
        i = rng.randrange(len(doc))
        return doc[:i] + [_replace_somewhere(doc[i], rng)] + doc[i + 1 :]
    return rng.choice(HOSTILE_VALUES)


def _deep(rng: random.Random) -> bytes:
    depth = rng.choice([100, 2000, 20_000, 100_000])
    return ("[" * depth + "]" * depth).encode()


def mutate_json(good: dict, rng: random.Random) -> bytes:
    choice = rng.randrange(6)
    if choice == 0:
        return _deep(rng)
    if choice == 1:
        return json.dumps(good).encode()[: rng.randrange(len(json.dumps(good)))]
    if choice == 2:
        return json.dumps(good).encode().replace(b"e", b"\xe9", 1)
    return json.dumps(_replace_somewhere(good, rng), allow_nan=True).encode()


def mutate_allowlist(rng: random.Random) -> bytes:
    choice = rng.randrange(5)
    if choice == 0:
        return rng.choice(YAML_SNIPPETS).encode()
    if choice == 1:
        return GOOD_ALLOWLIST.encode()[: rng.randrange(len(GOOD_ALLOWLIST))]
    if choice == 2:
        return GOOD_ALLOWLIST.encode().replace(b"monitoring", b"monit\xe9ring", 1)  # latin-1, not UTF-8
    if choice == 3:
        lines = GOOD_ALLOWLIST.splitlines()
        i = rng.randrange(len(lines))
        lines[i] = lines[i].split(":")[0] + ": " + json.dumps(rng.choice(HOSTILE_VALUES), allow_nan=True)
        return "\n".join(lines).encode()
    return (GOOD_ALLOWLIST + rng.choice(YAML_SNIPPETS)).encode()
