"""Command and control: cold start, beacons inside one session, long quiet connections, reverse shells,
TLS fingerprints. Flows are built with flow schema 4's TLS and gap columns filled as the sensor fills
them (tests/c2_flows.py); each rule must report its case and stay quiet on the look-alikes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from c2_flows import IMPLANT_JA3, IMPLANT_JA4, KNOWN_JA4, S, c2_flows, heartbeat_session, shell_session
from hypothesis import given, settings
from hypothesis import strategies as st

from kubesonar.functions.local.notifier import CollectingNotifier
from kubesonar.functions.local.store import LocalObjectStore
from kubesonar.shared.batch import BatchHeader, decode_batch, encode_batch
from kubesonar.shared.detectors import batch_of
from kubesonar.shared.detectors.beaconing import BeaconingDetector, cv_floor
from kubesonar.shared.detectors.long_connection import LongConnectionDetector
from kubesonar.shared.detectors.new_tls_client import NewTlsClientDetector
from kubesonar.shared.detectors.reverse_shell import ReverseShellDetector
from kubesonar.shared.detectors.tls_bare_ip import TlsBareIpDetector
from kubesonar.shared.detectors.watchlist import WatchlistDetector
from kubesonar.shared.errors import ConfigError
from kubesonar.shared.flow import ConnState, FlowRecords, Opening
from kubesonar.shared.pipeline import CoreConfig, Dependencies, detectors, process_batch
from kubesonar.shared.ports import SystemClock
from kubesonar.shared.watchlist import LOADER, parse_sslbl_csv

from helpers import scores_of

HOUR, DAY = 3600 * S, 86400 * S
T0 = 1_767_225_600 * S
WEB = ("shop", "Deployment", "web")
WORKER = ("shop", "Deployment", "worker")


def _served(ip: str, t: int, workload: tuple[str, str, str] = WEB) -> dict:
    """A client outside connecting to ``ip``:8080, answered: the workload at ``ip`` serves."""
    return {"src": "198.51.100.77", "dst": ip, "t": t, "dport": 8080, "flags_in": 0x12, "dst_workload": workload}


def _alarms(detector, rows: list[dict]) -> list:
    return [s for s in scores_of(detector, c2_flows(sorted(rows, key=lambda r: r["t"]))) if s.flagged]


# -- cold start: one mechanism in the base ------------------------------------------------------------------


def test_rules_declare_whether_they_need_a_baseline():
    needs = {d.rule_id: d.needs_baseline for d in detectors(CoreConfig())}
    assert {r for r, n in needs.items() if n} == {"new_workload", "exfiltration", "unusual_destination",
                                                   "long_connection", "new_tls_client"}


def _pipeline(tmp_path, learning_s: float):
    store = LocalObjectStore(tmp_path / "state")
    return Dependencies(store, CollectingNotifier(), SystemClock(), CoreConfig(learning_period_s=learning_s))


def _process(deps, records: FlowRecords, seq: int) -> list[dict]:
    header = BatchHeader("c", "n", "s", seq, T0, T0 + HOUR)
    return [a for m in encode_batch(header, records) for a in process_batch(decode_batch(m), deps).alerts]


def test_a_beacon_is_reported_in_the_first_window_whatever_the_learning_period_and_never_learned(tmp_path):
    deps = _pipeline(tmp_path, learning_s=24 * 3600)
    implant = ("default", "Deployment", "implant")
    beacon = [{"src": "10.1.0.66", "dst": "203.0.113.9", "t": T0 + k * 5 * S, "src_workload": implant} for k in range(40)]
    usual = [{"src": "10.1.0.5", "dst": "198.51.100.20", "t": T0 + k * 97 * S, "src_workload": WEB} for k in range(3)]
    first = _process(deps, c2_flows(beacon + usual), 1)
    assert [(a["rule"], a["source"]["workload"]) for a in first] == [("beaconing", "default/Deployment/implant")]
    # after the learning day: the workload that was only ever seen beaconing was never learned as normal
    later = [{"src": ip, "dst": "10.1.0.99", "t": T0 + DAY + HOUR, "dport": 5432, "src_workload": w}
             for ip, w in (("10.1.0.66", implant), ("10.1.0.5", WEB))]
    new = [(a["type"], a["source"]["workload"]) for a in _process(deps, c2_flows(later), 2)
           if a["type"] == "new_workload"]
    assert new == [("new_workload", "default/Deployment/implant")]


def test_what_compares_with_the_past_stays_silent_while_learning():
    d = NewTlsClientDetector(learning_period_ns=DAY, baseline_ns=0)
    rows = [{"src": "10.1.0.5", "dst": "198.51.100.20", "t": T0 + k * S, "src_workload": WEB,
             "tls": {"ja4": ja4, "sni": "api.example"}} for k, ja4 in enumerate((KNOWN_JA4, IMPLANT_JA4))]
    scores = scores_of(d, c2_flows(rows))
    assert scores and all(s.warming_up and not s.flagged for s in scores)


# -- beaconing inside one session --------------------------------------------------------------------------


@pytest.mark.parametrize("beats, between, gaps, period_s, extra, reported", [
    (13, 6, 21, 13.5, {}, True),  # AsyncRAT's keep-alive through its commands (the capture's own figures)
    (40, 40, 81, 30.0, {}, True),  # as many exchanges as beats
    (11, 0, 12, 13.5, {}, False),  # under MIN_BEATS: Poisson bursts reach 10 now and then
    (20, 21, 42, 13.5, {}, False),  # more bursts between than on the beat: a busy session, not a timer
    (12, 0, 437, 30.0, {}, False),  # an SSH keep-alive over the idle end of an hour's typing: one stretch
    (13, 6, 21, 13.5, {"tls": {"ja4": IMPLANT_JA4, "sni": "ws.example"}}, False),  # named: judged on its past
])
def test_a_timer_through_the_other_bursts_of_a_session_is_a_beacon(beats, between, gaps, period_s, extra, reported):
    """The gaps between bursts mix the timer with the exchanges between its beats (CV 0.53, no clock by
    CV); the sensor's burst timer (flow schema 6) keeps the timer apart."""
    session = {"src": "10.1.0.5", "dst": "203.0.113.9", "t": T0, "held": 200, "dport": 4041, "src_workload": WEB,
               "gaps": {"out": (gaps, 9.2, 0.53)}, "beats": {"out": (beats, between, period_s)}, **extra}
    alarms = _alarms(BeaconingDetector(learning_period_ns=DAY), [session])
    assert bool(alarms) == reported
    if reported:
        (alarm,) = alarms
        assert (alarm.evidence["kind"], alarm.evidence["beats"], alarm.evidence["beats_between"]) == (
            "session_beacon", beats, between)
        assert alarm.evidence["beat_period_s"] == period_s


