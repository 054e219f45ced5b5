"""RoutedObjectStore (shared/ports.py): each key in the store of its longest matching prefix, and a
listing asks only the stores that can hold keys under its prefix. Real stores on disk, their list calls
counted."""

from __future__ import annotations

import pytest

from kubesonar.functions.local.store import LocalObjectStore
from kubesonar.shared.ports import RoutedObjectStore


class CountedLists(LocalObjectStore):
    def __init__(self, root):
        super().__init__(root)
        self.lists: list[str] = []

    def list(self, prefix):
        self.lists.append(prefix)
        return super().list(prefix)


@pytest.fixture
def stores(tmp_path):
    state, alerts, closed = (CountedLists(tmp_path / name) for name in ("state", "alerts", "closed"))
    routed = RoutedObjectStore(state, {"alerts/": alerts, "alerts/closed/": closed})
    for key in ("state/prod/sensor_health.json", "allowlists/platform.yaml", "alerts/prod/a1.json",
                "alerts/closed/prod/a0.json", "alertsx/not-an-alert.json"):
        routed.put(key, b"{}")
    return routed, state, alerts, closed


def test_each_key_lands_in_the_store_of_its_longest_route(stores):
    _, state, alerts, closed = stores
    assert sorted(state.list("")) == ["alertsx/not-an-alert.json", "allowlists/platform.yaml",
                                      "state/prod/sensor_health.json"]
    assert list(alerts.list("")) == ["alerts/prod/a1.json"]
    assert list(closed.list("")) == ["alerts/closed/prod/a0.json"]


@pytest.mark.parametrize(("prefix", "asked", "found"), [
    # no route can hold these: the default store alone (every store was asked before)
    ("state/", {"state"}, ["state/prod/sensor_health.json"]),
    ("allowlists/", {"state"}, ["allowlists/platform.yaml"]),
    # a route takes every key under it: that route's store, and the longer route inside it
    ("alerts/", {"alerts", "closed"}, ["alerts/closed/prod/a0.json", "alerts/prod/a1.json"]),
    ("alerts/prod/", {"alerts"}, ["alerts/prod/a1.json"]),
    ("alerts/closed/", {"closed"}, ["alerts/closed/prod/a0.json"]),
    # a prefix shorter than a route: keys may be in the route's store or the default
    ("alerts", {"state", "alerts", "closed"}, ["alerts/closed/prod/a0.json", "alerts/prod/a1.json",
                                               "alertsx/not-an-alert.json"]),
    ("", {"state", "alerts", "closed"}, ["alerts/closed/prod/a0.json", "alerts/prod/a1.json",
                                         "alertsx/not-an-alert.json", "allowlists/platform.yaml",
                                         "state/prod/sensor_health.json"]),
])
def test_a_listing_asks_only_the_stores_that_can_hold_its_keys(stores, prefix, asked, found):
    routed, *parts = stores
    for store in parts:
        store.lists.clear()
    assert list(routed.list(prefix)) == found
    names = dict(zip(("state", "alerts", "closed"), parts))
    assert {name for name, store in names.items() if store.lists} == asked
