"""Authenticated batches (issue 19): a message unsigned, badly signed, signed with an unknown key, or
speaking for another cluster or node is poison with a counted reason; two keys per cluster rotate."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kubesonar.functions.local.backend import LocalBackend
from kubesonar.functions.local.notifier import CollectingNotifier
from kubesonar.functions.local.store import LocalObjectStore
from kubesonar.sensor.queues import window_messages
from kubesonar.shared import signing
from kubesonar.shared.batch import SQS_LIMIT, BatchHeader
from kubesonar.shared.errors import ConfigError
from kubesonar.shared.flow import FlowRecords
from kubesonar.shared.pipeline import Delivery, Dependencies, process_deliveries
from kubesonar.shared.ports import SystemClock
from kubesonar.shared.signing import Key, Keyring, SignatureError

from helpers import LIVE_WINDOW

REPO = Path(__file__).resolve().parents[2]
KUBESONAR = Path(sys.executable).with_name("kubesonar")


def _key(key_id: str, cluster: str = "prod") -> Key:
    return Key(key_id, cluster, os.urandom(32))


PROD_NEW, PROD_OLD, DEV = _key("prod-2"), _key("prod-1"), _key("dev-1", "dev")


def _messages(cluster="prod", node="node-1", sensor="node-1/abc", signer=None, limit=SQS_LIMIT):
    flows = FlowRecords.empty(50)
    flows.columns["first_ts"] = np.arange(50, dtype=np.int64) * 10**9
    flows.columns["last_ts"] = flows.columns["first_ts"]
    return window_messages(BatchHeader(cluster, node, sensor, 1, *LIVE_WINDOW), flows, limit, signer=signer)


def _process(tmp_path, data: list[bytes], keyring: Keyring | None):
    deps = Dependencies(LocalObjectStore(tmp_path), CollectingNotifier(), SystemClock(), keyring=keyring)
    return process_deliveries([Delivery(f"m{i}", d) for i, d in enumerate(data)], deps)


def _backend_ring() -> Keyring:
    return Keyring([PROD_NEW, PROD_OLD, DEV])


def test_signed_messages_are_accepted_with_either_active_key(tmp_path):
    data = [m.data for n, key in enumerate((PROD_NEW, PROD_OLD))
            for m in _messages(sensor=f"node-1/{n}", signer=Keyring([key], key.key_id).sign)]
    outcome = _process(tmp_path, data, _backend_ring())
    assert len(outcome.applied) == len(data) and not outcome.poison and outcome.result.flows == 100


def _reason(tmp_path, data: bytes, keyring: Keyring | None = None) -> str:
    outcome = _process(tmp_path, [data], keyring or _backend_ring())
    assert not outcome.applied and not outcome.retry and len(outcome.poison) == 1
    return outcome.poison[0][1]


def test_an_unsigned_message_is_refused_when_a_keyring_is_configured(tmp_path):
    (message,) = _messages()
    assert _reason(tmp_path, message.data).startswith("signature: unsigned")


@pytest.mark.parametrize("where", [5, 40, -1])  # the key id, the MAC, the batch message
def test_any_changed_byte_breaks_the_signature(tmp_path, where):
    (message,) = _messages(signer=Keyring([PROD_NEW], "prod-2").sign)
    data = bytearray(message.data)
    data[where] ^= 0x01
    assert _reason(tmp_path, bytes(data)).split(":")[1].strip() in ("bad_mac", "unknown_key")


def test_an_unknown_key_id(tmp_path):
    stranger = _key("prod-9")
    (message,) = _messages(signer=Keyring([stranger], "prod-9").sign)
    assert _reason(tmp_path, message.data).startswith("signature: unknown_key")


def test_a_key_speaks_only_for_its_own_cluster(tmp_path):
    (message,) = _messages(cluster="prod", signer=Keyring([DEV], "dev-1").sign)
    assert _reason(tmp_path, message.data).startswith("signature: wrong_cluster")


def test_a_sensor_speaks_only_for_its_own_node(tmp_path):
    (message,) = _messages(node="node-2", sensor="node-1/abc", signer=Keyring([PROD_NEW], "prod-2").sign)
    assert _reason(tmp_path, message.data).startswith("signature: wrong_node")


def test_a_cut_envelope(tmp_path):
    (message,) = _messages(signer=Keyring([PROD_NEW], "prod-2").sign)
    for cut in (3, 5, 20):
        assert _reason(tmp_path, message.data[:cut]).startswith("signature:")


def test_signed_messages_stay_within_the_queue_limit():
    messages = _messages(signer=Keyring([PROD_NEW], "prod-2").sign, limit=8192)
    assert all(len(m.data) <= 8192 for m in messages)


def test_without_a_keyring_unsigned_and_signed_are_accepted_and_it_says_so_once(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(signing, "_warned", [False])
    (plain,) = _messages()
    (signed,) = _messages(sensor="node-1/def", signer=Keyring([PROD_NEW], "prod-2").sign)
    with caplog.at_level(logging.WARNING, logger="kubesonar"):
        outcome = _process(tmp_path, [plain.data, signed.data], None)
        _process(tmp_path, [plain.data], None)
    assert len(outcome.applied) == 2
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "unauthenticated" in caplog.records[0].message


def test_the_local_backend_verifies_too(tmp_path):
    backend = LocalBackend(tmp_path, keyring=_backend_ring())
    (plain,) = _messages()
    assert backend.receive(plain.key, plain.data) is None and backend.counters["decode_errors"] == 1


def test_at_most_two_keys_per_cluster():
    with pytest.raises(ConfigError, match="more than 2 active keys"):
        Keyring([PROD_NEW, PROD_OLD, _key("prod-3")])


def _ring_doc(*keys: Key, sign_with: str | None = None) -> str:
    return json.dumps({"keys": [{"id": k.key_id, "cluster": k.cluster, "secret": base64.b64encode(k.secret).decode()}
                                for k in keys], "sign_with": sign_with})


@pytest.mark.parametrize("doc, fault", [
    ("[]", "non-empty 'keys'"), ('{"keys": [{"id": "a", "cluster": "c", "secret": "c2hvcnQ="}]}', "at least 32"),
    ('{"keys": [{"id": "a b", "cluster": "c", "secret": ""}]}', "'id'"), ("not json", "not JSON"),
])
def test_a_bad_keyring_file_is_one_clear_error(tmp_path, doc, fault):
    (tmp_path / "k.json").write_text(doc)
    with pytest.raises(ConfigError, match=fault):
        Keyring.load(tmp_path / "k.json")


def test_replay_signs_end_to_end(tmp_path):
    (tmp_path / "keys.json").write_text(_ring_doc(PROD_NEW, sign_with="prod-2"))
    queue = tmp_path / "queue"
    done = subprocess.run([str(KUBESONAR), "replay", "--queue", f"file://{queue}", "--cluster", "prod", "--node", "n1",
                           "--key-file", str(tmp_path / "keys.json"), str(REPO / "examples/cluster-traffic.pcap")],
                          capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr.decode()
    data = [p.read_bytes() for p in sorted(queue.glob("*.ksfb"))]
    assert data and all(signing.is_signed(d) for d in data)
    assert len(_process(tmp_path / "a", data, _backend_ring()).applied) == len(data)
    assert len(_process(tmp_path / "b", data, Keyring([_key("prod-2")])).poison) == len(data)  # same id, other secret


def test_a_sensor_key_for_another_cluster_is_refused_at_start(tmp_path):
    (tmp_path / "keys.json").write_text(_ring_doc(DEV, sign_with="dev-1"))
    done = subprocess.run([str(KUBESONAR), "replay", "--queue", f"file://{tmp_path / 'q'}", "--cluster", "prod",
                           "--key-file", str(tmp_path / "keys.json"), str(REPO / "examples/cluster-traffic.pcap")],
                          capture_output=True, timeout=300, check=False)
    lines = done.stderr.decode().strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and "is for cluster 'dev'" in lines[0]


def test_verify_rejects_non_bytes_garbage():
    with pytest.raises(SignatureError):
        _backend_ring().verify(b"KSS1")


def test_the_backend_keyring_from_its_settings(tmp_path):
    from kubesonar.shared.keyring_source import keyring_from_env

    doc = _ring_doc(PROD_NEW, PROD_OLD)
    (tmp_path / "k.json").write_text(doc)
    assert keyring_from_env({}) is None
    for env in ({"KUBESONAR_KEYRING": doc}, {"KUBESONAR_KEYRING_FILE": str(tmp_path / "k.json")}):
        (message,) = _messages(signer=Keyring([PROD_OLD], "prod-1").sign)
        assert keyring_from_env(env).verify(message.data)
    assert keyring_from_env({"KUBESONAR_KEYRING_SECRET": "s"}, lambda name: doc) is not None
    with pytest.raises(ConfigError, match="alternatives"):
        keyring_from_env({"KUBESONAR_KEYRING": doc, "KUBESONAR_KEYRING_FILE": "x"})
    with pytest.raises(ConfigError, match="secret manager"):
        keyring_from_env({"KUBESONAR_KEYRING_SECRET": "s"})


def test_a_rereading_keyring_reads_its_source_for_an_unknown_key_once_an_interval(tmp_path):
    """The interval on a clock of our own: reads for unknown key ids only, one per interval; a failed read
    keeps the keyring in hand (the pipeline's real runs: tests/integration/test_aws_signing.py)."""
    from kubesonar.shared.keyring_source import REREAD_INTERVAL_S, RereadingKeyring

    path, now = tmp_path / "k.json", [0.0]
    path.write_text(_ring_doc(PROD_OLD))
    ring = RereadingKeyring(lambda: Keyring.load(path), str(path), clock=lambda: now[0])
    (new,) = _messages(signer=Keyring([PROD_NEW], "prod-2").sign)
    (forged,) = _messages(signer=Keyring([Key("prod-1", "prod", os.urandom(32))], "prod-1").sign)
    with pytest.raises(SignatureError, match="bad_mac"):
        ring.verify(forged.data)
    assert ring.rereads == 0  # a key we hold that does not match is no reason to read
    path.write_text('{"keys": [')  # half-written
    with pytest.raises(SignatureError, match="unknown_key"):
        ring.verify(new.data)
    assert (ring.rereads, ring.reread_failures) == (1, 1)
    path.write_text(_ring_doc(PROD_OLD, PROD_NEW))
    now[0] += REREAD_INTERVAL_S - 1
    with pytest.raises(SignatureError, match="unknown_key"):
        ring.verify(new.data)
    assert ring.rereads == 1
    now[0] += 1
    assert ring.verify(new.data) and ring.rereads == 2


def test_a_keyring_larger_than_any_secret_is_refused_unread(tmp_path):
    """A keyring path pointing at a log, a disk image or /dev/zero was read whole (/dev/zero: 2.4 GB of
    memory until MemoryError): the read stops at the bound, past which nothing is a keyring."""
    path = tmp_path / "k.json"
    path.write_text(_ring_doc(PROD_OLD) + " " * signing.MAX_KEYRING_BYTES)  # valid JSON, padded past it
    with pytest.raises(ConfigError, match=f"keyring {path} is larger than {signing.MAX_KEYRING_BYTES} bytes"):
        Keyring.load(path)


def _answers_within(seconds: float, call) -> BaseException | object:
    """What ``call`` returned or raised, failing the test if it has not answered within ``seconds``."""
    import threading

    out: list = []

    def run() -> None:
        try:
            out.append(call())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert out, f"no answer within {seconds} s"
    return out[0]


def test_a_keyring_file_read_again_is_never_waited_on(tmp_path):
    """KUBESONAR_KEYRING_FILE replaced by a FIFO: the re-read for an unknown key id blocked in open() for
    ever, holding the lock every later re-read takes; a FIFO at start stopped the backend silently.
    Both are now one clear error, the re-read's counted, the keyring in hand kept."""
    from kubesonar.shared.keyring_source import keyring_from_env

    path = tmp_path / "k.json"
    path.write_text(_ring_doc(PROD_OLD))
    ring = keyring_from_env({"KUBESONAR_KEYRING_FILE": str(path)})
    (old,) = _messages(signer=Keyring([PROD_OLD], "prod-1").sign)
    (new,) = _messages(signer=Keyring([PROD_NEW], "prod-2").sign)
    path.unlink()
    os.mkfifo(path)
    try:
        outcome = _answers_within(10, lambda: ring.verify(new.data))
        assert isinstance(outcome, SignatureError) and outcome.reason == "unknown_key"
        assert (ring.rereads, ring.reread_failures) == (1, 1) and ring.verify(old.data)
        at_start = _answers_within(10, lambda: keyring_from_env({"KUBESONAR_KEYRING_FILE": str(path)}))
        assert isinstance(at_start, ConfigError) and "not a regular file" in str(at_start)
    finally:  # a re-read still blocked in open() (before the fix) is let go: a writer comes and goes
        with contextlib.suppress(OSError):  # ENXIO: no reader waits
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def test_a_per_node_key_speaks_for_its_node_only(tmp_path):
    node_key = Key("n1-1", "prod", os.urandom(32), node="node-1")
    ring = Keyring([node_key])
    (own,) = _messages(node="node-1", sensor="node-1/a", signer=Keyring([node_key], "n1-1").sign)
    (other,) = _messages(node="node-2", sensor="node-2/a", signer=Keyring([node_key], "n1-1").sign)
    assert ring.verify(own.data)
    with pytest.raises(SignatureError, match="wrong_node: key 'n1-1' is for node 'node-1'"):
        ring.verify(other.data)