def test_a_heartbeat_inside_one_long_session_is_a_beacon_like_repeated_connections():
    d = BeaconingDetector(learning_period_ns=0)
    (alarm,) = _alarms(d, [heartbeat_session("10.1.0.5", "203.0.113.9", T0, minutes=20, every_s=5, cv=0.02,
                                             src_workload=WEB)])
    assert alarm.evidence["kind"] == "session_beacon" and alarm.evidence["gaps"] == 240
    assert alarm.identity == ("beacon", "203.0.113.9:443/6")  # one alert with the repeated-connection beacon
    jittered = heartbeat_session("10.1.0.6", "203.0.113.10", T0, minutes=40, every_s=10, cv=0.2 / np.sqrt(3))
    assert _alarms(BeaconingDetector(learning_period_ns=0), [jittered])  # +-20% uniform jitter


def test_a_clock_to_a_named_host_is_judged_against_the_workloads_past():
    """Exporters, remote_write and webhooks keep a clock to a host they name in the ClientHello: kept
    while the cluster learned, it stays quiet; a new one after is reported; an unnamed one is cold."""
    d = BeaconingDetector(learning_period_ns=DAY)
    hooks = {"sni": "hooks.example.com"}
    learning = heartbeat_session("10.1.0.5", "203.0.113.20", T0, src_workload=WEB, tls=hooks)
    assert _alarms(d, [learning]) == []  # learned, not reported
    bare = heartbeat_session("10.1.0.5", "203.0.113.21", T0 + HOUR, src_workload=WEB, tls={"sni": "203.0.113.21"})
    assert len(_alarms(d, [bare])) == 1  # an address as SNI is no name: cold, even while learning
    after = T0 + 2 * DAY
    assert _alarms(d, [heartbeat_session("10.1.0.5", "203.0.113.20", after, src_workload=WEB, tls=hooks)]) == []
    (new,) = _alarms(d, [heartbeat_session("10.1.0.5", "203.0.113.22", after + HOUR, src_workload=WEB,
                                           tls={"sni": "updates.example.net"})])
    assert new.evidence["sni"] == "updates.example.net"


