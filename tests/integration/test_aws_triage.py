"""Triage on AWS (moto on 127.0.0.1): the CLI reads and triages the function's alerts in their S3
bucket, a false positive adds its allowlist entry to the state bucket, and the function applies it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_aws_pipeline import _notifications, _publish_capture, _received_event, backend  # noqa: F401

from kubesonar.shared import lists_store
from kubesonar.shared.pipeline import process_deliveries

from aws_emulator import LambdaContext, aws_endpoint, client  # noqa: F401 - the fixture
from conftest import PCAPS

KUBESONAR = str(Path(sys.executable).with_name("kubesonar"))
SCAN = PCAPS / "portscan/evilfingers_nmap_TCP_SYN_SCAN.pcap"


def _ks(b, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AWS_ENDPOINT_URL": b["endpoint"], "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "USER": "ana"}
    done = subprocess.run([KUBESONAR, *args], capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stderr
    return done


def test_a_false_positive_marked_from_the_cli_silences_the_function(backend):  # noqa: F811
    b = backend
    alerts_url, state_url = f"s3://{b['names']['alerts']}", f"s3://{b['names']['state']}"
    sent = _publish_capture(b, SCAN)
    b["handler"].lambda_handler(_received_event(b, sent), LambdaContext())
    assert len(_notifications(b)) == 1
    (alert,) = [json.loads(line) for line in _ks(b, "alerts", "list", "--store", alerts_url, "--format",
                                                 "json").stdout.splitlines()]
    assert alert["type"] == "port_scan" and alert["status"] == "open"
    out = _ks(b, "alerts", "update", alert["id"], "--store", alerts_url, "--lists-store", state_url,
              "--status", "false_positive", "--allowlist", "scanners", "--comment", "our own nmap").stdout
    assert "added to allowlist scanners:" in out and "cidr: 192.168.1.10" in out
    stored = b["s3"].get_object(Bucket=b["names"]["state"], Key="allowlists/scanners.yaml")["Body"].read()
    assert b"rule: port_scan" in stored
    assert "scanners 1: port_scan cidr=192.168.1.10/32" in _ks(b, "allowlist", "list", "--store", state_url).stdout

    lists_store.ALLOW_LOADER.forget()  # as after the warm instance's freshness bound
    sent = _publish_capture(b, PCAPS / "portscan/evilfingers_nmap_UDP_SCAN.pcap", sequence=1)  # it scans again
    deliveries = [b["handler"]._delivery(r) for r in _received_event(b, sent)["Records"]]
    outcome = process_deliveries(deliveries, b["handler"].deps)  # what the handler does with the records
    assert outcome.retry == [] and outcome.poison == []
    assert outcome.result.allowlisted >= 1 and outcome.result.alerts == []  # the scan was seen, and silenced
    assert _notifications(b) == []
    shown = json.loads(_ks(b, "alerts", "show", alert["id"], "--store", alerts_url, "--format", "json").stdout)
    assert shown["status"] == "false_positive" and shown["count"] == 1  # the scan again: silenced, not counted
    assert [h["by"] for h in shown["history"]] == ["kubesonar", "ana", "ana"]


def test_the_lists_commands_write_where_the_function_reads_them_with_the_readmes_exports(backend,  # noqa: F811
                                                                                       monkeypatch):
    """The README's triage loop exports KUBESONAR_STORE (the alerts bucket) and KUBESONAR_LISTS_STORE (the
    state bucket), then edits lists with `kubesonar allowlist|watchlist add`: those must land in the state
    bucket, where the function reads them, not in the alerts bucket, where nothing does."""
    b = backend
    alerts_url, state_url = f"s3://{b['names']['alerts']}", f"s3://{b['names']['state']}"
    monkeypatch.setenv("KUBESONAR_STORE", alerts_url)
    monkeypatch.setenv("KUBESONAR_LISTS_STORE", state_url)
    _ks(b, "allowlist", "add", "--name", "platform", "--rule", "port_scan", "--reason", "our own nmap",
        "--cidr", "192.168.1.10/32")
    _ks(b, "watchlist", "add", "203.0.113.7", "--name", "feed", "--reason", "C2")
    listed = _ks(b, "allowlist", "list").stdout + _ks(b, "watchlist", "list").stdout
    state = {o["Key"] for o in b["s3"].list_objects_v2(Bucket=b["names"]["state"]).get("Contents", [])}
    in_alerts = {o["Key"] for o in b["s3"].list_objects_v2(Bucket=b["names"]["alerts"]).get("Contents", [])}
    assert {"allowlists/platform.yaml", "watchlists/feed.json"} <= state, state
    assert not {k for k in in_alerts if k.startswith(("allowlists/", "watchlists/"))}, in_alerts
    assert "platform 1: port_scan cidr=192.168.1.10/32" in listed and "feed: 203.0.113.7 (ip) C2" in listed
    # --store given on the command line still names the store
    shown = _ks(b, "allowlist", "list", "--store", alerts_url).stdout
    assert "platform" not in shown
