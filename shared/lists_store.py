"""Allowlists and watchlists kept in the object store, so every runtime (local, AWS, GCP, Azure, NATS)
applies the same ones.

Keys: ``allowlists/<name>.yaml`` (the allowlist file format of docs/allowlists.md, parsed by
shared/allowlist.py) and ``watchlists/<name>.json`` (shared/watchlist.py). A warm function instance
re-reads them at most once per freshness bound (60 s), like the watchlists' loader. A list that does
not parse is reported and skipped; the others still apply. Writes are validated before they land.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable

from kubesonar.shared.allowlist import AllowEntry, load_allowlist
from kubesonar.shared.errors import ConfigError
from kubesonar.shared.per_store import PerStore
from kubesonar.shared.ports import ObjectStore

ALLOW_PREFIX = "allowlists/"
_FRESH_S = 60.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_list_name(name: str) -> str:
    if not _NAME.match(name) or name.endswith((".yaml", ".json")):
        raise ConfigError(f"list name {name!r}: use 1-64 letters, digits and ._- (no extension)")
    return name


def allowlist_key(name: str) -> str:
    return f"{ALLOW_PREFIX}{check_list_name(name)}.yaml"


def parse_allowlist_text(text: str, name: str) -> list[AllowEntry]:
    """Entries of an allowlist document; errors name ``name`` and the line, as for a file."""
    # the allowlist parser reads files: give it one, and name the store key in its messages
    fd, path = tempfile.mkstemp(prefix="kubesonar-allowlist-", suffix=".yaml")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        try:
            entries = load_allowlist(path)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace(path, name)) from None
    finally:
        os.unlink(path)
    return [AllowEntry(**{**e.__dict__, "where": e.where.replace(path, name)}) for e in entries]


class AllowlistLoader:
    """Every allowlist under ``allowlists/``, re-read at most once per freshness bound per store."""

    def __init__(self, fresh_s: float = _FRESH_S) -> None:
        self._cache: PerStore[tuple[list[AllowEntry], list[str]]] = PerStore(fresh_s)

    def load(self, store: ObjectStore) -> tuple[list[AllowEntry], list[str]]:
        """(entries, errors); a broken list is an error message, never a crash."""
        cached = self._cache.get(store)
        if cached is not None:
            return cached
        entries: list[AllowEntry] = []
        errors: list[str] = []
        for key in sorted(store.list(ALLOW_PREFIX)):
            obj = store.get(key) if key.endswith(".yaml") else None
            if obj is None:
                continue
            try:
                entries += parse_allowlist_text(obj.data.decode("utf-8", "replace"), key)
            except ConfigError as exc:
                errors.append(str(exc))
        self._cache.put(store, (entries, errors))
        return entries, errors

    def forget(self) -> None:
        self._cache.clear()


ALLOW_LOADER = AllowlistLoader()


def _update_text(store: ObjectStore, key: str, change: Callable[[str | None], str], attempts: int = 20) -> str:
    """Compare-and-swap on a text object: ``change(old text or None) -> new text``."""
    from kubesonar.shared.errors import StoreError, VersionConflict

    for _ in range(attempts):
        obj = store.get(key)
        text = change(obj.data.decode() if obj else None)
        if obj is not None and text == obj.data.decode():  # nothing changed: nothing to write
            return text
        try:
            if obj is None:
                store.put(key, text.encode(), create_only=True)
            else:
                store.put(key, text.encode(), if_version=obj.version)
            return text
        except VersionConflict:
            time.sleep(0.01)
    raise StoreError(f"gave up updating {key}: it kept changing under us")


def add_allow_entry(store: ObjectStore, name: str, rule: str, reason: str, match: dict[str, str]) -> str | None:
    """Append one entry to allowlist ``name`` (created when missing), validated with the whole list
    before it is written; returns the entry as YAML, for the user to see what now silences alerts. None
    when the list already has an entry of this rule and scope (two people marking one false positive):
    nothing is written."""
    import yaml

    entry = {"rule": rule, "reason": reason, "match": match} if reason else {"rule": rule, "match": match}
    snippet = yaml.safe_dump([entry], sort_keys=False)
    key = allowlist_key(name)
    added = False

    def append(text: str | None) -> str:
        nonlocal added
        base = _without_empty_list(text or "", key).rstrip("\n")
        new = f"{base}\n{snippet}" if base.strip() else snippet
        entries = parse_allowlist_text(new, key)
        added = _scope(entries[-1]) not in {_scope(e) for e in entries[:-1]}  # checked inside the CAS: no race
        return new if added else text or ""

    _update_text(store, key, append)
    ALLOW_LOADER.forget()
    return snippet if added else None


def _without_empty_list(text: str, key: str) -> str:
    """``text`` without an empty flow list (``[]``), its comments kept: an entry appended after it would
    not parse."""
    import yaml

    from kubesonar.shared.config_text import compose_yaml

    root = compose_yaml(text, key)
    if isinstance(root, yaml.SequenceNode) and root.flow_style and not root.value:
        return text[: root.start_mark.index] + text[root.end_mark.index :]
    return text


def _scope(entry: AllowEntry) -> tuple:
    """What an entry silences (its reason and place aside)."""
    return entry.rules, entry.namespace, entry.workload, entry.label, entry.cidr, entry.ports


def remove_allow_entry(store: ObjectStore, name: str, number: int) -> dict:
    """Remove entry ``number`` (1-based, as ``allowlist list`` shows) of allowlist ``name``. Only the
    entry's own lines go (its note comment right above it included, shared/config_text.py
    :func:`block_item_span`): every other line, comments and blank lines, stays as the user wrote it."""
    import yaml

    key = allowlist_key(name)
    removed: list[dict] = []

    def drop(text: str | None) -> str:
        if text is None:
            raise ConfigError(f"there is no allowlist {name!r}")
        entries = parse_allowlist_text(text, key)  # a list changed into one that does not parse: its line
        if not 1 <= number <= len(entries):
            raise ConfigError(f"allowlist {name!r} has {len(entries)} entries; there is no entry {number}")
        removed[:] = [yaml.safe_load(text)[number - 1]]
        kept = [_written(e) for i, e in enumerate(entries) if i != number - 1]
        new = _cut_entry(text, key, number - 1)
        if new is None or [_written(e) for e in parse_allowlist_text(new, key)] != kept:
            # a list in flow style ([...]), or one laid out so its lines cannot be told apart: written anew
            rest = [e for i, e in enumerate(yaml.safe_load(text)) if i != number - 1]
            new = yaml.safe_dump(rest, sort_keys=False) if rest else "[]\n"
        return new

    _update_text(store, key, drop)
    ALLOW_LOADER.forget()
    return removed[0]


def _cut_entry(text: str, key: str, index: int) -> str | None:
    """``text`` without the lines of entry ``index``; None when they cannot be told apart."""
    from kubesonar.shared.config_text import block_item_span, compose_yaml

    span = block_item_span(text, compose_yaml(text, key), index)
    return None if span is None else text[: span[0]] + text[span[1] :]


def _written(entry: AllowEntry) -> tuple:
    """What an entry says (its place aside, which moves when a line above it goes)."""
    return _scope(entry), entry.reason


def read_allowlists(store: ObjectStore) -> dict[str, list[AllowEntry]]:
    """Every stored allowlist by name, freshly read; a broken one is a ConfigError."""
    return {key[len(ALLOW_PREFIX):-len(".yaml")]: parse_allowlist_text(store.get(key).data.decode(), key)
            for key in sorted(store.list(ALLOW_PREFIX)) if key.endswith(".yaml") and store.get(key)}


def watchlist_key(name: str) -> str:
    from kubesonar.shared.watchlist import PREFIX

    return f"{PREFIX}{check_list_name(name)}.json"


def add_watch_entry(store: ObjectStore, name: str, indicator: str, reason: str = "",
                    expires: str | None = None) -> dict:
    """Add (or replace, same indicator) one entry of watchlist ``name``, validated before it lands."""
    import json

    from kubesonar.shared.watchlist import LOADER, parse_entry, parse_watchlist

    raw = {"indicator": indicator, **({"reason": reason} if reason else {}),
           **({"expires": expires} if expires else {})}
    normal = parse_entry(raw, name, f"watchlist {name}").indicator

    def add(text: str | None) -> str:
        doc = json.loads(text) if text else {"entries": []}
        parse_watchlist(json.dumps(doc).encode(), name)
        doc["entries"] = [e for e in doc["entries"] if parse_entry(e, name, name).indicator != normal] + [raw]
        return json.dumps(doc, indent=1)

    _update_text(store, watchlist_key(name), add)
    LOADER.forget()
    return raw


def remove_watch_entry(store: ObjectStore, name: str, indicator: str) -> None:
    import json

    from kubesonar.shared.watchlist import LOADER, parse_entry

    normal = parse_entry({"indicator": indicator}, name, f"watchlist {name}").indicator

    def drop(text: str | None) -> str:
        doc = json.loads(text) if text else {"entries": []}
        kept = [e for e in doc["entries"] if parse_entry(e, name, name).indicator != normal]
        if len(kept) == len(doc["entries"]):
            raise ConfigError(f"watchlist {name!r} has no entry {indicator!r}")
        return json.dumps({**doc, "entries": kept}, indent=1)

    _update_text(store, watchlist_key(name), drop)
    LOADER.forget()


def subject_match(alert: dict) -> dict[str, str]:
    """An allowlist ``match`` covering an alert's subject: its workload in its namespace, else its address."""
    source = alert.get("source") or {}
    workload = source.get("workload") or ""
    if workload.count("/") >= 2:
        namespace, kind_name = workload.split("/", 1)
        return {"namespace": namespace, "workload": kind_name}
    if source.get("ip"):
        return {"cidr": source["ip"]}
    raise ConfigError(f"alert {alert.get('id')} has neither a workload nor an address to allowlist")
