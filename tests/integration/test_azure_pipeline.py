"""Event Grid -> the Azure function -> Blob Storage and Event Grid, on 127.0.0.1: Azurite for blobs, our
Event Grid stand-in (tests/eventgrid_standin.py, HTTPS) for both topics. The sensor's real publisher
(azure-eventgrid with DefaultAzureCredential) publishes; the real function app consumes, each event
turned into a ``func.EventGridEvent`` by the azure-functions library's own converter."""

from __future__ import annotations

import base64
import importlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from kubesonar.sensor.queues import open_publisher, window_messages
from kubesonar.sensor.queues.eventgrid import LIMIT
from kubesonar.sensor.spool import SpoolingPublisher
from kubesonar.shared.batch import BatchHeader
from kubesonar.shared.flow import FlowRecords

from azure_emulator import azurite, new_container  # noqa: F401 - the fixture
from conftest import PCAPS, REPO
from eventgrid_standin import EventGridStandIn
from helpers import LIVE_WINDOW

_AZURE_ENV = ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE",
              "AZURE_AUTHORITY_HOST", "MSI_ENDPOINT", "MSI_SECRET", "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT")


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    import trustme

    return trustme.CA(), tmp_path_factory.mktemp("eventgrid-tls")


@pytest.fixture
def backend(azurite, tls, monkeypatch):  # noqa: F811
    """Fresh containers and topics; the function app imported against them (a cold start)."""
    tag = uuid.uuid4().hex[:10]
    names = {c: f"{c}-{tag}" for c in ("state", "alerts", "deadletter")}
    containers = {c: new_container(azurite, n) for c, n in names.items()}
    alerts_topic = EventGridStandIn(*tls, topic="kubesonar-alerts")
    flows_topic = EventGridStandIn(*tls, topic="kubesonar-flows", dead_letter=containers["deadletter"])
    env = {"KUBESONAR_STORAGE_CONNECTION_STRING": azurite, "KUBESONAR_STATE_CONTAINER": names["state"],
           "KUBESONAR_ALERTS_CONTAINER": names["alerts"], "KUBESONAR_DEADLETTER_CONTAINER": names["deadletter"],
           "KUBESONAR_ALERTS_TOPIC_ENDPOINT": alerts_topic.endpoint, "KUBESONAR_SENSOR_SILENT_AFTER_S": "1",
           # DefaultAzureCredential finds a managed identity here, as in a function app; the CA is the stand-in's
           "IDENTITY_ENDPOINT": flows_topic.identity_endpoint, "IDENTITY_HEADER": flows_topic.identity_header,
           "REQUESTS_CA_BUNDLE": str(flows_topic.ca_file)}
    for name in _AZURE_ENV:
        monkeypatch.delenv(name, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from kubesonar.functions.azure import function_app, runtime

    importlib.reload(runtime)
    app = importlib.reload(function_app)
    flows_topic.subscriber = app.score_batch
    yield {"app": app, "containers": containers, "flows": flows_topic, "alerts": alerts_topic, "env": env}
    flows_topic.close()
    alerts_topic.close()


def _blobs(container, prefix: str = "") -> dict[str, bytes]:
    return {n: container.download_blob(n).readall() for n in container.list_blob_names(name_starts_with=prefix)}


def _alerts(b) -> list[dict]:
    return [json.loads(v) for v in _blobs(b["containers"]["alerts"]).values()]


def _publish(b, messages) -> None:
    """The sensor's path: window messages -> spooling publisher -> Event Grid (the URL's own publisher)."""
    publisher = SpoolingPublisher(open_publisher(f"eventgrid://{b['flows'].host}"), f"/tmp/spool-{uuid.uuid4().hex}")
    publisher.publish(messages)
    assert publisher.stats.sent == len(messages) and publisher.stats.spooled == 0


def _capture_messages(capture, sensor="node-1/18ebe3a3", sequence=0):
    from kubesonar.sensor.offline import flows_from_captures

    flows = FlowRecords.concat(list(flows_from_captures([capture])))
    return window_messages(BatchHeader("prod", "node-1", sensor, sequence, *LIVE_WINDOW), flows, LIMIT)


def test_replayed_scan_goes_through_event_grid_and_the_function_to_blobs_and_the_alerts_topic(backend):
    b = backend
    env = {k: v for k, v in os.environ.items() if k not in _AZURE_ENV}
    run = subprocess.run([str(Path(sys.executable).parent / "kubesonar"), "replay",
                          str(PCAPS / "portscan/evilfingers_nmap_TCP_SYN_SCAN.pcap"),
                          "--queue", f"eventgrid://{b['flows'].host}", "--cluster", "prod", "--node", "node-1"],
                         check=False, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    b["flows"].wait_idle()
    published = b["flows"].received
    assert published and all(e["eventType"] == "KubeSonar.FlowBatch" and e["subject"] == "prod/node-1"
                             for e in published)
    assert b["flows"].counters.failed == 0 and b["flows"].counters.delivered == len(published)
    (alert,) = [a for a in _alerts(b) if a["type"] == "port_scan"]
    assert (alert["source"]["ip"], alert["cluster"]) == ("192.168.1.10", "prod")
    notes = [e for e in b["alerts"].received if e["data"]["type"] == "port_scan"]
    assert len(notes) == 1 and notes[0]["eventType"] == "KubeSonar.Alert"
    assert notes[0]["subject"] == "prod/port_scan" and notes[0]["data"]["severity"] == "high"
    assert notes[0]["data"]["id"] == alert["id"]


def test_the_sensors_publisher_sends_event_grid_schema_events_the_function_scores(backend):
    b = backend
    messages = _capture_messages(PCAPS / "portscan/evilfingers_nmap_TCP_SYN_SCAN.pcap")
    _publish(b, messages)
    b["flows"].wait_idle()
    events = b["flows"].received
    assert [e["id"] for e in events] == [m.key for m in messages]
    assert [base64.b64decode(e["data"]) for e in events] == [m.data for m in messages]
    assert {e["dataVersion"] for e in events} == {str(BatchHeader("c", "n", "s", 0, 0, 1).schema_version)}
    (alert,) = _alerts(b)
    assert alert["type"] == "port_scan"
    assert sorted(_blobs(b["containers"]["state"])) == ["outbox/prod.json", "state/prod/detectors.json",
                                                           "state/prod/sensor_health.json", "summary/prod/edges.json"]


def test_a_poison_event_is_counted_and_dead_lettered_without_retries(backend, caplog):
    from azure.eventgrid import EventGridEvent, EventGridPublisherClient
    from azure.identity import DefaultAzureCredential

    caplog.set_level("INFO", logger="kubesonar")
    b = backend
    client = EventGridPublisherClient(b["flows"].endpoint, DefaultAzureCredential())
    client.send([EventGridEvent(subject="prod/node-1", event_type="KubeSonar.FlowBatch", data_version="1",
                                data=base64.b64encode(b"KSFB" + os.urandom(200)).decode(), id="poison-1"),
                 EventGridEvent(subject="prod/node-1", event_type="KubeSonar.FlowBatch", data_version="1",
                                data={"not": "base64"}, id="poison-2")])
    b["flows"].wait_idle()
    counters = b["flows"].counters
    assert (counters.delivered, counters.failed, counters.dead_lettered) == (2, 0, 0)  # not retried
    kept = {n: json.loads(v) for n, v in _blobs(b["containers"]["deadletter"]).items()}
    assert sorted(kept) == ["undecodable/poison-1.json", "undecodable/poison-2.json"]
    assert "is not supported" in kept["undecodable/poison-1.json"]["error"]  # random bytes after the magic
    assert kept["undecodable/poison-2.json"]["data"] == {"not": "base64"}
    assert _alerts(b) == []
    # one JSON line each invocation; the once-a-process warning that no keyring is configured comes with the
    # first unsigned batch a test worker scores, which is this test's when it runs first on its worker
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "kubesonar" and r.levelname == "INFO"]
    assert sorted((line["id"], line["decode_errors"], line["flows"]) for line in lines) == [
        ("poison-1", 1, 0), ("poison-2", 1, 0)]


def test_a_failing_event_is_retried_then_dead_lettered_by_event_grid(backend):
    b = backend
    b["containers"]["state"].delete_container()  # every write of the core now fails
    messages = _capture_messages(PCAPS / "portscan/evilfingers_nmap_UDP_SCAN.pcap")[:1]
    _publish(b, messages)
    b["flows"].wait_idle()
    counters = b["flows"].counters
    assert (counters.failed, counters.delivered, counters.dead_lettered) == (b["flows"].max_attempts, 0, 1)
    (record,) = [json.loads(v) for n, v in _blobs(b["containers"]["deadletter"], "KUBESONAR-SCORING/").items()]
    assert record[0]["id"] == messages[0].key and record[0]["deliveryAttempts"] == b["flows"].max_attempts
    assert "ContainerNotFound" in record[0]["lastDeliveryOutcome"]


def test_a_redelivered_event_duplicates_nothing(backend):
    b = backend
    _publish(b, _capture_messages(PCAPS / "portscan/evilfingers_nmap_UDP_SCAN.pcap"))
    b["flows"].wait_idle()
    (alert,) = _alerts(b)
    assert len(b["alerts"].received) == 1
    for event in list(b["flows"].received):
        b["flows"].redeliver(event)
    b["flows"].wait_idle()
    (again,) = _alerts(b)
    assert again["count"] == alert["count"] == 1 and len(b["alerts"].received) == 1


def test_sixteen_concurrent_invocations_lose_no_baseline_update(backend):
    b = backend
    messages = []
    for n in range(16):  # each brings six workloads of its own, all during learning
        flows = FlowRecords.empty(6)
        flows.columns["first_ts"] = np.full(6, 1_700_000_000 * 10**9, dtype=np.int64)
        flows.columns["src_namespace"][:] = "team"
        flows.columns["src_workload_kind"][:] = "Deployment"
        flows.columns["src_workload_name"] = np.array([f"w{n}-{i}" for i in range(6)], dtype=object)
        messages += window_messages(BatchHeader("prod", f"node-{n}", f"node-{n}/1", 0, *LIVE_WINDOW), flows, LIMIT)
    _publish(b, messages)  # one request; the stand-in invokes the function 16 at a time
    b["flows"].wait_idle()
    assert b["flows"].counters.delivered == 16 and b["flows"].counters.failed == 0
    doc = json.loads(b["containers"]["state"].download_blob("state/prod/detectors.json").readall())
    assert len(doc["detectors"]["new_workload"]["workloads"]) == 16 * 6 and len(doc["applied"]) == 16


def test_the_timer_reports_a_sensor_that_went_silent(backend):
    b = backend
    header = BatchHeader("prod", "node-7", "node-7/5f1", 0, *LIVE_WINDOW,
                         counters={"packets": 10, "kernel_packets": 10, "kernel_drops": 0})
    _publish(b, window_messages(header, FlowRecords.empty(), LIMIT))
    b["flows"].wait_idle()
    b["app"].check_sensor_health(None)
    assert _alerts(b) == []  # not yet
    time.sleep(1.5)
    b["app"].check_sensor_health(None)
    (alert,) = _alerts(b)
    assert (alert["type"], alert["source"]["node"]) == ("sensor_silent", "node-7")
    (note,) = b["alerts"].received
    assert (note["subject"], note["data"]["id"]) == ("prod/sensor_silent", alert["id"])
    b["app"].check_sensor_health(None)
    assert len(_alerts(b)) == 1 and len(b["alerts"].received) == 1  # once per silence


def test_a_cluster_whose_health_document_is_broken_does_not_stop_the_others_check(backend, caplog):
    b = backend
    b["containers"]["state"].upload_blob("state/aaa/sensor_health.json", b"[]")  # checked before prod
    header = BatchHeader("prod", "node-7", "node-7/5f1", 0, *LIVE_WINDOW,
                         counters={"packets": 10, "kernel_packets": 10, "kernel_drops": 0})
    _publish(b, window_messages(header, FlowRecords.empty(), LIMIT))
    b["flows"].wait_idle()
    time.sleep(1.5)
    b["app"].check_sensor_health(None)
    (alert,) = _alerts(b)
    assert (alert["type"], alert["source"]["node"]) == ("sensor_silent", "node-7")
    faults = [json.loads(r.getMessage()) for r in caplog.records if '"fault met"' in r.getMessage()]
    assert len(faults) == 1 and "state/aaa/sensor_health.json" in faults[0]["error"]


def test_a_setting_that_is_not_a_number_stops_the_cold_start_naming_the_variable(backend, monkeypatch):
    """float() alone raised a bare ValueError ("could not convert string to float: '60s'") naming neither
    the variable nor the setting."""
    from kubesonar.functions.azure import runtime
    from kubesonar.shared.errors import ConfigError

    monkeypatch.setenv("KUBESONAR_SENSOR_SILENT_AFTER_S", "60s")
    with pytest.raises(ConfigError, match="KUBESONAR_SENSOR_SILENT_AFTER_S='60s' is not a number of seconds"):
        importlib.reload(runtime)


def test_the_app_indexes_as_the_python_worker_reads_it(backend):
    functions = {f.get_function_name(): json.loads(f.get_function_json()) for f in backend["app"].app.get_functions()}
    bindings = {name: [(b["type"], b["direction"]) for b in f["bindings"]] for name, f in functions.items()}
    assert bindings == {"score_batch": [("eventGridTrigger", "IN")], "check_sensor_health": [("timerTrigger", "IN")]}
    (timer,) = functions["check_sensor_health"]["bindings"]
    assert timer["schedule"] == "0 */1 * * * *" and timer["runOnStartup"] is False
