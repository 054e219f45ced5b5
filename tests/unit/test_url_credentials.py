"""URLs shown in logs and errors carry no credentials."""

from __future__ import annotations

import pytest

from kubesonar.shared.url_credentials import without_credentials


@pytest.mark.parametrize("url, shown", [
    ("nats://sensor:s3cret@nats:4222/kubesonar.batches", "nats://***@nats:4222/kubesonar.batches"),
    ("nats://p@ss:w@rd@nats:4222/x", "nats://***@nats:4222/x"),  # an "@" in the password
    ("nats://TOKEN@nats/x?creds=/a@b", "nats://***@nats/x?creds=/a@b"),
    ("nats://nats:4222/kubesonar.batches", "nats://nats:4222/kubesonar.batches"),
    ("https://sqs.eu-west-1.amazonaws.com/123456789012/flows", "https://sqs.eu-west-1.amazonaws.com/123456789012/flows"),
    ("file:///var/lib/kubesonar/queue", "file:///var/lib/kubesonar/queue"),
    ("pubsub://projects/p/topics/t", "pubsub://projects/p/topics/t"),
])
def test_credentials_are_hidden_and_nothing_else_changes(url, shown):
    assert without_credentials(url) == shown