def _probe(dst: str, start: int, host: str | None, every_s: int = 30, count: int = 20) -> list[dict]:
    """A plain-HTTP check every ``every_s`` seconds, a new connection each, naming ``host`` (None: no Host)."""
    named = {} if host is None else {"http_host": host}
    return [{"src": "10.1.0.5", "dst": dst, "t": start + k * every_s * S, "dport": 80, "out": 300, "in": 900,
             "opening": Opening.HTTP, "src_workload": WEB, **named} for k in range(count)]


def test_a_plain_http_clock_to_a_named_host_is_judged_as_a_named_tls_one():
    """An uptime probe or integration polling http://name every 30 s names its host in the Host header as
    a TLS client does in its SNI: kept while the cluster learned, it is known; a new named one after is
    reported with its name; one to an address (an IP Host, or none) is judged cold, learning or not."""
    d = BeaconingDetector(learning_period_ns=DAY)
    assert _alarms(d, _probe("203.0.113.30", T0, "status.example.com")) == []  # learned
    assert _alarms(d, _probe("203.0.113.30", T0 + 2 * DAY, "status.example.com")) == []
    (new,) = _alarms(d, _probe("203.0.113.31", T0 + 2 * DAY, "poll.example.net"))
    assert new.evidence["http_host"] == "poll.example.net" and "sni" not in new.evidence
    for host in ("203.0.113.32", "[2001:db8::32]", None):  # an address is no name, nor is a missing Host
        (cold,) = _alarms(d, _probe("203.0.113.32", T0 + 3 * DAY, host))
        assert "http_host" not in cold.evidence and cold.evidence["kind"] == "beacon"
        (during,) = _alarms(BeaconingDetector(learning_period_ns=DAY), _probe("203.0.113.33", T0, host))
        assert during.evidence["kind"] == "beacon"


def test_the_responders_small_answers_carry_the_clock_when_the_check_ins_are_big():
    """An implant POSTing a body every 45 s counts no small packets of its own; the server's short
    answers keep the same clock (Caldera's Sandcat in more/ is such a session)."""
    session = {"src": "10.1.0.7", "dst": "203.0.113.11", "t": T0, "dur": 30 * 60, "src_workload": WEB,
               "gaps": {"out": (0, 0.0, 0.0), "in": (40, 45.0, 0.2)}}
    (alarm,) = _alarms(BeaconingDetector(learning_period_ns=0), [session])
    assert alarm.evidence["side"] == "responder" and alarm.evidence["gaps"] == 40
    noisy = dict(session, gaps={"out": (0, 0.0, 0.0), "in": (40, 45.0, 1.0)})  # answers at no clock
    assert _alarms(BeaconingDetector(learning_period_ns=0), [noisy]) == []


@pytest.mark.parametrize("case", ["requests", "stream", "loose clock", "too few"])
def test_sessions_without_a_clock_are_not_beacons(case):
    session = {"requests": heartbeat_session("10.1.0.5", "203.0.113.9", T0, every_s=5, cv=1.0),
               "stream": heartbeat_session("10.1.0.5", "203.0.113.9", T0, every_s=0.02, cv=0.01),
               "loose clock": heartbeat_session("10.1.0.5", "203.0.113.9", T0, minutes=120, every_s=5, cv=0.4),
               "too few": heartbeat_session("10.1.0.5", "203.0.113.9", T0, minutes=0.4, every_s=5, cv=0.0)}[case]
    assert _alarms(BeaconingDetector(learning_period_ns=0), [session]) == []


