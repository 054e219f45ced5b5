"""Kept state is bounded by the cluster's present, not its history: weeks of destinations that rotate (a
CDN's, a SaaS's, webhook customers') leave the detectors that key state by remote address holding the last
few days of them, while a steady beacon among them is still caught (lab/state_growth.py measures the
whole core under such churn)."""

from __future__ import annotations

from kubesonar.shared.detectors import IDLE_FORGET_NS, batch_of
from kubesonar.shared.detectors.beaconing import BeaconingDetector
from kubesonar.shared.detectors.long_connection import LongConnectionDetector
from kubesonar.shared.detectors.reverse_shell import ReverseShellDetector
from kubesonar.shared.detectors.tls_bare_ip import TlsBareIpDetector
from tests.c2_flows import c2_flows

S = 1_000_000_000
DAY = 86_400 * S
START = 1_800_000_000 * S
PER_DAY = 40  # new remote addresses a day
CLIENT = ("shop", "Deployment", "media-proxy")


def _day(day: int) -> list[dict]:
    """A day of a workload fetching from that day's addresses, three times each, plus a beacon to one
    address every 10 minutes over the day's last 2 hours."""
    rows = [{"src": "10.244.0.5", "dst": f"198.{18 + day // 200}.{day % 200}.{i + 1}", "t": START + day * DAY + k * 3600 * S + i * S,
             "src_workload": CLIENT, "dport": 443} for k in range(3) for i in range(PER_DAY)]
    beacon = [{"src": "10.244.0.9", "dst": "203.0.113.99", "t": START + day * DAY + 22 * 3600 * S + k * 600 * S,
               "src_workload": ("shop", "Deployment", "reviews"), "dport": 8443, "out": 900, "in": 2400}
              for k in range(12)]
    return sorted(rows + beacon, key=lambda r: r["t"])


def test_detectors_keyed_by_remote_address_forget_what_rotated_away():
    beaconing, shells, bare = BeaconingDetector(0, max_pairs=5_000), ReverseShellDetector(), TlsBareIpDetector()
    long = LongConnectionDetector(0)
    beacon_days = []
    for day in range(30):
        batch = batch_of(c2_flows(_day(day)))
        if any(f.type == "beaconing" and f.source["workload"] == "shop/Deployment/reviews"
               for f in beaconing.observe(batch)):
            beacon_days.append(day)
        shells.observe(batch)
        bare.observe(batch)
        long.observe(batch)
    days_kept = IDLE_FORGET_NS // DAY + 1
    # 30 days made 1,200 channels and addresses; the last few days' are kept
    assert len(beaconing.state.channels) <= days_kept * PER_DAY + 1, len(beaconing.state.channels)
    assert len(beaconing.state.destinations) <= days_kept * PER_DAY + 1, len(beaconing.state.destinations)
    assert len(shells.state.servers) <= days_kept * PER_DAY + 1, len(shells.state.servers)
    assert len(bare.state.servers) <= days_kept * PER_DAY + 1, len(bare.state.servers)
    assert len(long.state.users) <= days_kept * PER_DAY + 1, len(long.state.users)
    assert beacon_days and beacon_days[0] == 0  # what detection needs stays: the beacon is caught
    assert "shop/Deployment/reviews" in {c.source for c in beaconing.state.channels}


def test_new_workload_forgets_workloads_gone_for_weeks_and_keeps_the_ones_still_running():
    """Sixty days of a release's bare Job a day (a workload of its own name, run once): the baseline holds
    the workloads of the last 40 days, the steady ones stay learned (never reported) and a month-old Job
    that comes back is still known."""
    from kubesonar.shared.detectors.new_workload import FORGET_AFTER_NS, NewWorkloadDetector

    detector = NewWorkloadDetector(learning_period_ns=DAY)
    reported = []
    for day in range(60):
        t = START + day * DAY
        rows = [{"src": "10.244.1.1", "dst": "10.244.2.2", "t": t + 60 * S, "src_workload": ("shop", "Deployment", "web"),
                 "dst_workload": ("shop", "StatefulSet", "db"), "dport": 5432},
                {"src": f"10.245.{day}.1", "dst": "10.244.2.2", "t": t + 120 * S, "dst_workload": ("shop", "StatefulSet", "db"),
                 "src_workload": ("shop", "Job", f"db-migrate-{day:04d}"), "dport": 5432}]
        if day == 50:  # the first day's Job run again, 50 days on (forgotten) ... and day 30's (still known)
            rows += [{**rows[1], "src_workload": ("shop", "Job", "db-migrate-0000")},
                     {**rows[1], "src_workload": ("shop", "Job", "db-migrate-0030")}]
        found = [f.source["workload"] for f in detector.observe(batch_of(c2_flows(rows)))]
        reported += found
        if day == 50:
            assert sorted(found) == ["shop/Job/db-migrate-0000", "shop/Job/db-migrate-0050"]  # gone 50 days: new
    kept = detector.state.workloads
    assert len(kept) <= FORGET_AFTER_NS // DAY + 3, len(kept)
    assert {"shop/Deployment/web", "shop/StatefulSet/db"} <= set(kept)
    assert "shop/Deployment/web" not in reported


def _refused(rows: list[dict]):
    """c2_flows with the connections whose ``flags_in`` is RST|ACK refused (ConnState.REJECTED)."""
    from kubesonar.shared.flow import ConnState

    records = c2_flows(rows)
    refused = records.columns["flags_in"] == 0x14
    records.columns["state"][refused] = int(ConnState.REJECTED)
    records.columns["packets_in"][refused] = 1
    return records


def test_port_scan_remembers_the_last_days_of_contacts_and_sources():
    """Thirty days of pods replaced daily: each day's client pod (an address of its own, no workload name)
    contacts that day's 100 server pods. The contacts tried and the walks kept are the last days', not the
    month's 3,000 contacts and 30 sources; a scan after it all is still caught."""
    from kubesonar.shared.detectors.port_scan import PortScanDetector

    detector = PortScanDetector()
    for day in range(30):
        t = START + day * DAY
        rows = [{"src": f"10.246.{day}.1", "dst": f"10.247.{day}.{i + 1}", "t": t + i * S, "dport": 8080,
                 "dst_workload": ("shop", "Deployment", "api")} for i in range(100)]
        rows.append({"src": f"10.246.{day}.1", "dst": "10.247.255.1", "t": t + 200 * S, "dport": 9999,
                     "flags_in": 0x14})  # one refused: the day's walk is kept
        detector.observe(batch_of(_refused(rows)))
    contacts = len(detector.state.newer_contacts) + len(detector.state.older_contacts)
    days_kept = 2 * IDLE_FORGET_NS // DAY + 1
    assert contacts <= days_kept * 101, contacts
    assert len(detector.state.sources) <= IDLE_FORGET_NS // DAY + 1, sorted(detector.state.sources)
    t = START + 30 * DAY
    scan = [{"src": "10.246.99.9", "dst": f"10.248.0.{i + 1}", "t": t + i * S, "dport": 22, "flags_in": 0x14,
             "in": 0} for i in range(60)]
    assert any(f.type == "port_scan" for f in detector.observe(batch_of(_refused(scan))))
