"""User watchlists: IP addresses, networks and domains to be told about, kept in the object store.

Layout: ``watchlists/<name>.json`` in the state bucket, each::

    {"entries": [{"indicator": "203.0.113.7", "reason": "C2 from vendor feed", "expires": "2026-12-31T00:00:00Z"},
                 {"indicator": "198.51.100.0/24"}, {"indicator": "pool.evil.example"}]}

An indicator is an IP address, a CIDR network or a domain (which covers its subdomains), or, with
``"kind": "ja3"`` or ``"ja4"``, a TLS client fingerprint (the JA3 MD5 hex, the JA4 string). ``expires``
(ISO 8601, optional) ends an entry: traffic after it no longer matches.

Known-bad TLS client fingerprints also come as ``watchlists/<name>.csv`` in abuse.ch SSLBL's JA3
format, as downloaded (it is read from the store: nothing is fetched at scoring time)::

    # ja3_md5,Firstseen,Lastseen,Listingreason
    b386946a5a44d1ddcc843bc75336dfce,2017-07-14 18:08:15,2019-07-27 20:42:54,Dridex

Lines starting with ``#`` are comments; each other line is one fingerprint, its listing reason kept.
A watchlist that does not parse is reported (and counted) with the line at fault, and skipped; the
others still apply.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubesonar.shared.config_text import load_json
from kubesonar.shared.errors import ConfigError
from kubesonar.shared.per_store import PerStore
from kubesonar.shared.ports import ObjectStore

PREFIX = "watchlists/"
_CACHE_S = 60.0  # a function instance re-reads the lists at most once a minute


@dataclass(frozen=True)
class WatchEntry:
    indicator: str  # normalised: an address, a network, a lower-case domain or fingerprint
    kind: str  # "ip", "network", "domain", "ja3" or "ja4"
    list_name: str
    reason: str = ""
    expires_ns: int | None = None

    def active(self, at_ns: int) -> bool:
        return self.expires_ns is None or at_ns < self.expires_ns


def parse_entry(raw: Any, list_name: str, where: str) -> WatchEntry:
    if not isinstance(raw, dict) or not isinstance(raw.get("indicator"), str) or not raw["indicator"].strip():
        raise ConfigError(f"{where}: an entry needs an 'indicator' (IP, CIDR or domain)")
    text = raw["indicator"].strip().lower().rstrip(".")
    if raw.get("kind") in FINGERPRINT_KINDS:
        return WatchEntry(fingerprint(text, raw["kind"], where), raw["kind"], list_name, str(raw.get("reason", "")),
                          _expiry(raw.get("expires"), where))
    if raw.get("kind") is not None and raw.get("kind") not in ("ip", "network", "domain"):
        raise ConfigError(f"{where}: kind {str(raw['kind'])[:40]!r} is none of ip, network, domain, ja3, ja4")
    expires_ns = _expiry(raw.get("expires"), where)
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


FINGERPRINT_KINDS = ("ja3", "ja4")
_JA3 = re.compile(r"^[0-9a-f]{32}$")
_JA4 = re.compile(r"^[tqd][0-9a-z]{2}[di][0-9]{4}[0-9a-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}$")


def fingerprint(text: str, kind: str, where: str) -> str:
    """A JA3 MD5 (32 hex digits) or a JA4 string (``t13d1516h2_8daaf6152771_e5627efa2ab1``), lower-case."""
    text = text.strip().lower()
    if not (_JA3 if kind == "ja3" else _JA4).match(text):
        raise ConfigError(f"{where}: {text[:80]!r} is not a {kind.upper()} fingerprint")
    return text


def parse_sslbl_csv(data: bytes, name: str) -> list[WatchEntry]:
    """abuse.ch SSLBL's JA3 list: ``ja3_md5,Firstseen,Lastseen,Listingreason`` lines, ``#`` comments."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"watchlist {name}: not UTF-8 text") from None
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 4:
            raise ConfigError(f"watchlist {name} line {number}: expected ja3_md5,Firstseen,Lastseen,Listingreason")
        md5 = fingerprint(fields[0], "ja3", f"watchlist {name} line {number}")
        entries.append(WatchEntry(md5, "ja3", name, ",".join(fields[3:])))
    return entries


def _expiry(expires: Any, where: str) -> int | None:
    if expires is None:
        return None
    try:
        return int(datetime.fromisoformat(str(expires).replace("Z", "+00:00")).timestamp() * 1e9)
    except (ValueError, OverflowError):
        raise ConfigError(f"{where}: expires {str(expires)[:60]!r} is not an ISO 8601 time") from None


def parse_watchlist(data: bytes, name: str) -> list[WatchEntry]:
    doc = load_json(data, f"watchlist {name}")
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        raise ConfigError(f"watchlist {name}: expected an object with an 'entries' list")
    return [parse_entry(e, name, f"watchlist {name} entry {i + 1}") for i, e in enumerate(doc["entries"])]


_PARSERS = {"json": parse_watchlist, "csv": parse_sslbl_csv}


class WatchlistLoader:
    """Reads every watchlist under ``watchlists/`` (``.json``, and ``.csv`` in SSLBL's JA3 format), at
    most once a minute per store."""

    def __init__(self) -> None:
        self._cache: PerStore[tuple[list[WatchEntry], list[str]]] = PerStore(_CACHE_S)

    def load(self, store: ObjectStore) -> tuple[list[WatchEntry], list[str]]:
        """(entries, errors); a broken list is an error message, never a crash."""
        cached = self._cache.get(store)
        if cached is not None:
            return cached
        entries: list[WatchEntry] = []
        errors: list[str] = []
        for key in sorted(store.list(PREFIX)):
            parse = _PARSERS.get(key.rsplit(".", 1)[-1])
            if parse is None:
                continue
            obj = store.get(key)
            if obj is None:
                continue
            name = key[len(PREFIX):].rsplit(".", 1)[0]
            try:
                entries += parse(obj.data, name)
            except ConfigError as exc:
                errors.append(str(exc))
        self._cache.put(store, (entries, errors))
        return entries, errors

    def forget(self) -> None:
        self._cache.clear()


LOADER = WatchlistLoader()