def test_poisson_sessions_pass_the_in_session_test_about_never():
    """2,000 sessions of exponential gaps (what request-driven traffic shows), 6 to 300 gaps each: the
    bar is the null's 1e-5 quantile, so none should pass."""
    rng = np.random.default_rng(7)
    rows = []
    for k in range(2000):
        gaps = rng.exponential(8.0, int(rng.integers(6, 300)))
        rows.append({"src": "10.1.0.5", "dst": f"198.18.{k // 250}.{k % 250}", "t": T0 + k * S, "dur": 600,
                     "gaps": {"out": (len(gaps), float(gaps.mean()), float(gaps.std() / gaps.mean()))}})
    assert _alarms(BeaconingDetector(learning_period_ns=0), rows) == []
    assert cv_floor(6) < cv_floor(12) < cv_floor(16) < cv_floor(64) == 0.35  # the cap: +-60% jitter


# -- long connections --------------------------------------------------------------------------------------


def test_a_long_quiet_connection_is_reported_from_a_workload_that_does_not_hold_them():
    d = LongConnectionDetector(learning_period_ns=DAY)
    holder = [{"src": "10.1.0.7", "dst": "198.51.100.30", "t": T0 + HOUR, "held": 2 * 3600, "dur": 300,
               "dport": 5432, "out": 3000, "in": 3000, "src_workload": WORKER}]
    assert _alarms(d, holder) == []  # learning: the worker holds long connections (a database pool)
    after = T0 + 2 * DAY

    def held(src, w, dst, out=9000):
        return {"src": src, "dst": dst, "t": after, "held": 3 * 3600, "dur": 300, "dport": 9001, "out": out,
                "in": 4000, "src_workload": w}

    (alarm,) = _alarms(d, [held("10.1.0.5", WEB, "203.0.113.99"), held("10.1.0.7", WORKER, "203.0.113.98")])
    assert alarm.endpoint["workload"] == "shop/Deployment/web" and alarm.evidence["held_s"] == 3 * 3600 + 300
    busy = held("10.1.0.8", ("shop", "Deployment", "sync"), "203.0.113.97", out=5_000_000)
    popular = [held(f"10.1.1.{k}", ("shop", "Deployment", f"svc{k}"), "198.51.100.40") for k in range(3)]
    assert _alarms(d, [busy, *popular]) == []


# -- reverse shells ----------------------------------------------------------------------------------------


def test_a_server_workloads_shell_is_critical_one_from_a_workload_serving_nothing_high_off_system_ports():
    d = ReverseShellDetector()
    worker = ("shop", "Job", "migrate")
    rows = [_served("10.1.0.5", T0), shell_session("10.1.0.5", "203.0.113.77", T0 + 10 * S, src_workload=WEB),
            shell_session("10.1.0.9", "203.0.113.78", T0 + 10 * S, src_workload=WORKER),
            shell_session("10.1.0.11", "203.0.113.79", T0 + 10 * S, src_workload=worker, dport=22)]
    scores = scores_of(d, c2_flows(rows))
    assert [(s.endpoint["workload"], s.score, s.alarm, s.evidence["role"]) for s in scores] == [
        ("shop/Deployment/web", 1.0, True, "server"), ("shop/Deployment/worker", 0.5, True, "client"),
        ("shop/Job/migrate", 0.5, False, "client")]  # port 22: a person's SSH session, as likely as a shell
    assert [f.alert_severity() for f in d.decide(scores)] == ["critical", "high"]
    again = scores_of(d, c2_flows([shell_session("10.1.0.5", "203.0.113.77", T0 + HOUR, src_workload=WEB)]))
    assert [(s.alarm, s.fresh) for s in again] == [(True, False)]  # its port was never learned as used


