"""Beaconing, exfiltration, unusual_destination, watchlist_hit and DNS-based rules on flows built to
the point: what each must report, and the look-alikes it must not."""

from __future__ import annotations

import json

import numpy as np

from kubesonar.functions.local.notifier import CollectingNotifier
from kubesonar.functions.local.store import LocalObjectStore
from kubesonar.shared.batch import BatchHeader, decode_batch, encode_batch
from kubesonar.shared.detectors import batch_of
from kubesonar.shared.detectors.beaconing import BeaconingDetector, mad_floor
from kubesonar.shared.detectors.crypto_mining import CryptoMiningDetector
from kubesonar.shared.detectors.dns_tunneling import DnsTunnelingDetector
from kubesonar.shared.detectors.exfiltration import ExfiltrationDetector
from kubesonar.shared.detectors.unusual_destination import UnusualDestinationDetector
from kubesonar.shared.dns import DnsMessages
from kubesonar.shared.flow import ConnState, FlowRecords, address_bytes
from kubesonar.shared.pipeline import CoreConfig, Dependencies, process_batch
from kubesonar.shared.ports import SystemClock

from helpers import scores_of

S = 1_000_000_000
HOUR, DAY = 3600 * S, 86400 * S
T0 = 1_767_225_600 * S


def flows(rows: list[dict]) -> FlowRecords:
    """Flow records from dicts (src, dst, dport, t, and optional sizes), from pod 'shop/Deployment/<src_name>'."""
    rec = FlowRecords.empty(len(rows))
    c = rec.columns
    for i, r in enumerate(rows):
        c["src_addr"][i] = np.void(address_bytes(r["src"]))
        c["dst_addr"][i] = np.void(address_bytes(r["dst"]))
        c["first_ts"][i] = c["conn_start"][i] = r["t"]
        c["last_ts"][i] = r["t"] + r.get("dur", S // 2)
        c["src_port"][i], c["dst_port"][i], c["proto"][i] = 40000 + i % 20000, r.get("port", 443), r.get("proto", 6)
        c["packets_out"][i], c["packets_in"][i] = 10, 10
        c["bytes_out"][i], c["bytes_in"][i] = r.get("out", 1500), r.get("in", 4000)
        c["flags_out"][i], c["flags_in"][i] = 0x1B, 0x1B
        c["state"][i] = int(ConnState.CLOSED)
        if r.get("name"):
            c["src_namespace"][i], c["src_workload_kind"][i], c["src_workload_name"][i] = "shop", "Deployment", r["name"]
    return rec


def test_a_fixed_beacon_is_reported_after_seven_check_ins_and_poisson_traffic_is_not():
    rng = np.random.default_rng(1)
    d = BeaconingDetector(learning_period_ns=0)
    fixed = [{"src": "10.1.0.5", "dst": "203.0.113.9", "t": T0 + k * 60 * S, "name": "implant"} for k in range(7)]
    assert [s.alarm for s in scores_of(d, flows(fixed[:6]))] == []  # 5 intervals: not yet judged
    (score,) = scores_of(d, flows(fixed[6:]))
    assert score.alarm and score.endpoint["workload"] == "shop/Deployment/implant"
    # 300 pairs of Poisson arrivals, 40 connections each: requests, not a clock
    rows = [{"src": "10.1.0.9", "dst": f"198.18.{p // 250}.{p % 250}", "t": T0 + int(t * S), "name": "webhooks",
             "out": int(rng.integers(1500, 6000))}
            for p in range(300) for t in np.cumsum(rng.exponential(600, 40))]
    rows.sort(key=lambda r: r["t"])
    poisson = BeaconingDetector(learning_period_ns=0)
    alarms = [s for chunk in np.array_split(np.arange(len(rows)), 40)
              for s in scores_of(poisson, flows([rows[i] for i in chunk])) if s.alarm]
    assert alarms == []


def test_jittered_beacons_need_more_check_ins_the_more_they_jitter():
    rng = np.random.default_rng(2)
    times = np.cumsum(120 * (1 + rng.uniform(-0.2, 0.2, 40)))
    d = BeaconingDetector(learning_period_ns=0)
    alarms = [k for k, t in enumerate(times)
              if any(s.alarm for s in scores_of(d, flows([{"src": "10.1.0.5", "dst": "203.0.113.9", "t": T0 + int(t * S)}])))]
    assert alarms and 10 <= alarms[0] <= 30
    assert mad_floor(6) < mad_floor(24) < mad_floor(64)


def test_beacons_inside_the_cluster_are_not_judged_and_one_seen_while_learning_is_reported_not_learned():
    d = BeaconingDetector(learning_period_ns=DAY)
    while_learning = [{"src": "10.1.0.5", "dst": "198.18.20.8", "t": T0 + k * 60 * S, "name": "fx"} for k in range(30)]
    internal = [{"src": "10.1.0.6", "dst": "10.1.0.7", "t": T0 + k * 30 * S, "name": "prom"} for k in range(30)]
    scores = scores_of(d, flows(while_learning + internal))
    beacons = [s for s in scores if s.flagged]
    assert beacons and {s.endpoint["workload"] for s in beacons} == {"shop/Deployment/fx"}  # cold: no learning wait
    later = [dict(r, t=r["t"] + 2 * DAY) for r in while_learning]
    again = [s for s in scores_of(d, flows(later)) if s.alarm]
    assert again and not any(s.fresh for s in again), "still a beacon after learning, reported once"


def test_exfiltration_needs_a_baseline_and_flags_far_above_it_without_learning_the_theft():
    d = ExfiltrationDetector(learning_period_ns=0)
    day = [{"src": "10.1.0.5", "dst": f"198.51.100.{h % 4}", "t": T0 + h * HOUR, "out": 2_000_000 + h * 1000,
            "name": "api"} for h in range(30)]
    assert not any(s.alarm for s in scores_of(d, flows(day)))
    theft = [{"src": "10.1.0.5", "dst": "203.0.113.80", "t": T0 + 31 * HOUR + k * S, "out": 20_000_000,
              "name": "api"} for k in range(5)]
    (score,) = [s for s in scores_of(d, flows(theft)) if s.alarm]
    assert score.evidence["bytes_this_hour"] == 100_000_000 and score.evidence["destination"] == "203.0.113.0/24"
    scores_of(d, flows([dict(theft[0], t=T0 + 33 * HOUR, out=1000)]))  # the theft's hour closes
    history = d.to_state()["subjects"]["shop/Deployment/api"]["hourly_bytes"]
    assert max(history) < 10_000_000, "an hour that raised an alarm is never learned"
    again = [{"src": "10.1.0.5", "dst": "203.0.113.80", "t": T0 + 40 * HOUR, "out": 100_000_000, "name": "api"}]
    assert [s.alarm for s in scores_of(d, flows(again))] == [True]


def test_icmp_volume_is_exfiltration_without_a_baseline():
    d = ExfiltrationDetector(learning_period_ns=DAY)
    pings = [{"src": "10.1.0.5", "dst": "203.0.113.7", "t": T0 + k * S, "out": 60_000, "proto": 1, "port": 0}
             for k in range(20)]
    assert any(s.alarm and s.evidence["kind"] == "icmp" for s in scores_of(d, flows(pings)))


def test_unusual_port_is_reported_once_an_hour_and_busy_workloads_make_no_network_findings():
    d = UnusualDestinationDetector(learning_period_ns=DAY)
    base = [{"src": "10.1.0.5", "dst": "198.51.100.20", "t": T0 + h * HOUR, "name": "api"} for h in range(26)]
    busy = [{"src": "10.1.0.6", "dst": f"{20 + h}.{h}.1.1", "t": T0 + h * HOUR, "name": "webhooks"} for h in range(26)]
    assert d.observe(batch_of(flows(base + busy))) == []
    after = T0 + 27 * HOUR
    odd = [{"src": "10.1.0.5", "dst": "198.51.100.20", "port": 4444 + k, "t": after + k * S, "name": "api"}
           for k in range(3)]
    new_network = [{"src": "10.1.0.6", "dst": "99.1.2.3", "t": after, "name": "webhooks"}]
    findings = d.observe(batch_of(flows(odd + new_network)))
    assert [(f.source["workload"], f.evidence["kind"], f.evidence["port"]) for f in findings] == [
        ("shop/Deployment/api", "port", 4444)]  # one an hour: 4445 and 4446 wait, counted in the alert
    young = [{"src": "10.1.0.9", "dst": "198.51.100.20", "port": 9999, "t": after, "name": "born-today"}]
    assert d.observe(batch_of(flows(young))) == []  # a workload first seen today is still learning


def _pipeline(tmp_path, config=CoreConfig(learning_period_s=0)):
    store = LocalObjectStore(tmp_path / "state")
    return store, Dependencies(store, CollectingNotifier(), SystemClock(), config)


def _score(deps, records: FlowRecords, seq: int, dns: DnsMessages | None = None):
    header = BatchHeader("c", "n", "s", seq, T0, T0 + HOUR)
    return [a for m in encode_batch(header, records, dns=dns) for a in process_batch(decode_batch(m), deps).alerts]


def test_watchlists_in_the_store_match_ips_networks_and_domains_until_they_expire(tmp_path):
    store, deps = _pipeline(tmp_path)
    store.put("watchlists/feed.json", json.dumps({"entries": [
        {"indicator": "203.0.113.66", "reason": "C2"}, {"indicator": "198.18.0.0/16"},
        {"indicator": "evil.example"}, {"indicator": "192.0.2.1", "expires": "2025-01-01T00:00:00Z"}]}).encode())
    store.put("watchlists/broken.json", b"{not json")
    from kubesonar.shared.watchlist import LOADER

    LOADER.forget()
    records = flows([{"src": "10.1.0.5", "dst": "203.0.113.66", "t": T0, "name": "api"},
                     {"src": "198.18.7.7", "dst": "10.1.0.6", "t": T0, "port": 22},
                     {"src": "10.1.0.5", "dst": "192.0.2.1", "t": T0, "name": "api"}])
    dns = DnsMessages.from_rows([{"ts": T0, "client": address_bytes("10.1.0.8"), "qname": "x.cdn.evil.example",
                                  "qtype": 1}])
    header = BatchHeader("c", "n", "s", 1, T0, T0 + HOUR)
    (message,) = encode_batch(header, records, dns=dns)
    result = process_batch(decode_batch(message), deps)
    hits = sorted((a["source"]["ip"], a["evidence"]["indicator"]) for a in result.alerts if a["type"] == "watchlist_hit")
    assert hits == [("10.1.0.5", "203.0.113.66"), ("10.1.0.6", "198.18.0.0/16"), ("10.1.0.8", "evil.example")]
    assert len(result.errors) == 1 and "broken" in result.errors[0]  # one bad list, the others still apply


def test_dns_tunnel_and_pool_lookups_from_dns_alone(tmp_path):
    rows = [{"ts": T0 + i * S // 10, "client": address_bytes("10.1.0.5"), "qname": f"{i:04x}{'a7' * 24}.t.example.net",
             "qtype": 16, "client_namespace": "shop", "client_workload_kind": "Deployment",
             "client_workload_name": "cart"} for i in range(60)]
    rows.append({"ts": T0, "client": address_bytes("10.1.0.9"), "qname": "xmr.2miners.com", "qtype": 1})
    benign = [{"ts": T0 + i * S, "client": address_bytes("10.1.0.7"), "qname": f"img{i % 30}.cdn.example.org",
               "qtype": 1} for i in range(200)]
    dns = DnsMessages.from_rows(rows + benign)
    tunnel = DnsTunnelingDetector()
    (finding,) = tunnel.observe(batch_of(FlowRecords.empty(), None, dns))
    assert finding.source["workload"] == "shop/Deployment/cart" and finding.evidence["domain"] == "example.net"
    mining = CryptoMiningDetector()
    (pool,) = mining.observe(batch_of(FlowRecords.empty(), None, dns))
    assert pool.source["ip"] == "10.1.0.9" and pool.evidence["domain"] == "2miners.com"


def test_a_cronjob_s_schedule_is_not_a_beacon():
    nightly = flows([{"src": "10.1.0.5", "dst": "198.18.40.7", "t": T0 + k * DAY, "name": "backup"} for k in range(9)])
    nightly.columns["src_workload_kind"][:] = "CronJob"
    d = BeaconingDetector(learning_period_ns=0)
    assert not any(s.alarm for s in scores_of(d, nightly))
    nightly.columns["src_workload_kind"][:] = "Deployment"
    assert any(s.alarm for s in scores_of(BeaconingDetector(learning_period_ns=0), nightly))


def test_an_allowlist_entry_by_workload_and_port_silences_a_beacon(tmp_path):
    from kubesonar.shared.allowlist import is_allowed, load_allowlist

    allow = tmp_path / "allow.yaml"
    allow.write_text("- rule: beaconing\n  reason: licence check every minute\n  match:\n"
                     "    workload: licence\n    port: 8443\n")
    entries = load_allowlist(allow)
    beacon = [{"src": "10.1.0.5", "dst": "203.0.113.9", "t": T0 + k * 60 * S, "name": "licence", "port": port}
              for port in (8443, 9443) for k in range(8)]
    d = BeaconingDetector(learning_period_ns=0)
    findings = d.observe(batch_of(flows(sorted(beacon, key=lambda r: r["t"]))))
    assert sorted((f.destination["port"], is_allowed(f, entries)) for f in findings) == [(8443, True), (9443, False)]
