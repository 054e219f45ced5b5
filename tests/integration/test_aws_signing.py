"""The Lambda with a keyring from Secrets Manager (moto on 127.0.0.1): signed batches are scored,
unsigned and foreign ones are refused and reported as failed items, never scored."""

from __future__ import annotations

import base64
import copy
import importlib
import json
import os
import uuid

import numpy as np
import pytest

from kubesonar.sensor.queues import window_messages
from kubesonar.shared.batch import SQS_LIMIT, BatchHeader
from kubesonar.shared.flow import FlowRecords
from kubesonar.shared.signing import Key, Keyring

from aws_emulator import EVENT, LambdaContext, aws_endpoint, client  # noqa: F401 - the fixture
from helpers import LIVE_WINDOW

SECRET = os.urandom(32)




@pytest.fixture
def handler(aws_endpoint, monkeypatch):  # noqa: F811
    tag = uuid.uuid4().hex[:10]
    s3, sns, sm = (client(s, aws_endpoint) for s in ("s3", "sns", "secretsmanager"))
    for bucket in (f"ks-state-{tag}", f"ks-alerts-{tag}"):
        s3.create_bucket(Bucket=bucket)
    ring = {"keys": [{"id": "prod-1", "cluster": "prod", "secret": base64.b64encode(SECRET).decode()}]}
    sm.create_secret(Name=f"kubesonar-keyring-{tag}", SecretString=json.dumps(ring))
    env = {"KUBESONAR_STATE_BUCKET": f"ks-state-{tag}", "KUBESONAR_ALERTS_BUCKET": f"ks-alerts-{tag}",
           "KUBESONAR_TOPIC_ARN": sns.create_topic(Name=f"kubesonar-alerts-{tag}")["TopicArn"],
           "KUBESONAR_KEYRING_SECRET": f"kubesonar-keyring-{tag}", "POWERTOOLS_METRICS_NAMESPACE": "KubeSonar"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    import kubesonar.functions.aws.handler as module

    yield importlib.reload(module)
    monkeypatch.delenv("KUBESONAR_KEYRING_SECRET")
    importlib.reload(module)  # leave the module as other tests expect it: no keyring


def _message(signer=None, sensor="node-1/a1") -> bytes:
    flows = FlowRecords.empty(10)
    flows.columns["first_ts"] = np.arange(10, dtype=np.int64) * 10**9
    flows.columns["last_ts"] = flows.columns["first_ts"]
    (message,) = window_messages(BatchHeader("prod", "node-1", sensor, 1, *LIVE_WINDOW), flows, SQS_LIMIT, signer=signer)
    return message.data


def _event(bodies: list[bytes]) -> dict:
    event = {"Records": []}
    for i, body in enumerate(bodies):
        record = copy.deepcopy(EVENT["Records"][0])
        record["messageId"], record["body"] = f"m{i}", base64.b64encode(body).decode()
        event["Records"].append(record)
    return event


def test_only_batches_signed_with_the_clusters_key_are_scored(handler):
    good = Keyring([Key("prod-1", "prod", SECRET)], "prod-1").sign
    forged = Keyring([Key("prod-1", "prod", os.urandom(32))], "prod-1").sign
    bodies = [_message(good, "node-1/a1"), _message(None, "node-1/a2"), _message(forged, "node-1/a3")]
    result = handler.lambda_handler(_event(bodies), LambdaContext())
    assert [f["itemIdentifier"] for f in result["batchItemFailures"]] == ["m1", "m2"]


def test_a_keyring_secret_with_no_value_yet_stops_the_cold_start_with_one_line_naming_it(handler, monkeypatch):
    """As Terraform leaves it (docs/hardening.md): the secret exists, no keyring was put in it yet."""
    from kubesonar.shared.errors import ConfigError

    name = f"kubesonar-keyring-empty-{uuid.uuid4().hex[:8]}"
    client("secretsmanager", os.environ["AWS_ENDPOINT_URL"]).create_secret(Name=name)
    monkeypatch.setenv("KUBESONAR_KEYRING_SECRET", name)
    with pytest.raises(ConfigError, match=f"keyring secret {name}: "):
        importlib.reload(handler)


def _put_keyring(keys: dict[str, bytes] | str) -> None:
    """The operator writes the keyring secret, as docs/hardening.md says (a new version of it)."""
    doc = keys if isinstance(keys, str) else json.dumps({"keys": [
        {"id": key_id, "cluster": "prod", "secret": base64.b64encode(secret).decode()}
        for key_id, secret in keys.items()]})
    client("secretsmanager", os.environ["AWS_ENDPOINT_URL"]).put_secret_value(
        SecretId=os.environ["KUBESONAR_KEYRING_SECRET"], SecretString=doc)


def _failed(handler, bodies: list[bytes]) -> list[str]:
    result = handler.lambda_handler(_event(bodies), LambdaContext())
    return [f["itemIdentifier"] for f in result["batchItemFailures"]]


def test_a_key_added_to_the_secret_is_taken_by_a_warm_instance(handler):
    """Rotation: the new key goes into the secret, sensors sign with it; an instance that started before
    reads the secret again instead of dead-lettering their batches for as long as it stays warm."""
    assert _failed(handler, [_message(Keyring([Key("prod-1", "prod", SECRET)], "prod-1").sign)]) == []  # warm
    new_secret = os.urandom(32)
    _put_keyring({"prod-1": SECRET, "prod-2": new_secret})
    new = Keyring([Key("prod-2", "prod", new_secret)], "prod-2").sign
    assert _failed(handler, [_message(new, "node-1/b1")]) == []
    assert handler.deps.keyring.rereads == 1


def test_unknown_key_ids_read_the_secret_once_a_minute_at_most(handler):
    """A flood of forged key ids is not a flood of GetSecretValue calls: the second one, within the
    interval, is refused with what the first read gave, even though the secret now holds that key."""
    forged_secret = os.urandom(32)
    forged = Keyring([Key("prod-9", "prod", forged_secret)], "prod-9").sign
    assert _failed(handler, [_message(forged, "node-1/f1")]) == ["m0"]
    assert handler.deps.keyring.rereads == 1
    _put_keyring({"prod-1": SECRET, "prod-9": forged_secret})  # a second read would now accept it
    assert _failed(handler, [_message(forged, "node-1/f2")]) == ["m0"]
    assert handler.deps.keyring.rereads == 1


def test_a_secret_that_no_longer_reads_keeps_the_keyring_in_hand(handler, caplog):
    """Half-written or invalid: logged and counted; the batch refused as before, the known key still taken."""
    _put_keyring('{"keys": [')
    new = Keyring([Key("prod-2", "prod", os.urandom(32))], "prod-2").sign
    old = Keyring([Key("prod-1", "prod", SECRET)], "prod-1").sign
    assert _failed(handler, [_message(new, "node-1/b1"), _message(old, "node-1/a1")]) == ["m0"]
    assert handler.deps.keyring.reread_failures == 1
    assert "keeping the keyring in hand" in caplog.text and "not JSON" in caplog.text