def test_a_shell_reported_high_is_escalated_to_critical_once_its_workload_is_seen_serving(tmp_path):
    """docs/detection.md: the same session judged again from a workload seen serving since is one alert
    raised to critical and notified as escalated; judged again at the same role, it is news to no one."""
    deps = _pipeline(tmp_path, learning_s=0)

    def shells(batch: list[dict], seq: int) -> list[tuple[str, str]]:
        return [(a["id"], a["severity"]) for a in _process(deps, c2_flows(batch), seq) if a["rule"] == "reverse_shell"]

    def session(t: int) -> dict:
        return shell_session("10.1.0.9", "203.0.113.78", t, src_workload=WORKER)

    ((alert_id, severity),) = shells([session(T0 + 10 * S)], 1)
    assert severity == "high"
    assert shells([_served("10.1.0.9", T0 + HOUR, WORKER), session(T0 + HOUR + 10 * S)], 2) == [(alert_id, "critical")]
    assert shells([_served("10.1.0.9", T0 + 2 * HOUR, WORKER), session(T0 + 2 * HOUR + 10 * S)], 3) == []
    sent = [a for a in deps.notifier.sent if a["rule"] == "reverse_shell"]
    assert [(a["severity"], a["history"][-1]["changes"]) for a in sent] == [
        ("high", {"status": [None, "open"]}), ("critical", {"severity": ["high", "critical"]})]


def test_a_stored_reverse_shell_state_of_the_version_before_reads_its_reported_sessions_as_servers():
    """Before workloads serving nothing were reported, every reported session was a server's: none is
    reported again, and the version before reads what this one writes."""
    d = ReverseShellDetector()
    scores_of(d, c2_flows([_served("10.1.0.5", T0), shell_session("10.1.0.5", "203.0.113.77", T0 + 10 * S,
                                                                   src_workload=WEB)]))
    before = {k: v for k, v in d.to_state().items() if k != "reported_from_client"}
    again = ReverseShellDetector().from_state(before)
    rows = [_served("10.1.0.5", T0 + HOUR), shell_session("10.1.0.5", "203.0.113.77", T0 + HOUR, src_workload=WEB)]
    assert [(s.alarm, s.fresh) for s in scores_of(again, c2_flows(rows))] == [(True, False)]


@pytest.mark.parametrize("peers, reported", [(1, True), (2, True), (3, False), (6, False)])
@pytest.mark.parametrize("served", [True, False])
def test_a_port_spoken_with_several_hosts_outside_is_a_mesh_not_a_shell(peers, reported, served):
    """A P2P node's peers send irregularly, as a person types (Bitcoin's inv messages: the hard negative
    pcaps/crypto_p2p/ndpi_bitcoin.pcap, 6 peers on 8333); a controller is one host."""
    d = ReverseShellDetector()
    rows = [_served("10.1.0.5", T0)] if served else []
    rows.append(shell_session("10.1.0.5", "203.0.113.77", T0 + 10 * S, src_workload=WEB, dport=8333))
    rows += [{"src": "10.1.0.5", "dst": f"198.51.100.{k}", "t": T0 + 10 * S, "dport": 8333, "src_workload": WEB}
             for k in range(1, peers)]
    assert bool(_alarms(d, rows)) == reported


@pytest.mark.parametrize("served", [True, False])
def test_hosts_that_never_answered_on_the_shells_port_make_no_mesh(served):
    """A mesh is hosts the workload speaks with: two connections to the shell's port that nobody answered
    (an implant's decoys, made without a listener anywhere) do not hide the shell."""
    d = ReverseShellDetector()
    rows = [_served("10.1.0.5", T0)] if served else []
    rows.append(shell_session("10.1.0.5", "203.0.113.77", T0 + 10 * S, src_workload=WEB))
    rows += [{"src": "10.1.0.5", "dst": f"198.51.100.{k}", "t": T0 + 20 * S, "dport": 4444, "src_workload": WEB,
              "flags_in": 0, "in": 0} for k in (1, 2)]
    flows = c2_flows(rows)
    flows.columns["state"][-2:], flows.columns["packets_in"][-2:] = int(ConnState.ATTEMPTED), 0
    assert [s.evidence["destination"] for s in scores_of(d, flows) if s.flagged] == ["203.0.113.77:4444"]


