"""The Azure function with its keyring in Key Vault (infra/azure: the vault's URL and the secret's name in its
app settings), read through our Key Vault stand-in (tests/keyvault_standin.py) with the app's identity;
through the Event Grid stand-in and Azurite, a batch signed with the cluster's key is scored; an unsigned
one and a forged one are counted and kept under undecodable/ with their reason, never scored or retried.
A key added to the vault reaches a warm instance at the first batch signed with it."""

from __future__ import annotations

import base64
import importlib
import json
import os
import time

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
from keyvault_standin import KeyVaultStandIn

SECRET = os.urandom(32)


def _keyring(keys: dict[str, bytes]) -> str:
    return json.dumps({"keys": [{"id": key_id, "cluster": "prod", "secret": base64.b64encode(secret).decode()}
                                for key_id, secret in keys.items()]})


@pytest.fixture
def vault(tls):  # noqa: F811
    standin = KeyVaultStandIn(*tls)
    yield standin
    standin.close()


def _cold_start(backend, monkeypatch, env: dict[str, str]):  # noqa: F811
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from kubesonar.functions.azure import function_app, runtime

    importlib.reload(runtime)
    backend["app"] = importlib.reload(function_app)
    backend["flows"].subscriber = backend["app"].score_batch
    return runtime


@pytest.fixture
def signed(backend, vault, monkeypatch):  # noqa: F811
    """The operator wrote the keyring into the vault (docs/azure.md, step 2); then the app started."""
    vault.set("keyring", _keyring({"prod-1": SECRET}))
    backend["runtime"] = _cold_start(backend, monkeypatch, {"KUBESONAR_KEYRING_VAULT_URL": vault.url,
                                                            "KUBESONAR_KEYRING_SECRET": "keyring"})
    backend["vault"] = vault
    yield backend
    for name in ("KUBESONAR_KEYRING_VAULT_URL", "KUBESONAR_KEYRING_SECRET", "KUBESONAR_STORE_RETRY_S"):
        monkeypatch.delenv(name, raising=False)
    from kubesonar.functions.azure import function_app, runtime

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


def _refused(b, *batches: tuple) -> list[str]:
    """Publish (signer, sensor) batches; the reasons of those kept under undecodable/ since the last call."""
    seen = set(_blobs(b["containers"]["deadletter"], "undecodable/"))
    for signer, sensor in batches:
        _publish(b, _messages(signer, sensor))
        b["flows"].wait_idle()  # one at a time: the order of re-reads is the test's
    kept = {n: json.loads(v) for n, v in _blobs(b["containers"]["deadletter"], "undecodable/").items() if n not in seen}
    return sorted(k["error"].split(":")[1].strip() for k in kept.values())


def _signer(key_id: str, secret: bytes):
    return Keyring([Key(key_id, "prod", secret)], key_id).sign


def test_a_key_added_to_the_vault_is_taken_by_a_warm_instance(signed):
    """Rotation: the new key goes into the vault, sensors sign with it; an instance that started before
    reads the vault again instead of dead-lettering their batches until the platform restarts it."""
    assert _refused(signed, (_signer("prod-1", SECRET), "node-1/a1")) == []  # warm
    new_secret = os.urandom(32)
    signed["vault"].set("keyring", _keyring({"prod-1": SECRET, "prod-2": new_secret}))
    assert _refused(signed, (_signer("prod-2", new_secret), "node-1/b1")) == []
    assert signed["runtime"].deps.keyring.rereads == 1 and signed["vault"].reads == 2
    assert signed["flows"].counters.dead_lettered == 0


def test_unknown_key_ids_read_the_vault_once_a_minute_at_most(signed):
    """A flood of forged key ids is not a flood of Key Vault reads: the second one, within the interval,
    is refused with what the first read gave, even though the vault now holds that key."""
    forged_secret = os.urandom(32)
    assert _refused(signed, (_signer("prod-9", forged_secret), "node-1/f1")) == ["unknown_key"]
    signed["vault"].set("keyring", _keyring({"prod-1": SECRET, "prod-9": forged_secret}))
    assert _refused(signed, (_signer("prod-9", forged_secret), "node-1/f2")) == ["unknown_key"]
    assert signed["runtime"].deps.keyring.rereads == 1 and signed["vault"].reads == 2  # the start's and one


def test_an_invalid_secret_keeps_the_keyring_in_hand(signed, caplog):
    """Half-written or not a keyring: logged and counted; the batch refused as before, the known key still taken."""
    signed["vault"].set("keyring", '{"keys": [')
    new, old = _signer("prod-2", os.urandom(32)), _signer("prod-1", SECRET)
    assert _refused(signed, (new, "node-1/b1"), (old, "node-1/a1")) == ["unknown_key"]
    assert signed["runtime"].deps.keyring.reread_failures == 1
    assert "keeping the keyring in hand" in caplog.text and "not JSON" in caplog.text


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_an_unreachable_vault_keeps_the_keyring_in_hand_within_the_retry_bound(signed, monkeypatch, caplog, kind):
    """The vault gone (a refused port) or silent: the read gives up within about twice KUBESONAR_STORE_RETRY_S
    (azure-core's own timeouts, 300 s a request, held a silent one past 90 s) and the batch is refused as
    before, logged and counted; the known key is still taken."""
    signed["runtime"] = _cold_start(signed, monkeypatch, {"KUBESONAR_STORE_RETRY_S": "2"})
    signed["vault"].close() if kind == "refused" else signed["vault"].stall()
    started = time.monotonic()
    assert _refused(signed, (_signer("prod-2", os.urandom(32)), "node-1/b1")) == ["unknown_key"]
    took = time.monotonic() - started
    assert _refused(signed, (_signer("prod-1", SECRET), "node-1/a1")) == []
    assert signed["runtime"].deps.keyring.reread_failures == 1
    assert "keeping the keyring in hand" in caplog.text and "Key Vault" in caplog.text
    assert took < 2 * 2 + 3, took  # about twice the bound, and some of the function's own work


def test_a_vault_without_the_secret_stops_the_cold_start_with_one_line_naming_it(signed, monkeypatch):
    """As Terraform leaves it (docs/azure.md, step 2): the vault exists, no keyring was written to it yet;
    and either setting without the other."""
    from kubesonar.shared.errors import ConfigError

    with pytest.raises(ConfigError, match="keyring secret kubesonar-keyring-none: Key Vault .*SecretNotFound"):
        _cold_start(signed, monkeypatch, {"KUBESONAR_KEYRING_SECRET": "kubesonar-keyring-none"})
    monkeypatch.delenv("KUBESONAR_KEYRING_SECRET")  # the vault alone would leave no keyring: unsigned taken
    with pytest.raises(ConfigError, match="KUBESONAR_KEYRING_VAULT_URL is set without KUBESONAR_KEYRING_SECRET"):
        _cold_start(signed, monkeypatch, {})
    monkeypatch.delenv("KUBESONAR_KEYRING_VAULT_URL")
    with pytest.raises(ConfigError, match="set KUBESONAR_KEYRING_VAULT_URL"):
        _cold_start(signed, monkeypatch, {"KUBESONAR_KEYRING_SECRET": "keyring"})
