"""The long benign run, two simulated days of it (the evaluation runs seven): no false alarm after the
learning day with the platform allowlist and the shop's own (its periodic integrations, which
beaconing judges cold), and without them only what api_server_access reports by design
(metrics-server reading each kubelet) and those integrations."""

from __future__ import annotations

from pathlib import Path

from kubesonar.shared.allowlist import load_allowlist
from lab.benign import NODES, PLATFORM_ALLOWLIST, run_benign

SHOP_INTEGRATIONS = Path(__file__).resolve().parents[1] / "fixtures" / "allowlists" / "shop-integrations.yaml"


def test_two_simulated_days_raise_nothing_but_the_injected_attack():
    """The control proves the run can see: a beacon and an upload planted on day two are reported, and
    nothing else is."""
    allow = (*load_allowlist(PLATFORM_ALLOWLIST), *load_allowlist(SHOP_INTEGRATIONS))
    run = run_benign(days=2, inject_at_s=30 * 3600, allowlist=allow)
    assert run.flows > 500_000 and run.dns_messages > 50_000 and run.workloads == 40
    found = sorted({(a["type"], a["source"]["workload"]) for a in run.alerts})
    assert found == [("beaconing", "shop/Deployment/reviews"), ("exfiltration", "shop/Deployment/reviews"),
                     ("unusual_destination", "shop/Deployment/reviews")], found
    assert run.allowlisted >= len(NODES)


def test_without_allowlists_only_the_kubelet_readers_and_the_periodic_integrations_are_reported():
    run = run_benign(days=1.2, allowlist=())
    assert sorted({(a["type"], a["source"]["workload"]) for a in run.alerts}) == [
        ("api_server_access", "kube-system/Deployment/metrics-server"),
        ("beaconing", "logging/DaemonSet/fluent-bit"), ("beaconing", "shop/Deployment/fx-rates"),
        ("beaconing", "shop/Deployment/license-agent")]
    assert len([a for a in run.alerts if a["type"] == "api_server_access"]) == len(NODES)