@pytest.mark.parametrize("served", [True, False])
def test_a_shell_that_retried_its_listener_before_it_was_up_is_still_on_a_port_the_workload_never_used(served):
    """Reverse shells retry until the operator's listener is up (a loop around nc, a stager's retries):
    connections nobody answered in an earlier window reached no service, so the port is not one the
    workload uses when the shell connects."""
    d = ReverseShellDetector()
    tries = [{"src": "10.1.0.5", "dst": "203.0.113.77", "t": T0 + k * 10 * S, "dport": 4444, "src_workload": WEB,
              "flags_in": 0, "in": 0} for k in range(3)]
    earlier = c2_flows(([_served("10.1.0.5", T0)] if served else []) + tries)
    earlier.columns["state"][-3:], earlier.columns["packets_in"][-3:] = int(ConnState.ATTEMPTED), 0
    scores_of(d, earlier)
    shell = shell_session("10.1.0.5", "203.0.113.77", T0 + HOUR, src_workload=WEB)
    assert [s.evidence["destination"] for s in _alarms(d, [shell])] == ["203.0.113.77:4444"]


@pytest.mark.parametrize("gaps, cv, shell", [
    (9, 0.29, True),  # a pty shell typed key by key: the typing evens out the think times (lab scenario)
    (9, 0.15, False),  # under beaconing's floor for 9 gaps (0.18): a clock, beaconing's to judge
    (9, 0.21, False),  # past the floor but a timer jittered +-40% spreads so far (0.23): not a person
    (40, 0.30, False), (40, 0.40, True),  # past 24 gaps the floor is the cap, 0.35
])
def test_shells_and_clocks_split_the_timing_at_beaconings_floor_for_that_many_gaps(gaps, cv, shell):
    assert cv_floor(9) < 0.21 < 0.4 / np.sqrt(3) < 0.29 and cv_floor(40) == 0.35
    d = ReverseShellDetector()
    scores_of(d, c2_flows([_served("10.1.0.5", T0)]))
    session = shell_session("10.1.0.5", "203.0.113.77", T0 + 10 * S, src_workload=WEB,
                            gaps={"in": (gaps, 4.0, cv), "out": (gaps, 4.1, 1.0)})
    assert bool(_alarms(d, [session])) == shell


@pytest.mark.parametrize("case", ["machine pace", "a clock", "named TLS", "named HTTP", "port in use",
                                  "inside"])
def test_sessions_that_are_not_a_person_in_a_shell_are_not_reverse_shells(case):
    shell = shell_session("10.1.0.5", "203.0.113.77", T0 + 10 * S, src_workload=WEB)
    session = {"machine pace": dict(shell, gaps={"in": (400, 0.02, 1.5), "out": (400, 0.02, 1.5)}),
               "a clock": dict(shell, gaps={"in": (40, 4.0, 0.1), "out": (40, 4.0, 0.1)}),
               "named TLS": dict(shell, tls={"ja4": KNOWN_JA4, "sni": "chat.example"}),
               "named HTTP": dict(shell, http_host="chat.example"),  # a websocket to a name
               "port in use": shell,
               "inside": dict(shell, dst="10.1.0.40")}[case]
    d = ReverseShellDetector()
    before = [_served("10.1.0.5", T0)]
    if case == "port in use":
        before.append({"src": "10.1.0.5", "dst": "203.0.113.50", "t": T0, "dport": 4444, "src_workload": WEB})
    scores_of(d, c2_flows(before))
    assert _alarms(d, [session]) == []


# -- TLS ----------------------------------------------------------------------------------------------------


def test_tls_without_a_host_name_from_a_server_is_reported():
    d = TlsBareIpDetector()
    rows = [_served("10.1.0.5", T0),
            {"src": "10.1.0.5", "dst": "203.0.113.66", "t": T0 + S, "dport": 8443, "src_workload": WEB,
             "tls": {"ja4": IMPLANT_JA4}},
            {"src": "10.1.0.5", "dst": "203.0.113.67", "t": T0 + S, "dport": 80, "src_workload": WEB,
             "tls": {"ja3": IMPLANT_JA3, "sni": "203.0.113.67"}},  # Empire's agent: the address as SNI
            {"src": "10.1.0.5", "dst": "198.51.100.20", "t": T0 + S, "src_workload": WEB,
             "tls": {"ja4": KNOWN_JA4, "sni": "api.example"}},
            {"src": "10.1.0.9", "dst": "203.0.113.68", "t": T0 + S, "src_workload": WORKER, "tls": {"ja4": IMPLANT_JA4}},
            {"src": "10.1.0.5", "dst": "10.1.0.40", "t": T0 + S, "src_workload": WEB, "tls": {"ja4": IMPLANT_JA4}}]
    alarms = _alarms(d, rows)
    assert sorted(s.evidence["destination"] for s in alarms) == ["203.0.113.66:8443", "203.0.113.67:80"]


