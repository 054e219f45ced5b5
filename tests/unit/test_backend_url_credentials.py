"""The backend's errors about its queue URL carry no credentials (shared/url_credentials.py): they go to
the pod's log, which more people read than the Secret the URL came from."""

from __future__ import annotations

import socket

import pytest
from click.testing import CliRunner

from kubesonar.cli import main

SECRET = "s3cret-pw"


@pytest.mark.parametrize("queue", [
    f"nats://sensor:{SECRET}@127.0.0.1:4222",  # no subject
    f"natz://sensor:{SECRET}@127.0.0.1:4222/kubesonar.batches",  # a scheme the backend does not take
])
def test_a_refused_queue_url_is_shown_without_its_credentials(queue, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = CliRunner().invoke(main, ["backend", "--queue", queue, "--store", str(tmp_path / "state"),
                                       "--listen", f"127.0.0.1:{port}", "--duration", "1"])
    shown = f"{result.output}{result.exception}"
    assert result.exit_code != 0
    assert SECRET not in shown and "***@127.0.0.1" in shown, shown


def test_a_store_the_alert_commands_cannot_reach_is_named_without_its_credentials():
    from kubesonar.cli_alerts import _reaching
    from kubesonar.shared.errors import StoreError

    with pytest.raises(StoreError) as failed, _reaching(f"nats://sensor:{SECRET}@127.0.0.1:4222/kubesonar"):
        raise OSError("connection reset")
    assert SECRET not in str(failed.value) and "***@127.0.0.1" in str(failed.value)


def test_a_nats_store_url_without_a_bucket_is_named_without_its_credentials():
    from kubesonar.shared.errors import ConfigError
    from kubesonar.stores import open_store

    with pytest.raises(ConfigError) as refused:
        open_store(f"nats://sensor:{SECRET}@127.0.0.1:4222")
    assert SECRET not in str(refused.value) and "***@127.0.0.1" in str(refused.value)
