"""kubesonar demo: the planted attacks and nothing else."""

from __future__ import annotations

import json
import subprocess

from kubesonar.demo import run_demo

ALL_TYPES = ["api_server_access", "beaconing", "brute_force", "crypto_mining", "dns_tunneling", "exfiltration",
             "metadata_access", "new_workload", "port_scan", "unusual_destination", "watchlist_hit"]


def test_demo_raises_exactly_the_planted_alerts(tmp_path):
    result, truth = run_demo(str(tmp_path))
    by_type = {a["type"]: a for a in result.alerts}
    assert sorted(by_type) == sorted(ALL_TYPES)
    assert len(result.alerts) == len(ALL_TYPES)  # one alert per rule: nothing else, nothing twice
    for rule in ALL_TYPES:
        assert (by_type[rule]["source"]["workload"] or by_type[rule]["source"]["ip"]) == (
            truth[rule] if rule != "port_scan" else "shop/Deployment/frontend"), rule
    assert by_type["port_scan"]["source"]["ip"] == truth["scanner"]
    assert by_type["port_scan"]["source"]["workload"] == "shop/Deployment/frontend"
    assert by_type["new_workload"]["source"]["workload"] == truth["new_workload"]
    assert by_type["brute_force"]["source"]["workload"] == truth["brute_force"]
    assert by_type["brute_force"]["evidence"]["port"] == 5432
    for rule in ("metadata_access", "api_server_access"):
        assert by_type[rule]["source"]["workload"] == truth[rule]
    assert by_type["metadata_access"]["evidence"]["target"] == "169.254.169.254"
    assert by_type["api_server_access"]["evidence"]["target"] == "kubelet 10.0.0.11"
    assert (tmp_path / "state" / "alerts" / "demo").is_dir()


def test_demo_command_prints_alert_lines():
    out = subprocess.run(["kubesonar", "demo", "--format", "json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    alerts = [json.loads(line) for line in out.stdout.splitlines()]
    assert sorted({a["type"] for a in alerts}) == ALL_TYPES
    for a in alerts:
        assert {"id", "type", "severity", "title", "description", "first_seen", "last_seen", "count", "source",
                "destination", "evidence", "mitre", "status", "tags", "assignee"} <= set(a)
        assert a["status"] == "open" and a["mitre"]["technique_id"].startswith("T")
