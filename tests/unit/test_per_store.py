"""Loaders keep what they read per store object: a store that is gone leaves nothing for a new store that
takes its address (shared/per_store.py)."""

from __future__ import annotations

from kubesonar.functions.local.store import LocalObjectStore
from kubesonar.shared.lists_store import AllowlistLoader
from kubesonar.shared.watchlist import WatchlistLoader


def test_a_gone_store_takes_its_entry_with_it(tmp_path):
    """Keyed by id(), every store ever read kept an entry, which the next store at its address was
    handed: a test's fresh store got an earlier test's broken watchlist (tests/unit/test_faults_shown.py
    failed in the full suite, and passed alone)."""
    watchlists, allowlists = WatchlistLoader(), AllowlistLoader()
    for i in range(20):
        store = LocalObjectStore(tmp_path / str(i))
        watchlists.load(store)
        allowlists.load(store)
    del store
    assert len(watchlists._cache._kept) == 0 and len(allowlists._cache._kept) == 0