def test_a_new_tls_client_after_the_workload_s_baseline_is_reported_unless_a_release_brought_it():
    d = NewTlsClientDetector(learning_period_ns=0, baseline_ns=DAY)

    def hello(ja4, t, images="ghcr.io/example/web:1.0"):
        row = {"src": "10.1.0.5", "dst": "198.51.100.20", "t": t, "src_workload": WEB,
               "tls": {"ja4": ja4, "sni": "api.example"}}
        records = c2_flows([row])
        records.columns["src_images"][:] = images
        return records

    assert not any(s.flagged for s in scores_of(d, hello(KNOWN_JA4, T0)))  # young: its own baseline first
    assert not any(s.alarm for s in scores_of(d, hello(KNOWN_JA4, T0 + 2 * DAY)))
    (new,) = [s for s in scores_of(d, hello(IMPLANT_JA4, T0 + 2 * DAY + S)) if s.alarm]
    assert new.flagged and new.evidence["fingerprint"] == IMPLANT_JA4
    assert [s.alarm for s in scores_of(d, hello(IMPLANT_JA4, T0 + 3 * DAY))] == [True]  # never learned
    release = "ghcr.io/example/web:2.0"
    other = "t13d1715h2_5b57614c22b0_3d5424432f57"
    assert not any(s.alarm for s in scores_of(d, hello(other, T0 + 4 * DAY, release)))


def test_the_sslbl_ja3_list_from_the_store_matches_tls_clients(tmp_path):
    csv = ("# abuse.ch SSLBL JA3 fingerprints\n# ja3_md5,Firstseen,Lastseen,Listingreason\n"
           f"{IMPLANT_JA3},2019-01-01 00:00:00,2020-01-01 00:00:00,Metasploit test listing\n")
    store = LocalObjectStore(tmp_path / "state")
    store.put("watchlists/sslbl_ja3.csv", csv.encode())
    LOADER.forget()
    entries, errors = LOADER.load(store)
    assert errors == [] and [(e.kind, e.reason) for e in entries] == [("ja3", "Metasploit test listing")]
    rows = [heartbeat_session("10.1.0.66", "203.0.113.88", T0, tls={"ja3": IMPLANT_JA3}, src_workload=WEB),
            {"src": "10.1.0.5", "dst": "198.51.100.20", "t": T0, "tls": {"ja3": "0" * 32, "sni": "a.example"}}]
    (finding,) = WatchlistDetector(entries).observe(batch_of(c2_flows(rows)))
    assert finding.source["ip"] == "10.1.0.66" and finding.evidence["indicator_kind"] == "ja3"
    LOADER.forget()


@pytest.mark.parametrize("text, fault", [("abc,2019,2020,x\n", "line 1"), ("# c\n" + "a" * 32 + ",2019\n", "line 2")])
def test_a_bad_sslbl_line_is_a_clear_error_naming_it(text, fault):
    with pytest.raises(ConfigError, match=fault):
        parse_sslbl_csv(text.encode(), "feed")


def test_a_ja3_entry_in_a_json_watchlist_is_checked():
    from kubesonar.shared.watchlist import parse_watchlist

    (entry,) = parse_watchlist(json.dumps({"entries": [{"indicator": IMPLANT_JA3.upper(), "kind": "ja3"}]}).encode(),
                               "feed")
    assert (entry.kind, entry.indicator) == ("ja3", IMPLANT_JA3)
    with pytest.raises(ConfigError, match="not a JA4"):
        parse_watchlist(json.dumps({"entries": [{"indicator": "nope", "kind": "ja4"}]}).encode(), "feed")


