"""The long benign run, two simulated days of it (the evaluation runs seven): no false alarm after the
learning day with the platform allowlist, and without it only what api_server_access reports by design
(metrics-server reading each kubelet). The shop's periodic integrations name their hosts in the
ClientHello, so beaconing learns their clocks while the cluster learns. The run holds the look-alikes of issue
17's signals (lab/benign_lookalikes.py): NTP, health checks, scrapes and remote_write, websockets and
gRPC streams with steady heartbeats, the mesh's mTLS, CDN-heavy DNS, DoH, and plain HTTP, websockets,
unfingerprinted TLS and a session joined mid-stream on the web ports, and an http:// probe every 30 s
that names its host only in the HTTP Host header."""

from __future__ import annotations

import numpy as np
import pytest

from kubesonar.shared.allowlist import load_allowlist
from kubesonar.shared.flow import Opening
from lab.benign import NODES, PLATFORM_ALLOWLIST, WORKLOADS, Cluster, run_benign, simulate_window
from lab.benign_lookalikes import ENVOY


@pytest.mark.slow
def test_two_simulated_days_raise_nothing_but_the_injected_attack():
    """The control proves the run can see: a beacon and an upload planted on day two are reported, and
    nothing else is."""
    run = run_benign(days=2, inject_at_s=30 * 3600, allowlist=load_allowlist(PLATFORM_ALLOWLIST))
    assert run.flows > 500_000 and run.dns_messages > 50_000 and run.workloads == len(WORKLOADS)
    found = sorted({(a["rule"], a["source"]["workload"]) for a in run.alerts})  # a rule hidden under a type shows
    assert found == [("beaconing", "shop/Deployment/reviews"), ("exfiltration", "shop/Deployment/reviews"),
                     ("unusual_destination", "shop/Deployment/reviews")], found
    assert run.allowlisted >= len(NODES)


@pytest.mark.slow
def test_without_the_platform_allowlist_only_the_kubelet_readers_are_reported():
    run = run_benign(days=1.2, allowlist=())
    assert sorted({(a["rule"], a["source"]["workload"]) for a in run.alerts}) == [
        ("api_server_access", "kube-system/Deployment/metrics-server")]
    assert len(run.alerts) == len(NODES)


def test_the_look_alikes_are_in_the_traffic():
    """What the new rules read is there: long sessions with steady in-session heartbeats, TLS fingerprints
    (Envoy's between sidecars, SNI to DoH servers), NTP, and hashed CDN names answered by CNAME chains."""
    for w in WORKLOADS:
        w.addresses, w.release = [], 1
    cluster = Cluster(np.random.default_rng(3))
    simulate_window(cluster, 1_767_225_600.0, np.random.default_rng(4))  # sessions open
    records, dns = simulate_window(cluster, 1_767_226_200.0, np.random.default_rng(5))
    cols = records.columns
    heartbeats = (cols["gaps_out"] >= 10) & (cols["gap_cv_milli_out"] < 100) & (cols["conn_start"] < cols["first_ts"])
    assert heartbeats.sum() > 20  # websockets, OTLP and xDS streams, remote_write held across windows
    assert (cols["tls_ja3"] == ENVOY.ja3).sum() > 100 and {"cloudflare-dns.com", "dns.google"} <= set(cols["tls_sni"])
    assert ((cols["dst_port"] == 123) & (cols["proto"] == 17)).sum() > 100
    cdn = [row for row in dns if row["qname"].endswith(("cloudfront.net", "akamaiedge.net")) and row["response"]]
    assert len({row["qname"] for row in cdn}) > 30 and min(row["answers"] for row in cdn) >= 2
    # the web ports as flow schema 5 sees them: plain HTTP on 80 out (image fetches),
    # TLS on 443 with and without a fingerprint, a session joined mid-stream; nothing else on them
    out = ~np.isin(cols["dst_addr"], cols["src_addr"])
    web = {port: set(cols["opening"][out & (cols["dst_port"] == port) & (cols["proto"] == 6)].tolist())
           for port in (80, 443)}
    assert web[80] == {Opening.HTTP} and Opening.TLS in web[443] and web[443] <= {Opening.TLS, Opening.UNKNOWN}
    assert ((cols["dst_port"] == 80) & out).sum() > 5
    assert ((cols["opening"] == Opening.TLS) & (cols["tls_ja3"] == "") & (cols["dst_port"] == 443)).any()
    # the plain-HTTP probe: a new connection every 30 s to port 80, named by its Host alone
    probe = cols["http_host"] == "status.partner.example"
    assert probe.sum() == 20 and set(cols["dst_port"][probe].tolist()) == {80} and not cols["tls_sni"][probe].any()
    assert set(cols["src_workload_name"][probe].tolist()) == {"blackbox-exporter"}
