"""The JetStream KV store passes the contract of every store against a real nats-server, and holds
against 16 concurrent writers of one document in separate processes."""

from __future__ import annotations

import json
import multiprocessing
import uuid

import pytest
from contract.object_store import ObjectStoreContract

from kubesonar.functions.nats.store import POINTER, NatsObjectStore, decode_key, encode_key
from kubesonar.stores import open_store

from nats_server import nats_module  # noqa: F401 - the fixture

WRITERS, ROUNDS = 16, 20


class TestNatsObjectStore(ObjectStoreContract):
    @pytest.fixture
    def store(self, nats_module):  # noqa: F811
        return open_store(f"{nats_module.url}/t{uuid.uuid4().hex[:12]}")


def test_keys_round_trip_through_subject_tokens():
    for key in ("alerts/c/a.b.json", "state/x=y/@h+1", "a-b_c/d"):
        assert decode_key(encode_key(key)) == key
        assert all(c.isalnum() or c in "._-=" for c in encode_key(key))


def test_a_large_document_is_a_pointer_that_keeps_the_compare_and_swap(nats_module):  # noqa: F811
    store: NatsObjectStore = open_store(f"{nats_module.url}/large{uuid.uuid4().hex[:8]}")
    big, bigger = b"x" * (store.inline_limit + 1), b"y" * (3 << 20)
    v1 = store.put("doc.json", big, create_only=True)
    raw = store._run(store._read(store._prefix + encode_key("doc.json")))
    assert raw.headers[POINTER] and not raw.data  # the KV value is only the pointer
    v2 = store.put("doc.json", bigger, if_version=v1)
    with pytest.raises(Exception) as lost:
        store.put("doc.json", b"stale", if_version=v1)
    assert type(lost.value).__name__ == "VersionConflict"
    assert store.get("doc.json").data == bigger and store.get("doc.json").version == v2
    store.put("doc.json", b"{}", if_version=v2)  # back under the limit: inline again, the object removed
    assert store.get("doc.json").data == b"{}"
    objects = store._run(store._object_store())
    names = [o.name for o in store._run(_live_objects(objects))]
    assert names == []


async def _live_objects(objects):
    import nats.js.errors

    try:
        return [o for o in await objects.list(ignore_deletes=True) if not o.deleted]
    except nats.js.errors.NotFoundError:
        return []


def _writer(url: str, rounds: int) -> None:
    from kubesonar.shared.state import update_document

    store = open_store(url)

    def bump(doc):
        doc = dict(doc or {"n": 0, "writers": []})
        doc["n"] += 1
        return doc

    for _ in range(rounds):
        update_document(store, "shared/counter.json", bump, attempts=400)


def test_sixteen_concurrent_writers_lose_nothing(nats_module):  # noqa: F811
    url = f"{nats_module.url}/writers{uuid.uuid4().hex[:8]}"
    open_store(url)  # the bucket exists before they start
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(url, ROUNDS)) for _ in range(WRITERS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0] * WRITERS
    doc = json.loads(open_store(url).get("shared/counter.json").data)
    assert doc["n"] == WRITERS * ROUNDS