# -- state ---------------------------------------------------------------------------------------------------


def test_a_version_1_beaconing_document_is_migrated_without_its_learned_pairs():
    v1 = {"state_version": 1, "clock": {"until_ns": T0 + DAY, "ended": False},
          "channels": [["shop/Deployment/fx", "198.18.20.8", 443, 6,
                        {"starts_ms": [1, 60_001], "bytes_out": [900, 900], "last_ns": T0, "learned": True,
                         "reported": False, "long": False}]],
          "destinations": {"198.18.20.8": {"subjects": ["shop/Deployment/fx"], "last_ns": T0}}}
    d = BeaconingDetector(learning_period_ns=DAY).from_state(v1)
    assert d.reset_reason is None
    state = d.to_state()
    assert state["state_version"] == 2 and state["channels"][0][4] == {
        "starts_ms": [1, 60_001], "bytes_out": [900, 900], "last_ns": T0, "reported": False, "named_clock": False}


@pytest.mark.parametrize("rule_id", ["long_connection", "reverse_shell", "tls_bare_ip", "new_tls_client"])
def test_a_new_detector_s_state_survives_json_and_a_bad_or_newer_document_is_dropped(rule_id):
    def fresh():
        return next(d for d in detectors(CoreConfig(learning_period_s=0, workload_baseline_s=0))
                    if d.rule_id == rule_id)

    d = fresh()
    rows = [_served("10.1.0.5", T0), shell_session("10.1.0.5", "203.0.113.77", T0, src_workload=WEB),
            {"src": "10.1.0.5", "dst": "203.0.113.66", "t": T0 + S, "src_workload": WEB, "tls": {"ja4": IMPLANT_JA4}},
            {"src": "10.1.0.5", "dst": "203.0.113.99", "t": T0, "held": 7200, "dur": 60, "src_workload": WEB}]
    d.observe(batch_of(c2_flows(rows)))
    state = json.loads(json.dumps(d.to_state()))
    assert fresh().from_state(state).to_state() == state
    newer = fresh().from_state({**state, "state_version": 99})
    assert newer.reset_reason and newer.to_state() == fresh().to_state()
    broken = {k: ({"oops": 1} if isinstance(v, (dict, list)) and k != "clock" else v) for k, v in state.items()}
    assert fresh().from_state(broken).reset_reason


@given(st.binary(max_size=400) | st.text(alphabet="0123456789abcdef,#\n -:", max_size=400).map(str.encode))
@settings(max_examples=300, deadline=None)
def test_any_sslbl_file_parses_or_is_one_clear_error(data):
    try:
        entries = parse_sslbl_csv(data, "feed")
    except ConfigError as exc:
        assert str(exc).startswith("watchlist feed")
    else:
        assert all(e.kind == "ja3" and len(e.indicator) == 32 for e in entries)


def test_a_host_is_named_only_by_a_name():
    """One definition for every rule: an empty SNI, or an address written as one, names no host."""
    from kubesonar.shared.flow import names_a_host

    sni = np.array(["api.example.com", "", "203.0.113.9", "[2001:db8::1]", "2001:db8::1", "api.example.com"],
                   dtype=object)
    assert names_a_host(sni).tolist() == [True, False, False, False, False, True]
    assert names_a_host(np.array([], dtype=object)).tolist() == []


def test_a_client_names_its_host_by_sni_or_else_by_its_plain_http_requests_host():
    from kubesonar.shared.flow import client_named, names_a_host

    flows = c2_flows([{"src": "10.1.0.5", "dst": "203.0.113.9", "t": T0, **extra} for extra in (
        {"tls": {"sni": "api.example.com"}}, {"http_host": "status.example.com"}, {"http_host": "203.0.113.9"},
        {"http_host": "[2001:db8::1]"}, {}, {"tls": {"sni": "203.0.113.9"}})])
    assert client_named(flows).tolist() == ["api.example.com", "status.example.com", "203.0.113.9",
                                            "[2001:db8::1]", "", "203.0.113.9"]
    assert names_a_host(client_named(flows)).tolist() == [True, True, False, False, False, False]
