"""The sensor's NATS publisher against a real server: acknowledged JetStream publishes deduplicated by
batch key, and a server restart survived by the spool (batches wait on disk and drain, none lost)."""

from __future__ import annotations

import time

import pytest

from kubesonar.compose import replay
from kubesonar.sensor.queues import Message, open_publisher, parse_queue_url
from kubesonar.sensor.spool import SpoolingPublisher
from kubesonar.shared.errors import ConfigError, MessageRefused, QueueUnavailable

from conftest import PCAPS
from helpers import cyclic_garbage_after
from nats_server import jetstream, nats  # noqa: F401 - the fixture

SUBJECT = "kubesonar.batches"


class _Collect:
    """A publisher that keeps a replay's messages, to send them in phases."""

    def __init__(self, limit: int):
        self.limit, self.messages = limit, []

    def send(self, messages: list[Message]) -> None:
        self.messages += messages


def _messages(limit: int) -> list[Message]:
    collect = _Collect(limit)
    replay([PCAPS / "portscan" / "chrissanders_synscan.pcapng"], collect, cluster="spool", window_s=0.5)
    return collect.messages


def _create_stream(url: str) -> None:
    from kubesonar.functions.nats.connection import NatsConnection
    from kubesonar.functions.nats.streams import Layout, ensure_streams
    from kubesonar.shared.nats_address import parse_nats_url

    connection = NatsConnection(parse_nats_url(url))
    try:
        connection.run(ensure_streams(connection.js, Layout(SUBJECT), 1, 5, 60.0))
    finally:
        connection.close()


def _stored(url: str) -> list[str]:
    async def keys(js):
        info = await js.stream_info("KUBESONAR_BATCHES")
        return [(await js.get_msg("KUBESONAR_BATCHES", seq)).headers["Nats-Msg-Id"]
                for seq in range(info.state.first_seq, info.state.last_seq + 1)] if info.state.messages else []

    return jetstream(url, keys)


def test_the_url_form_is_a_registered_queue_kind():
    assert parse_queue_url("nats://nats.nats.svc:4222/kubesonar.batches").kind == "nats"
    with pytest.raises(ConfigError):
        open_publisher("nats://nats:4222/")
    with pytest.raises(ConfigError, match="creds file"):
        open_publisher("nats://nats:4222/kubesonar.batches?creds=/nonexistent.creds")


def test_without_a_stream_a_send_is_unavailable_and_says_what_to_start(nats):  # noqa: F811
    publisher = open_publisher(f"{nats.url}/{SUBJECT}")
    try:
        with pytest.raises(QueueUnavailable, match="kubesonar backend"):
            publisher.send([Message("s/0/0", b"x")])
    finally:
        publisher.close()


def test_a_server_down_from_the_start_fails_a_send_at_once_and_quietly(caplog):
    """nats-py retries a first connection forever: a sensor started while NATS was down waited out the
    send's whole timeout every window, logging a traceback a second."""
    from nats_server import free_port

    publisher = open_publisher(f"nats://127.0.0.1:{free_port()}/{SUBJECT}")  # nothing listens there
    try:
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(QueueUnavailable, match="Connect call failed"):
                publisher.send([Message("s/0/0", b"x")])
            assert time.monotonic() - started < 3
    finally:
        publisher.close()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("nats")] == []


def test_a_server_restart_is_spooled_and_drained_with_nothing_lost(nats, tmp_path):  # noqa: F811
    url = f"{nats.url}/{SUBJECT}"
    _create_stream(nats.url)
    inner = open_publisher(url)
    try:
        _spool_through_a_restart(nats, inner, tmp_path)
    finally:
        inner.close()


