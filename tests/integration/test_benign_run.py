"""The long benign run, two simulated days of it (the evaluation runs seven): no false alarm after the
learning day with the platform allowlist, and without it only what api_server_access reports by
design (metrics-server reading each kubelet)."""

from __future__ import annotations

from kubesonar.benign import NODES, run_benign


def test_two_simulated_days_raise_no_false_alarm_after_learning():
    run = run_benign(days=2)
    assert run.flows > 500_000 and run.dns_messages > 50_000 and run.workloads == 40
    assert run.alerts == [], [(a["type"], a["source"]["workload"], a["evidence"]) for a in run.alerts]
    assert run.allowlisted >= len(NODES)


def test_without_the_platform_allowlist_only_the_kubelet_readers_are_reported():
    run = run_benign(days=1.2, allowlist=())
    assert sorted({(a["type"], a["source"]["workload"]) for a in run.alerts}) == [
        ("api_server_access", "kube-system/Deployment/metrics-server")]
    assert len(run.alerts) == len(NODES)
