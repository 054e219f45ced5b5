"""Where notifications go: a YAML document in the store, ``config/routing.yaml``::

    console_url: https://kubesonar.example.internal   # optional: alerts link to the console
    destinations:
      - name: soc-slack                # unique; the alert remembers which names confirmed
        kind: slack                    # slack | teams | webhook
        url_env: SLACK_WEBHOOK_URL     # or url: https://hooks.slack.com/services/...
        min_severity: high             # optional, default informational
        types: [port_scan, crypto_mining]   # optional: only these alert types or rules
        namespaces: [shop, payments]   # optional: only alerts from these namespaces
        rate_limit: 10                 # optional: messages per window, then one digest
        window: 10m                    # optional, default 10m
      - name: siem
        kind: webhook
        url: https://siem.example/kubesonar
        secret_env: KUBESONAR_WEBHOOK_SECRET   # or secret: ...; signs each request (docs/notifications.md)

A mistake is a ConfigError naming the line. The cloud's own topic (SNS, Pub/Sub, Event Grid) always
gets every notification, as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import yaml

from kubesonar.shared.alerts import SEVERITIES, alert_names, names_alert, rules
from kubesonar.shared.errors import ConfigError
from kubesonar.shared.per_store import PerStore
from kubesonar.shared.ports import ObjectStore

ROUTING_KEY = "config/routing.yaml"
KINDS = ("slack", "teams", "webhook")
_FIELDS = ("name", "kind", "url", "url_env", "secret", "secret_env", "min_severity", "types", "namespaces",
           "rate_limit", "window")
_FRESH_S = 60.0


@dataclass(frozen=True)
class Destination:
    name: str
    kind: str
    url: str
    secret: str = ""
    min_severity: str = "informational"
    types: frozenset[str] = frozenset()
    namespaces: frozenset[str] = frozenset()
    rate_limit: int = 0  # 0: none
    window_s: int = 600

    def wants(self, alert: dict[str, Any]) -> bool:
        if SEVERITIES.index(alert["severity"]) < SEVERITIES.index(self.min_severity):
            return False
        if self.types and not names_alert(self.types, alert):
            return False
        return not self.namespaces or (alert.get("source") or {}).get("namespace") in self.namespaces


@dataclass(frozen=True)
class Routing:
    destinations: tuple[Destination, ...] = ()
    console_url: str = ""


def parse_routing(text: str, name: str = ROUTING_KEY, env: dict[str, str] | None = None) -> Routing:
    env = os.environ if env is None else env
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"{name}{f' line {mark.line + 1}' if mark else ''}: not valid YAML: "
                          f"{getattr(exc, 'problem', exc)}") from None
    if root is None:
        return Routing()
    top = _mapping(name, root, "the routing document")
    unknown = set(top) - {"console_url", "destinations"}
    if unknown:
        raise _fail(name, top[min(unknown)][0], f"unknown field '{min(unknown)}' "
                    "(known: console_url, destinations)")
    console = _scalar(name, top["console_url"][1], "console_url") if "console_url" in top else ""
    dests: list[Destination] = []
    if "destinations" in top:
        node = top["destinations"][1]
        if not isinstance(node, yaml.SequenceNode):
            raise _fail(name, node, "'destinations' must be a list")
        for item in node.value:
            dest = _destination(name, item, env)
            if any(d.name == dest.name for d in dests):
                raise _fail(name, item, f"destination name '{dest.name}' is used twice")
            dests.append(dest)
    return Routing(tuple(dests), console.rstrip("/"))


def _fail(name: str, node: yaml.Node, what: str) -> ConfigError:
    return ConfigError(f"{name} line {node.start_mark.line + 1}: {what}")


def _mapping(name: str, node: yaml.Node, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise _fail(name, node, f"{what} must be a mapping")
    return {str(k.value): (k, v) for k, v in node.value}


def _scalar(name: str, node: yaml.Node, field: str) -> str:
    if not isinstance(node, yaml.ScalarNode) or str(node.value).strip() == "":
        raise _fail(name, node, f"'{field}' needs a value")
    return str(node.value).strip()


def _names(name: str, node: yaml.Node, field: str) -> frozenset[str]:
    items = node.value if isinstance(node, yaml.SequenceNode) else [node]
    return frozenset(_scalar(name, n, field) for n in items)


def _destination(name: str, node: yaml.Node, env: Any) -> Destination:
    from kubesonar.shared.errors import TriageError
    from kubesonar.shared.triage import parse_duration_s

    fields = _mapping(name, node, "a destination")
    for key, (key_node, _) in fields.items():
        if key not in _FIELDS:
            raise _fail(name, key_node, f"unknown field '{key}' (known: {', '.join(_FIELDS)})")
    for required in ("name", "kind"):
        if required not in fields:
            raise _fail(name, node, f"a destination needs '{required}'")
    value = {k: v for k, (_, v) in fields.items()}
    kind = _scalar(name, value["kind"], "kind")
    if kind not in KINDS:
        raise _fail(name, value["kind"], f"kind '{kind}' is not one of {', '.join(KINDS)}")
    url = _from_env(name, value, "url", env)
    if not url:
        raise _fail(name, node, "a destination needs 'url' or 'url_env'")
    if not url.startswith(("https://", "http://")):
        raise _fail(name, value.get("url", value.get("url_env")), "the url must start with https:// or http://")
    secret = _from_env(name, value, "secret", env)
    if kind == "webhook" and not secret:
        raise _fail(name, node, "a webhook needs 'secret' or 'secret_env': receivers must be able to reject forgeries")
    options: dict[str, Any] = {}
    if "min_severity" in value:
        options["min_severity"] = _scalar(name, value["min_severity"], "min_severity")
        if options["min_severity"] not in SEVERITIES:
            raise _fail(name, value["min_severity"], f"min_severity must be one of {', '.join(SEVERITIES)}")
    if "types" in value:
        options["types"] = _names(name, value["types"], "types")
        wrong = sorted(options["types"] - alert_names())
        if wrong:
            raise _fail(name, value["types"], f"unknown type or rule '{wrong[0]}' (known: "
                        f"{', '.join(sorted(rules()))}; or TYPE/RULE, as beaconing/beaconing)")
    if "namespaces" in value:
        options["namespaces"] = _names(name, value["namespaces"], "namespaces")
    if "rate_limit" in value:
        text = _scalar(name, value["rate_limit"], "rate_limit")
        if not text.isdigit():
            raise _fail(name, value["rate_limit"], "rate_limit is a whole number of messages per window")
        options["rate_limit"] = int(text)
    if "window" in value:
        try:
            options["window_s"] = parse_duration_s(_scalar(name, value["window"], "window"))
        except TriageError as exc:
            raise _fail(name, value["window"], str(exc)) from None
    return Destination(_scalar(name, value["name"], "name"), kind, url, secret, **options)


def _from_env(name: str, value: dict[str, yaml.Node], field: str, env: Any) -> str:
    if field in value:
        return _scalar(name, value[field], field)
    if f"{field}_env" in value:
        var = _scalar(name, value[f"{field}_env"], f"{field}_env")
        if not env.get(var):
            raise _fail(name, value[f"{field}_env"], f"environment variable {var} is not set")
        return env[var]
    return ""


class RoutingLoader:
    """The routing document, re-read at most once per freshness bound per store; a broken document is
    reported and routes nowhere but the topic until it is fixed."""

    def __init__(self, fresh_s: float = _FRESH_S) -> None:
        self._cache: PerStore[tuple[Routing, list[str]]] = PerStore(fresh_s)

    def load(self, store: ObjectStore) -> tuple[Routing, list[str]]:
        cached = self._cache.get(store)
        if cached is not None:
            return cached
        obj = store.get(ROUTING_KEY)
        routing, errors = Routing(), []
        if obj is not None:
            try:
                routing = parse_routing(obj.data.decode("utf-8", "replace"))
            except ConfigError as exc:
                errors.append(str(exc))
        self._cache.put(store, (routing, errors))
        return routing, errors

    def forget(self) -> None:
        self._cache.clear()


ROUTING = RoutingLoader()
