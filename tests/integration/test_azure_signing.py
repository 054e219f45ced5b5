"""The Azure function with a keyring in its app settings (as a Key Vault reference resolves it, infra/azure):
through the Event Grid stand-in and Azurite, a batch signed with the cluster's key is scored; an unsigned
one and a forged one are counted and kept under undecodable/ with their reason, never scored or retried."""

from __future__ import annotations

import base64
import importlib
import json
import os

import numpy as np
import pytest
from test_azure_pipeline import _blobs, _publish, backend, tls  # noqa: F401 - the fixtures

from kubesonar.sensor.queues import window_messages
from kubesonar.sensor.queues.eventgrid import LIMIT
from kubesonar.shared.batch import BatchHeader
from kubesonar.shared.flow import FlowRecords
from kubesonar.shared.signing import Key, Keyring

from azure_emulator import azurite  # noqa: F401 - the fixture
from helpers import LIVE_WINDOW

SECRET = os.urandom(32)


@pytest.fixture
def signed(backend, monkeypatch):  # noqa: F811
    ring = {"keys": [{"id": "prod-1", "cluster": "prod", "secret": base64.b64encode(SECRET).decode()}]}
    monkeypatch.setenv("KUBESONAR_KEYRING", json.dumps(ring))
    from kubesonar.functions.azure import function_app, runtime

    importlib.reload(runtime)
    backend["app"] = importlib.reload(function_app)
    backend["flows"].subscriber = backend["app"].score_batch
    yield backend
    monkeypatch.delenv("KUBESONAR_KEYRING")
    importlib.reload(runtime)  # leave the modules as other tests expect them: no keyring
    importlib.reload(function_app)


def _messages(signer, sensor: str) -> list:
    flows = FlowRecords.empty(10)
    flows.columns["first_ts"] = np.arange(10, dtype=np.int64) * 10**9
    flows.columns["last_ts"] = flows.columns["first_ts"]
    return window_messages(BatchHeader("prod", "node-1", sensor, 1, *LIVE_WINDOW), flows, LIMIT, signer=signer)


def test_only_batches_signed_with_the_clusters_key_are_scored(signed, caplog):
    caplog.set_level("INFO", logger="kubesonar")
    good = Keyring([Key("prod-1", "prod", SECRET)], "prod-1").sign
    forged = Keyring([Key("prod-1", "prod", os.urandom(32))], "prod-1").sign
    for name, signer in (("good", good), ("unsigned", None), ("forged", forged)):
        _publish(signed, _messages(signer, f"node-1/{name}"))
    signed["flows"].wait_idle()
    counters = signed["flows"].counters
    assert (counters.delivered, counters.failed, counters.dead_lettered) == (3, 0, 0)  # none retried
    kept = [json.loads(v) for v in _blobs(signed["containers"]["deadletter"], "undecodable/").values()]
    assert sorted(k["error"].split(":")[1].strip() for k in kept) == ["bad_mac", "unsigned"]
    lines = [json.loads(r.getMessage()) for r in caplog.records
             if r.name == "kubesonar" and r.getMessage().startswith('{"message": "batch scored"')]
    assert sorted((line["flows"], line["decode_errors"]) for line in lines) == [(0, 1), (0, 1), (10, 0)]