def _spool_through_a_restart(nats, inner, tmp_path) -> None:  # noqa: F811 - the server, not the fixture
    messages = _messages(inner.limit)
    assert len(messages) >= 9
    before, during, after = messages[:3], messages[3:6], messages[6:]
    # no outage backoff (tests/unit/test_spool.py covers it): the server can be back within its second, and
    # the windows after it must then go straight out, the spool drained
    spool = SpoolingPublisher(inner, tmp_path / "spool", attempts=2, max_wait_s=0.05, outage_backoff_s=(0.0, 0.0))
    spool.publish(before)
    assert spool.stats.sent == 3 and spool.stats.spooled == 0

    nats.stop()
    started = time.monotonic()
    spool.publish(during)
    assert spool.stats.spooled == 3 and spool.stats.depth == 3
    assert time.monotonic() - started < 30  # an outage does not hold the capture loop for long

    nats.start()  # same port, same JetStream store
    deadline = time.monotonic() + 30
    while not inner._nc.is_connected:  # the client reconnects by itself
        assert time.monotonic() < deadline, "the publisher did not reconnect"
        time.sleep(0.1)
    spool.publish(after)
    assert spool.stats.depth == 0 and spool.stats.drained == 3 and spool.stats.dropped == 0
    assert _stored(nats.url) == [m.key for m in messages]  # all of them, in order

    spool.publish(before)  # a resend within the duplicate window: the server drops it
    assert len(_stored(nats.url)) == len(messages)



def test_a_refused_send_leaves_no_reference_cycle(nats):  # noqa: F811
    """The publisher raised a gathered error from a local (``raise result``), and the loop thread waited on
    a future that kept it: each error's traceback held those frames and they the error, so every send
    refused during an outage lived on, with its batch, until the cyclic collector ran."""
    from nats.js.api import StreamConfig

    async def small_stream(js):
        await js.add_stream(StreamConfig(name="KUBESONAR_BATCHES", subjects=[SUBJECT], max_msg_size=64))

    jetstream(nats.url, small_stream)
    publisher = open_publisher(f"{nats.url}/{SUBJECT}")
    try:
        publisher.send([Message("s/0/0", b"x")])  # connected, and the stream takes a small one

        def refused() -> None:
            with pytest.raises(MessageRefused, match="size exceeds"):
                publisher.send([Message("s/0/1", b"x" * 200), Message("s/0/2", b"y" * 200)])

        assert cyclic_garbage_after(refused) == []
    finally:
        publisher.close()


def test_a_message_the_stream_refuses_for_good_is_named_and_the_rest_are_delivered(nats):  # noqa: F811
    """A message over the stream's max_msg_size is refused the same way on every try: named in
    MessageRefused (dropped and counted in front of the spool), not an outage that holds the spool's head."""
    from nats.js.api import StreamConfig

    async def small_stream(js):
        await js.add_stream(StreamConfig(name="KUBESONAR_BATCHES", subjects=[SUBJECT], max_msg_size=64))

    jetstream(nats.url, small_stream)
    publisher = open_publisher(f"{nats.url}/{SUBJECT}")
    try:
        with pytest.raises(MessageRefused) as refused:
            publisher.send([Message("s/0/0", b"x"), Message("s/0/1", b"x" * 200), Message("s/0/2", b"y")])
        assert list(refused.value.refused) == ["s/0/1"] and "10054" in refused.value.refused["s/0/1"]
        assert _stored(nats.url) == ["s/0/0", "s/0/2"]
    finally:
        publisher.close()


def test_the_sensor_never_logs_the_password_in_its_queue_url(tmp_path):
    """The start-up line, the outage warning and the errors name the server without its credentials."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from nats_server import free_port

    kubesonar = str(Path(sys.executable).with_name("kubesonar"))  # this environment's command

    url = f"nats://sensor:s3cret-pw@127.0.0.1:{free_port()}/{SUBJECT}"  # nothing listens there
    result = subprocess.run([kubesonar, "sensor", "-i", "lo", "--queue", url, "--spool", str(tmp_path / "spool"),
                             "--window", "0.5", "--duration", "2"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "NODE_NAME": "node-1"})
    assert result.returncode == 0, result.stderr
    assert "publishing to nats://***@127.0.0.1" in result.stderr
    assert "queue unreachable" in result.stderr and "Connect call failed" in result.stderr
    assert "s3cret-pw" not in result.stderr + result.stdout
    with pytest.raises(QueueUnavailable) as raised:
        open_publisher(url).send([Message("s/0/0", b"x")])
    assert "s3cret-pw" not in str(raised.value) and "***@127.0.0.1" in str(raised.value)
    with pytest.raises(ConfigError) as refused:
        open_publisher(url.replace(SUBJECT, "bad subject"))
    assert "s3cret-pw" not in str(refused.value)
