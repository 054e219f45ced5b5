"""The contract every ObjectStore adapter passes: import this class into an adapter's test module and
give it a ``store`` fixture (a fresh, empty store per test), and, for a store whose client retries a write,
a ``first_answer_lost`` fixture made with :func:`first_answer_lost_on` (a callable that takes its
``meanwhile``)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import pytest

from kubesonar.shared.errors import StoreError, VersionConflict
from kubesonar.shared.ports import StoredObject
from kubesonar.shared.state import read_document, update_document
from kubesonar.shared.write_token import LINEAGE_KEY


def unreachable_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        return closed.getsockname()[1]


@contextmanager
def endpoint_that_cannot_be_reached(kind: str) -> Iterator[int]:
    """A port on 127.0.0.1 that is ``refused`` (nothing listens) or ``silent`` (connections wait in its
    backlog and nothing is ever answered, as a host that has hung)."""
    if kind == "refused":
        yield unreachable_port()
        return
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield server.getsockname()[1]


def assert_calls_fail_within(store, seconds: float, match: str) -> None:
    """A read and a create of a store that cannot be reached are each a StoreError within ``seconds``."""
    for call in (lambda: store.get("state/c/doc.json"),
                 lambda: store.put("state/c/doc.json", b"{}", create_only=True)):
        started = time.monotonic()
        with pytest.raises(StoreError, match=match):
            call()
        took = time.monotonic() - started
        assert took < seconds, f"a store that cannot be reached took {took:.1f} s to fail"


def assert_every_call_is_a_store_error(store, match: str, version: str | None = None) -> None:
    """The port's contract for a store that cannot be reached: every call is a StoreError (the core tells
    a failed store from a bug), never the SDK's own error; ``version`` a conditional replace's."""
    calls = [lambda: store.get("state/c/doc.json"), lambda: store.put("state/c/doc.json", b"{}"),
             lambda: list(store.list("state/"))]
    if version is not None:
        calls += [lambda: store.put("state/c/doc.json", b"{}", create_only=True),
                  lambda: store.put("state/c/doc.json", b"{}", if_version=version)]
    for call in calls:
        with pytest.raises(StoreError, match=match):
            call()


@contextmanager
def first_answer_lost_on(transport: object, method: str, lost: Exception,
                         meanwhile: Callable[[], None] | None = None) -> Iterator[list[int]]:
    """The lost answer of a write that landed, replayed with the SDK's own retry: ``transport.method``
    (the call that sends a request and returns its response) sends the first request and then raises
    ``lost``, as a timeout or a reset connection after the write would; the SDK retries it. ``meanwhile``
    is what another writer does between the landing and the retry (its requests go out unhindered and
    uncounted). Yields the HTTP statuses the requests met, in order. Requests of other threads pass
    uncounted too: google-cloud-storage 3.x checks that a bucket exists from a thread of its own."""
    real, statuses, writer = getattr(transport, method), [], threading.get_ident()

    def send(*args, **kwargs):
        if threading.get_ident() != writer:
            return real(*args, **kwargs)
        response = real(*args, **kwargs)
        statuses.append(response.status_code)
        if len(statuses) == 1:
            if meanwhile is not None:
                setattr(transport, method, real)
                try:
                    meanwhile()
                finally:
                    setattr(transport, method, send)
            raise lost
        return response

    setattr(transport, method, send)
    try:
        yield statuses
    finally:
        setattr(transport, method, real)


@contextmanager
def requests_sent(transport: object, method: str) -> Iterator[list[int]]:
    """The HTTP statuses of the requests this thread sends through ``transport.method`` in the block."""
    real, statuses, caller = getattr(transport, method), [], threading.get_ident()

    def send(*args, **kwargs):
        response = real(*args, **kwargs)
        if threading.get_ident() == caller:
            statuses.append(response.status_code)
        return response

    setattr(transport, method, send)
    try:
        yield statuses
    finally:
        setattr(transport, method, real)


def lineage_of(metadata: dict[str, str]) -> list[str]:
    """The tokens an object's metadata says it was built on, newest first."""
    return [entry.partition("=")[0] for entry in metadata.get(LINEAGE_KEY, "").split()]


