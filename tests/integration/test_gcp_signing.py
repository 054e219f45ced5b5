"""The GCP function with a keyring in its environment (as Cloud Run puts a Secret Manager secret there,
infra/gcp): on the emulators, a batch signed with the cluster's key is scored; an unsigned one and a
forged one are poison, dead-lettered with their reason, never scored."""

from __future__ import annotations

import base64
import json
import os

import numpy as np
import pytest
from gcp_emulator import gcp_emulators, storage_client  # noqa: F401 - the fixture
from gcp_function import Deployment, create, function_server, scored, wait_until

from kubesonar.sensor.queues import window_messages
from kubesonar.sensor.queues.pubsub import PubSubQueue
from kubesonar.shared.batch import BatchHeader
from kubesonar.shared.flow import FlowRecords
from kubesonar.shared.signing import Key, Keyring

from helpers import LIVE_WINDOW

SECRET = os.urandom(32)


@pytest.fixture(scope="module")
def signed(gcp_emulators, tmp_path_factory):  # noqa: F811
    d = Deployment()
    ring = {"keys": [{"id": "prod-1", "cluster": "prod", "secret": base64.b64encode(SECRET).decode()}]}
    env = {**d.function_env(d.subscription("flows-drain")), "KUBESONAR_KEYRING": json.dumps(ring)}
    log = tmp_path_factory.mktemp("function") / "tick.log"
    with function_server("on_tick", env, log) as tick_url:
        create(d, {"ticks": tick_url})
        yield {"d": d, "log": log}


def _message(signer, sensor: str) -> bytes:
    flows = FlowRecords.empty(10)
    flows.columns["first_ts"] = np.arange(10, dtype=np.int64) * 10**9
    flows.columns["last_ts"] = flows.columns["first_ts"]
    (message,) = window_messages(BatchHeader("prod", "node-1", sensor, 1, *LIVE_WINDOW), flows, PubSubQueue.limit,
                                 signer=signer)
    return message.data


def test_only_batches_signed_with_the_clusters_key_are_scored(signed):
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    good = Keyring([Key("prod-1", "prod", SECRET)], "prod-1").sign
    forged = Keyring([Key("prod-1", "prod", os.urandom(32))], "prod-1").sign
    ids = {name: publisher.publish(signed["d"].topic("flows"), _message(signer, f"node-1/{name}"),
                                   sensor=f"node-1/{name}", sequence="1", part="0").result(timeout=30)
           for name, signer in (("good", good), ("unsigned", None), ("forged", forged))}
    publisher.publish(signed["d"].topic("ticks"), b"tick").result(timeout=30)
    entries = wait_until(lambda: [e for e in scored(signed["log"]) if e["messages"]], "the tick's scoring")
    assert sum(e["applied"] for e in entries) == 1 and sum(e["poison"] for e in entries) == 2
    assert sum(e["flows"] for e in entries) == 10
    bucket = storage_client().bucket(signed["d"].state_bucket)
    assert {b.name for b in bucket.list_blobs(prefix="deadletter/")} == {
        f"deadletter/{ids['unsigned']}", f"deadletter/{ids['forged']}"}
    lines = [json.loads(x) for x in signed["log"].read_text().splitlines() if x.startswith("{")]
    reasons = {e["message_id"]: e["error"] for e in lines if e.get("message", "").startswith("message does not decode")}
    assert reasons[ids["unsigned"]].startswith("signature: unsigned")
    assert reasons[ids["forged"]].startswith("signature: bad_mac")
    assert [b for e in entries for b in e["batches"]] == ["node-1/good/1/0"]


def _ring(keys: dict[str, bytes]) -> str:
    return json.dumps({"keys": [{"id": k, "cluster": "prod", "secret": base64.b64encode(s).decode()}
                                for k, s in keys.items()]})


def test_a_key_added_to_the_mounted_secret_is_taken_by_a_running_instance(gcp_emulators, tmp_path):  # noqa: F811
    """As infra/gcp runs it: the keyring a file of a secret volume, which shows the latest version at each
    read. A version with a new key added while the instance runs: batches signed with it are scored."""
    from google.cloud import pubsub_v1

    d, keyring_file, new_secret = Deployment(), tmp_path / "keyring.json", os.urandom(32)
    keyring_file.write_text(_ring({"prod-1": SECRET}))
    env = {**d.function_env(d.subscription("flows-drain")), "KUBESONAR_KEYRING_FILE": str(keyring_file)}
    with function_server("on_tick", env, tmp_path / "tick.log") as tick_url:
        create(d, {"ticks": tick_url})
        keyring_file.write_text(_ring({"prod-1": SECRET, "prod-2": new_secret}))  # a rotation's new version
        publisher = pubsub_v1.PublisherClient()
        new = Keyring([Key("prod-2", "prod", new_secret)], "prod-2").sign
        publisher.publish(d.topic("flows"), _message(new, "node-1/new"), sensor="node-1/new", sequence="1",
                          part="0").result(timeout=30)
        publisher.publish(d.topic("ticks"), b"tick").result(timeout=30)
        entries = wait_until(lambda: [e for e in scored(tmp_path / "tick.log") if e["messages"]], "the tick's scoring")
    assert sum(e["applied"] for e in entries) == 1 and sum(e["poison"] for e in entries) == 0
