"""The GCP function served by the real functions-framework on 127.0.0.1, with Pub/Sub (emulator) pushing
to it and fake-gcs-server storing for it: what Cloud Run functions runs, started by the test run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from gcp_emulator import PROJECT, _stop, _wait_http, free_port, storage_client

MAIN = Path(__file__).resolve().parents[1] / "functions" / "gcp" / "main.py"


@contextmanager
def function_server(target: str, env: dict[str, str], log: Path) -> Iterator[str]:
    """`functions-framework --target TARGET` on a free port; yields its URL. Its stdout (the function's
    structured logs) goes to `log`."""
    port = free_port()
    command = [str(Path(sys.executable).with_name("functions-framework")), "--source", str(MAIN),
               "--target", target, "--host", "127.0.0.1", "--port", str(port)]
    with log.open("ab") as out:
        proc = subprocess.Popen(command, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + "/", proc, f"functions-framework ({target})", 60)
        yield url
    finally:
        _stop(proc)


@dataclass
class Deployment:
    """Topics, subscriptions and buckets named as infra/gcp names them, unique per test module."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def topic(self, name: str) -> str:
        return f"projects/{PROJECT}/topics/kubesonar-{name}-{self.tag}"

    def subscription(self, name: str) -> str:
        return f"projects/{PROJECT}/subscriptions/kubesonar-{name}-{self.tag}"

    @property
    def state_bucket(self) -> str:
        return f"ks-state-{self.tag}"

    @property
    def alerts_bucket(self) -> str:
        return f"ks-alerts-{self.tag}"

    def function_env(self, flows_subscription: str) -> dict[str, str]:
        return {"KUBESONAR_STATE_BUCKET": self.state_bucket, "KUBESONAR_ALERTS_BUCKET": self.alerts_bucket,
                "KUBESONAR_ALERTS_TOPIC": self.topic("alerts"), "KUBESONAR_FLOWS_SUBSCRIPTION": flows_subscription,
                "KUBESONAR_SENSOR_SILENT_AFTER_S": "2", "KUBESONAR_LEARNING_PERIOD_S": "0"}


def create(d: Deployment, push_to: dict[str, str]) -> None:
    """Buckets; topics flows (pulled), flows-push (pushed to on_message), ticks (pushed to on_tick), alerts
    (with an inbox pull subscription). `push_to` maps "flows-push" and "ticks" to the servers' URLs."""
    from google.cloud import pubsub_v1

    gcs = storage_client()
    gcs.create_bucket(d.state_bucket)
    gcs.create_bucket(d.alerts_bucket)
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    for name in ("flows", "flows-push", "ticks", "alerts"):
        publisher.create_topic(name=d.topic(name))
    subscriber.create_subscription(name=d.subscription("flows-drain"), topic=d.topic("flows"), ack_deadline_seconds=60)
    subscriber.create_subscription(name=d.subscription("alerts-inbox"), topic=d.topic("alerts"))
    for name, url in push_to.items():
        subscriber.create_subscription(name=d.subscription(name), topic=d.topic(name), ack_deadline_seconds=60,
                                       push_config={"push_endpoint": url + "/"})


def scored(log: Path) -> list[dict]:
    """The function's "batches scored" log entries so far."""
    entries = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    return [e for e in entries if e.get("message") == "batches scored"]


def wait_until(predicate, what: str, seconds: float = 60.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