class ObjectStoreContract:
    @pytest.fixture
    def first_answer_lost(self):
        pytest.skip("this store's client retries no write")

    def test_get_of_a_missing_key_is_none(self, store):
        assert store.get("nothing/here") is None

    def test_create_only_creates_once(self, store):
        v1 = store.put("a/b.json", b"1", create_only=True)
        assert store.get("a/b.json").data == b"1" and store.get("a/b.json").version == v1
        with pytest.raises(VersionConflict):
            store.put("a/b.json", b"2", create_only=True)
        assert store.get("a/b.json").data == b"1"

    def test_replace_only_if_the_version_read_is_current(self, store):
        v1 = store.put("k", b"one")
        v2 = store.put("k", b"two", if_version=v1)
        assert v2 != v1
        with pytest.raises(VersionConflict):
            store.put("k", b"three", if_version=v1)  # stale
        assert store.get("k").data == b"two"

    def test_the_same_bytes_created_by_another_writer_still_conflict(self, store):
        store.put("a/b.json", b"1", create_only=True)
        with pytest.raises(VersionConflict):
            store.put("a/b.json", b"1", create_only=True)

    @pytest.mark.parametrize("write", ["create", "replace"])
    def test_a_conditional_write_whose_answer_was_lost_is_ours(self, store, first_answer_lost, write):
        """The SDK retries a write whose answer was lost, and the retry meets that write: its condition
        fails (412; 409 on a Blob Storage create). That is our write, not a conflict: update_document would
        otherwise apply its change again on its own write (an edge summary counted twice)."""
        condition = {"create_only": True} if write == "create" else {"if_version": store.put("a/b.json", b"1")}
        with first_answer_lost() as statuses:
            version = store.put("a/b.json", b"2", **condition)
        assert statuses[0] < 300 and statuses[1] in (409, 412)  # landed, then the retry met it
        assert store.get("a/b.json") == StoredObject(b"2", version)

    @pytest.mark.parametrize("write", ["create", "replace"])
    def test_a_lost_answer_is_ours_even_once_another_writer_built_on_it(self, store, first_answer_lost, write):
        """Our write lands, its answer is lost, and before the SDK's retry another writer reads our object
        and replaces it: the retry's condition fails and the object read back is the other writer's. Our
        write landed all the same; put returns the version it landed as, already superseded."""
        condition = {"create_only": True} if write == "create" else {"if_version": store.put("a/b.json", b"1")}
        seen = []

        def another_writer_builds_on_ours():
            seen.append(store.get("a/b.json"))
            store.put("a/b.json", seen[0].data + b"+3", if_version=seen[0].version)

        with first_answer_lost(meanwhile=another_writer_builds_on_ours) as statuses:
            version = store.put("a/b.json", b"2", **condition)
        assert statuses[0] < 300 and statuses[1] in (409, 412)  # landed, then the retry met the other write
        assert seen[0].data == b"2" and version == seen[0].version  # the version our write landed as
        assert store.get("a/b.json").data == b"2+3"
        with pytest.raises(VersionConflict):  # superseded: building on it again is a lost race
            store.put("a/b.json", b"4", if_version=version)

    @pytest.mark.parametrize("exists", [False, True], ids=["create", "replace"])
    def test_a_change_whose_landed_write_was_built_on_is_applied_once(self, store, first_answer_lost, exists):
        """update_document's view of the case above: an edge summary counted twice, a comment added twice,
        if the lost answer were taken for a lost race and the change applied again on the newer document."""
        key = "state/c/doc.json"

        def add(name):
            return lambda doc: {"by": [*(doc or {}).get("by", []), name]}

        if exists:
            update_document(store, key, add("first"))
        armed: list[list[int]] = []
        with ExitStack() as answer_lost:
            def lose_the_answer_of_our_write():  # armed by our write only, not by update_document's read
                if not armed:
                    armed.append(answer_lost.enter_context(first_answer_lost(
                        meanwhile=lambda: update_document(store, key, add("other")))))

            written = update_document(store, key, add("ours"), before_write=lose_the_answer_of_our_write)
        assert armed[0][0] < 300 and armed[0][1] in (409, 412)  # landed, then the retry met the other write
        assert written == {"by": ["first", "ours"][1 - exists:]}
        assert read_document(store, key)[0] == {"by": ["first", "ours", "other"][1 - exists:]}

    def test_replace_of_a_missing_key_conflicts(self, store):
        v = store.put("x", b"1")
        with pytest.raises(VersionConflict):
            store.put("y", b"1", if_version=v)

    def test_unconditional_put_overwrites(self, store):
        store.put("k", b"1")
        store.put("k", b"2")
        assert store.get("k").data == b"2"

    def test_list_by_prefix_in_order(self, store):
        for key in ("alerts/c/2", "alerts/c/1", "alerts/d/1", "baselines/c/w"):
            store.put(key, b"{}")
        assert list(store.list("alerts/c/")) == ["alerts/c/1", "alerts/c/2"]
        assert list(store.list("alerts/")) == ["alerts/c/1", "alerts/c/2", "alerts/d/1"]
        assert list(store.list("none/")) == []

    def test_binary_and_large_objects_round_trip(self, store):
        blob = bytes(range(256)) * 8192  # 2 MiB
        store.put("big.bin", blob)
        assert store.get("big.bin").data == blob

    @pytest.mark.parametrize("key", ["../escape", "/abs", "a//b", "a/../b", "", "a\\b", "sp ace"])
    def test_unsafe_keys_are_refused(self, store, key):
        with pytest.raises(StoreError):
            store.put(key, b"x")

    def test_concurrent_updates_lose_nothing(self, store):
        def bump(doc):
            doc = dict(doc or {"n": 0})
            doc["n"] += 1
            return doc

        def worker():
            for _ in range(15):
                update_document(store, "counter.json", bump)

        threads = [threading.Thread(target=worker) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert read_document(store, "counter.json")[0]["n"] == 90
