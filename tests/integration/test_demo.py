"""kubesonar demo: the planted attacks and nothing else."""

from __future__ import annotations

import json
import subprocess

from kubesonar.functions.local.demo import run_demo


def test_demo_raises_exactly_the_planted_alerts(tmp_path):
    result, truth = run_demo(str(tmp_path))
    by_type = {a["type"]: a for a in result.alerts}
    assert sorted(by_type) == ["api_server_access", "brute_force", "metadata_access", "new_workload", "port_scan"]
    assert len(result.alerts) == 5
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
    assert {a["type"] for a in alerts} == {"port_scan", "new_workload", "brute_force", "metadata_access",
                                           "api_server_access"}
    for a in alerts:
        assert {"id", "type", "severity", "title", "description", "first_seen", "last_seen", "count", "source",
                "destination", "evidence", "mitre", "status", "tags", "assignee"} <= set(a)
        assert a["status"] == "open" and a["mitre"]["technique_id"].startswith("T")
