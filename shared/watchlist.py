"""User watchlists: IP addresses, networks and domains to be told about, kept in the object store.

Layout: ``watchlists/<name>.json`` in the state bucket, each::

    {"entries": [{"indicator": "203.0.113.7", "reason": "C2 from vendor feed", "expires": "2026-12-31T00:00:00Z"},
                 {"indicator": "198.51.100.0/24"}, {"indicator": "pool.evil.example"}]}

An indicator is an IP address, a CIDR network or a domain (which covers its subdomains). ``expires``
(ISO 8601, optional) ends an entry: traffic after it no longer matches. A watchlist that does not
parse is reported (and counted) and skipped; the others still apply.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubesonar.shared.config_text import load_json
from kubesonar.shared.errors import ConfigError
from kubesonar.shared.ports import ObjectStore

PREFIX = "watchlists/"
_CACHE_S = 60.0  # a function instance re-reads the lists at most once a minute


@dataclass(frozen=True)
class WatchEntry:
    indicator: str  # normalised: an address, a network or a lower-case domain
    kind: str  # "ip", "network" or "domain"
    list_name: str
    reason: str = ""
    expires_ns: int | None = None

    def active(self, at_ns: int) -> bool:
        return self.expires_ns is None or at_ns < self.expires_ns


def parse_entry(raw: Any, list_name: str, where: str) -> WatchEntry:
    if not isinstance(raw, dict) or not isinstance(raw.get("indicator"), str) or not raw["indicator"].strip():
        raise ConfigError(f"{where}: an entry needs an 'indicator' (IP, CIDR or domain)")
    text = raw["indicator"].strip().lower().rstrip(".")
    expires = raw.get("expires")
    expires_ns = None
    if expires is not None:
        try:
            expires_ns = int(datetime.fromisoformat(str(expires).replace("Z", "+00:00")).timestamp() * 1e9)
        except (ValueError, OverflowError):
            raise ConfigError(f"{where}: expires {str(expires)[:60]!r} is not an ISO 8601 time") from None
    try:
        if "/" in text:
            kind, text = "network", str(ipaddress.ip_network(text, strict=False))
        else:
            kind, text = "ip", str(ipaddress.ip_address(text))
    except ValueError:
        if "/" in text or not all(label and len(label) <= 63 for label in text.split(".")):
            raise ConfigError(f"{where}: {raw['indicator']!r} is neither an IP, a network nor a domain") from None
        kind = "domain"
    return WatchEntry(text, kind, list_name, str(raw.get("reason", "")), expires_ns)


def parse_watchlist(data: bytes, name: str) -> list[WatchEntry]:
    doc = load_json(data, f"watchlist {name}")
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        raise ConfigError(f"watchlist {name}: expected an object with an 'entries' list")
    return [parse_entry(e, name, f"watchlist {name} entry {i + 1}") for i, e in enumerate(doc["entries"])]


class WatchlistLoader:
    """Reads every watchlist under ``watchlists/``, at most once a minute per store."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[float, list[WatchEntry], list[str]]] = {}

    def load(self, store: ObjectStore) -> tuple[list[WatchEntry], list[str]]:
        """(entries, errors); a broken list is an error message, never a crash."""
        cached = self._cache.get(id(store))
        if cached and time.monotonic() - cached[0] < _CACHE_S:
            return cached[1], cached[2]
        entries: list[WatchEntry] = []
        errors: list[str] = []
        for key in sorted(store.list(PREFIX)):
            if not key.endswith(".json"):
                continue
            obj = store.get(key)
            if obj is None:
                continue
            name = key[len(PREFIX) : -len(".json")]
            try:
                entries += parse_watchlist(obj.data, name)
            except ConfigError as exc:
                errors.append(str(exc))
        self._cache[id(store)] = (time.monotonic(), entries, errors)
        return entries, errors

    def forget(self) -> None:
        self._cache.clear()


LOADER = WatchlistLoader()
