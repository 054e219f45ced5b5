"""Allowlists: users silence expected behaviour in their own files, never by editing rules.

A file is a YAML list of entries (after Falco exceptions and Sigma filters)::

    - rule: port_scan                  # a rule id, or a list of them
      reason: prometheus scrapes every pod
      match:                           # all given fields must match the finding
        namespace: monitoring
        workload: Deployment/prometheus  # kind/name, or just the name
        label: app=prometheus            # one key=value of the source's labels
        cidr: 10.244.0.0/16              # the source address
        port: 9100                       # the destination port (or a range, 9100-9110)

Any mistake is a ConfigError naming the file and line.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kubesonar.shared.alerts import Finding, rules
from kubesonar.shared.config_text import compose_yaml, read_text
from kubesonar.shared.errors import ConfigError

_FIELDS = ("namespace", "workload", "label", "cidr", "port")


@dataclass(frozen=True)
class AllowEntry:
    rules: frozenset[str]
    reason: str
    namespace: str | None = None
    workload: str | None = None
    label: str | None = None
    cidr: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    ports: tuple[int, int] | None = None
    where: str = ""

    def matches(self, finding: Finding) -> bool:
        if finding.type not in self.rules:
            return False
        src = finding.source
        if self.namespace is not None and src.get("namespace") != self.namespace:
            return False
        if self.workload is not None:
            full = src.get("workload", "")  # namespace/kind/name
            kind_name = full.split("/", 1)[1] if full.count("/") >= 2 else full
            if self.workload not in (kind_name, kind_name.split("/")[-1] if kind_name else None):
                return False
        if self.label is not None and self.label not in src.get("labels", "").split(","):
            return False
        if self.cidr is not None:
            try:
                if ipaddress.ip_address(src.get("ip", "")) not in self.cidr:
                    return False
            except ValueError:
                return False
        if self.ports is not None:
            port = (finding.destination or {}).get("port")
            if port is None or not self.ports[0] <= int(port) <= self.ports[1]:
                return False
        return True


def is_allowed(finding: Finding, entries: list[AllowEntry]) -> bool:
    return any(e.matches(finding) for e in entries)


def load_allowlist(path: str | Path) -> list[AllowEntry]:
    name = str(path)
    root = compose_yaml(read_text(path, "allowlist"), name)
    if root is None:
        return []
    if not isinstance(root, yaml.SequenceNode):
        raise ConfigError(f"{name} line {root.start_mark.line + 1}: an allowlist is a list of entries")
    return [_entry(name, node) for node in root.value]


def _fail(name: str, node: yaml.Node, what: str) -> ConfigError:
    return ConfigError(f"{name} line {node.start_mark.line + 1}: {what}")


def _mapping(name: str, node: yaml.Node, what: str) -> dict[str, tuple[yaml.Node, Any]]:
    if not isinstance(node, yaml.MappingNode):
        raise _fail(name, node, f"{what} must be a mapping")
    out = {}
    for key, value in node.value:
        out[str(key.value)] = (key, value)
    return out


def _scalar(name: str, node: yaml.Node, field: str) -> str:
    if not isinstance(node, yaml.ScalarNode) or node.value == "":
        raise _fail(name, node, f"'{field}' needs a value")
    return str(node.value)


def _entry(name: str, node: yaml.Node) -> AllowEntry:
    fields = _mapping(name, node, "an allowlist entry")
    unknown = set(fields) - {"rule", "reason", "match"}
    if unknown:
        key = fields[sorted(unknown)[0]][0]
        raise _fail(name, key, f"unknown field '{key.value}' (an entry has rule, reason, match)")
    if "rule" not in fields:
        raise _fail(name, node, "an entry needs 'rule'")
    rule_node = fields["rule"][1]
    ids = [_scalar(name, n, "rule") for n in rule_node.value] if isinstance(rule_node, yaml.SequenceNode) \
        else [_scalar(name, rule_node, "rule")]
    for rid in ids:
        if rid not in rules():
            raise _fail(name, rule_node, f"unknown rule '{rid}' (known: {', '.join(sorted(rules()))})")
    reason = _scalar(name, fields["reason"][1], "reason") if "reason" in fields else ""
    values: dict[str, Any] = {}
    if "match" in fields:
        for key, (key_node, value_node) in _mapping(name, fields["match"][1], "'match'").items():
            if key not in _FIELDS:
                raise _fail(name, key_node, f"unknown match field '{key}' (known: {', '.join(_FIELDS)})")
            text = _scalar(name, value_node, key)
            values[key] = _parse(name, value_node, key, text)
    if not values:
        raise _fail(name, node, "an entry needs a 'match' with at least one field: it would silence the whole rule")
    ports = values.pop("port", None)
    return AllowEntry(rules=frozenset(ids), reason=reason, ports=ports, where=f"{name}:{node.start_mark.line + 1}",
                      **values)


def _parse(name: str, node: yaml.Node, key: str, text: str) -> Any:
    try:
        if key == "cidr":
            return ipaddress.ip_network(text, strict=False)
        if key == "port":
            lo, _, hi = text.partition("-")
            low, high = int(lo), int(hi or lo)
            if not 0 <= low <= high <= 65535:
                raise ValueError
            return (low, high)
        if key == "label" and "=" not in text:
            raise ValueError
    except ValueError:
        hint = {"cidr": "an address or network like 10.0.0.0/8", "port": "a port or a range like 8000-8100",
                "label": "key=value"}[key]
        raise _fail(name, node, f"'{key}: {text}' is not {hint}") from None
    return text
