"""The long benign run, two simulated days of it (the evaluation runs seven): no false alarm after the
learning day with the platform allowlist, and without it only what api_server_access reports by
design (metrics-server reading each kubelet)."""

from __future__ import annotations

from lab.benign import NODES, run_benign


def test_two_simulated_days_raise_nothing_but_the_injected_attack():
    """The control proves the run can see: a beacon and an upload planted on day two are reported, and
    nothing else is."""
    run = run_benign(days=2, inject_at_s=30 * 3600)
    assert run.flows > 500_000 and run.dns_messages > 50_000 and run.workloads == 40
    found = sorted({(a["type"], a["source"]["workload"]) for a in run.alerts})
    assert found == [("beaconing", "shop/Deployment/reviews"), ("exfiltration", "shop/Deployment/reviews"),
                     ("unusual_destination", "shop/Deployment/reviews")], found
    assert run.allowlisted >= len(NODES)


def test_without_the_platform_allowlist_only_the_kubelet_readers_are_reported():
    run = run_benign(days=1.2, allowlist=())
    assert sorted({(a["type"], a["source"]["workload"]) for a in run.alerts}) == [
        ("api_server_access", "kube-system/Deployment/metrics-server")]
    assert len(run.alerts) == len(NODES)
