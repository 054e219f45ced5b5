"""Both sides read a nats:// URL alike: server, subject or bucket, credentials from the URL or the environment."""

from __future__ import annotations

import ssl

import pytest

from kubesonar.shared.errors import ConfigError
from kubesonar.shared.nats_address import parse_nats_url


def test_server_and_name_with_the_default_port():
    address = parse_nats_url("nats://nats.nats.svc/kubesonar.batches")
    assert (address.server, address.name, address.replicas) == ("nats://nats.nats.svc:4222", "kubesonar.batches", 1)
    assert address.connect_options() == {"servers": ["nats://nats.nats.svc:4222"]}


def test_user_and_password_stay_with_the_server():
    assert parse_nats_url("nats://u:p@h:4333/s").server == "nats://u:p@h:4333"


def test_credentials_from_the_url_or_else_the_environment(tmp_path, monkeypatch):
    creds, seed = tmp_path / "user.creds", tmp_path / "seed.nk"
    creds.write_text("-----BEGIN NATS USER JWT-----")
    seed.write_text("SU")
    monkeypatch.setenv("KUBESONAR_NATS_NKEY", str(seed))
    monkeypatch.setenv("KUBESONAR_NATS_REPLICAS", "3")
    options = parse_nats_url(f"nats://h/s?creds={creds}").connect_options()
    assert options["user_credentials"] == str(creds) and options["nkeys_seed"] == str(seed)
    assert parse_nats_url("nats://h/s").replicas == 3


def test_tls_on_request():
    assert isinstance(parse_nats_url("nats://h/s?tls=true").connect_options()["tls"], ssl.SSLContext)


@pytest.mark.parametrize("url, says", [
    ("http://h/s", "nats://HOST"), ("nats://h/a..b", "dot-separated"), ("nats://h/s?colour=red", "unknown option"),
    ("nats://h/s?creds=/nonexistent", "does not exist"), ("nats://h/s?replicas=7", "replicas"),
])
def test_bad_urls_are_one_clear_config_error(url, says):
    with pytest.raises(ConfigError, match=says):
        parse_nats_url(url)
