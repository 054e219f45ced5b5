"""One conformance suite over every detector the core runs (STYLE: detectors).

Each detector is driven with the demo's cluster traffic (a learning phase, then a phase with a new
workload and a port scan) and, for the rules that read flow schema 4's TLS and gap columns, the
command-and-control sessions of tests/c2_flows.py planted in it (the payments API, a server, opening a
reverse shell, TLS to a bare address with a new client, a quiet connection held for hours), and must: keep quiet on the learning traffic, raise its own rule on the
attack, carry its state through JSON without changing a decision, give the same decisions whatever
the batch boundaries, be deterministic, never score a flagged subject as normal, and document itself.
Every property is checked on at least one real case per detector: a property that found nothing to
check fails (``all([])`` would pass).
"""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
from c2_flows import IMPLANT_JA3, IMPLANT_JA4, KNOWN_JA4, S, c2_flows, heartbeat_session, shell_session

from kubesonar.demo import LEARN_S, PHASE_S, START_S, demo_watchlist, run_demo
from kubesonar.sensor.offline import read_captures
from kubesonar.shared.alerts import SEVERITIES, reported_type, rules
from kubesonar.shared.detectors import Detector, batch_of
from kubesonar.shared.dns import DnsMessages
from kubesonar.shared.flow import ConnState, Executable, FlowRecords, Opening, address_bytes
from kubesonar.shared.inventory import PodInventory, endpoint_of
from kubesonar.shared.pipeline import CoreConfig, detectors
from kubesonar.shared.watchlist import WatchEntry

JA3_LISTED = WatchEntry(IMPLANT_JA3, "ja3", "sslbl", "test listing")
CONFIG = CoreConfig(learning_period_s=LEARN_S, watchlist=(*demo_watchlist(), JA3_LISTED))
RULE_IDS = [d.rule_id for d in detectors(CONFIG)]


class Phase:
    """A phase's flows and DNS messages, in time order; cut into chunks by time together."""

    def __init__(self, flows: FlowRecords, dns: DnsMessages):
        self.flows = flows.take(np.argsort(flows["first_ts"], kind="stable"))
        self.dns = dns.take(np.argsort(dns["ts"], kind="stable"))

    def chunks(self, n: int) -> list[Phase]:
        rows = np.array_split(np.arange(len(self.flows)), n)
        edges = [int(self.flows["first_ts"][r[0]]) for r in rows[1:] if len(r)] + [np.iinfo(np.int64).max]
        out, lo = [], np.iinfo(np.int64).min
        for r, hi in zip(rows, edges, strict=False):
            dns = self.dns.take((self.dns["ts"] >= lo) & (self.dns["ts"] < hi))
            out.append(Phase(self.flows.take(r), dns))
            lo = hi
        return out

    @property
    def batch(self):
        return batch_of(self.flows, None, self.dns)

    def shifted(self, ns: int) -> Phase:
        flows = FlowRecords(dict(self.flows.columns, first_ts=self.flows["first_ts"] + ns,
                                 last_ts=self.flows["last_ts"] + ns, conn_start=self.flows["conn_start"] + ns))
        return Phase(flows, DnsMessages(dict(self.dns.columns, ts=self.dns["ts"] + ns)))


@pytest.fixture(scope="module")
def phases(tmp_path_factory) -> tuple[Phase, Phase]:
    root = tmp_path_factory.mktemp("demo")
    run_demo(str(root))
    inventory = PodInventory.load(root / "pods.json")

    pods = {endpoint_of(p).workload_name: p["status"]["podIP"] for p in json.loads((root / "pods.json").read_text())["items"]}

    def phase(name: str, planted: FlowRecords, tunnel: bool) -> Phase:
        observed = list(read_captures([root / name]))
        flows = inventory.enrich(FlowRecords.concat([o.flows for o in observed] + [planted]))
        return Phase(FlowRecords.concat([flows, _icmp_flows(flows, tunnel)]),
                     inventory.enrich(DnsMessages.concat([o.dns for o in observed])))

    return (phase("learning.pcap", _planted_learning(pods), tunnel=False),
            phase("detection.pcap", _planted_attack(pods), tunnel=True))


def _planted_learning(pods: dict[str, str]) -> FlowRecords:
    """The payments API calling its card processor by name with its usual TLS client."""
    t = int((START_S + LEARN_S - PHASE_S + 100) * S)
    return c2_flows([{"src": pods["api"], "dst": "198.51.100.20", "t": t + k * 30 * S,
                      "tls": {"ja4": KNOWN_JA4, "sni": "api.processor.example"}} for k in range(3)])


def _planted_attack(pods: dict[str, str]) -> FlowRecords:
    """The payments API compromised: a new TLS client to a bare address, a reverse shell, a quiet
    connection held three hours, an ELF downloaded over plain HTTP; the intruder's implant with a listed
    JA3 holding a heartbeat session, and a RAT of its speaking its own protocol on port 80."""
    t, api, intruder = int((START_S + LEARN_S + 60) * S), pods["api"], pods["debug-tools"]
    return c2_flows([
        {"src": api, "dst": "198.51.100.20", "t": t, "tls": {"ja4": KNOWN_JA4, "sni": "api.processor.example"}},
        {"src": api, "dst": "203.0.113.66", "t": t + 5 * S, "dport": 8443, "tls": {"ja4": IMPLANT_JA4}},
        shell_session(api, "203.0.113.77", t + 10 * S),
        {"src": api, "dst": "203.0.113.99", "t": t + 20 * S, "dport": 9001, "held": 3 * 3600, "dur": 200,
         "out": 9000, "in": 7000},
        heartbeat_session(intruder, "203.0.113.88", t + 30 * S, minutes=3, dur=180,
                          tls={"ja3": IMPLANT_JA3, "sni": "updates.example"}),
        {"src": intruder, "dst": "203.0.113.44", "t": t + 40 * S, "dport": 80, "opening": Opening.OTHER},
        {"src": api, "dst": "203.0.113.55", "t": t + 50 * S, "dport": 80, "http_host": "downloads.example",
         "in": 90_000, "executable": Executable.ELF << 2},
    ])


def _icmp_flows(flows: FlowRecords, tunnel: bool) -> FlowRecords:
    """A pod's echo flows to an address outside, spread over the phase: plain pings while learning, an
    ICMP tunnel in the attack (payloads of many sizes, no ping pattern). Built, not captured, until the
    demo's sensor fills flow schema 4's ICMP columns."""
    row = int(np.flatnonzero(flows["src_workload_name"] != "")[0])
    times = np.linspace(flows["first_ts"].min(), flows["first_ts"].max(), 4)[:3].astype(np.int64)
    icmp = flows.take(np.full(3, row))
    c = icmp.columns
    c["first_ts"] = c["conn_start"] = times
    c["last_ts"] = times + 5_000_000_000
    c["dst_addr"][:] = np.void(address_bytes("198.51.100.77"))
    for name in ("namespace", "pod", "workload_kind", "workload_name", "node", "labels", "images"):
        c[f"dst_{name}"][:] = ""
    c["proto"][:], c["icmp_type"][:], c["icmp_code"][:], c["dst_port"][:], c["src_port"][:] = 1, 8, 0, 0, 4242
    c["state"][:], c["packets_out"][:], c["packets_in"][:] = int(ConnState.ESTABLISHED), 6, 6
    c["bytes_out"][:] = c["bytes_in"][:] = 6 * (28 + (400 if tunnel else 56))
    c["icmp_sizes"][:], c["icmp_odd"][:] = (9, 12) if tunnel else (1, 0)
    blank = FlowRecords.empty(3).columns  # no TLS or session gaps carried over from the row copied
    for name in ("rpc_method", "executable", "tls_ja3", "tls_ja4", "tls_sni", "tls_alpn", "gaps_out", "gaps_in",
                 "gap_mean_us_out", "gap_mean_us_in", "gap_cv_milli_out", "gap_cv_milli_in", "opening"):
        c[name] = blank[name]
    return icmp


def _fresh(rule_id: str) -> Detector:
    return next(d for d in detectors(CONFIG) if d.rule_id == rule_id)


def _chunks(phase: Phase, n: int) -> list[Phase]:
    return phase.chunks(n)


def _run(rule_id: str, batches: list[Phase], through_json: bool = False) -> tuple[list, dict]:
    detector, findings = _fresh(rule_id), []
    for batch in batches:
        if through_json:
            detector = _fresh(rule_id).from_state(json.loads(json.dumps(detector.to_state())))
        findings += detector.observe(batch.batch)
    return findings, detector.to_state()


def _who(findings) -> set[tuple[str, str]]:
    return {(f.type, f.source.get("workload") or f.source["ip"]) for f in findings}


@pytest.mark.parametrize("rule_id", RULE_IDS)
def test_quiet_on_learning_traffic_and_raises_its_own_rule_on_the_attack(rule_id, phases):
    learn, attack = phases
    detector = _fresh(rule_id)
    assert detector.observe(learn.batch) == []
    findings = detector.observe(attack.batch)
    assert findings and {f.type for f in findings} == {rule_id}
    for f in findings:
        assert f.source["ip"] and f.first_seen_ns <= f.last_seen_ns and f.evidence
        assert f.alert_severity() in SEVERITIES  # a score's own severity is checked here, not at notify time


@pytest.mark.parametrize("rule_id", RULE_IDS)
def test_rule_metadata_is_complete(rule_id):
    rule = rules()[rule_id]
    assert rule["title"] and rule["description"] and rule["severity"] in SEVERITIES
    assert rule["mitre"]["technique_id"].startswith("T") and rule["mitre"]["tactic"]
    assert isinstance(rule["false_positives"], list) and rule["false_positives"]
    # the type it reports as is a rule that reports as itself: types form one level, never a chain
    assert reported_type(reported_type(rule_id)) == reported_type(rule_id)


@pytest.mark.parametrize("rule_id", RULE_IDS)
def test_state_through_json_changes_no_decision(rule_id, phases):
    batches = [*_chunks(phases[0], 3), *_chunks(phases[1], 3)]
    direct, state = _run(rule_id, batches)
    carried, carried_state = _run(rule_id, batches, through_json=True)
    assert direct, f"{rule_id} made no finding: nothing was checked"
    assert [(f.type, f.source, f.evidence) for f in direct] == [(f.type, f.source, f.evidence) for f in carried]
    assert json.dumps(state, sort_keys=True) == json.dumps(carried_state, sort_keys=True)


@pytest.mark.parametrize("rule_id", RULE_IDS)
@pytest.mark.parametrize("pieces", [2, 7, 40])
def test_batch_boundaries_change_no_decision(rule_id, pieces, phases):
    learn, attack = phases
    whole, _ = _run(rule_id, [learn, attack])
    split, _ = _run(rule_id, [*_chunks(learn, pieces), *_chunks(attack, pieces)])
    assert whole, f"{rule_id} made no finding: nothing was checked"
    assert _who(split) == _who(whole)


@pytest.mark.parametrize("rule_id", RULE_IDS)
def test_deterministic(rule_id, phases):
    first = _run(rule_id, list(phases))
    second = _run(rule_id, list(phases))
    assert first[0], f"{rule_id} made no finding: nothing was checked"
    assert json.dumps(first[1], sort_keys=True) == json.dumps(second[1], sort_keys=True)
    assert _who(first[0]) == _who(second[0])


@pytest.mark.parametrize("rule_id", RULE_IDS)
def test_a_flagged_subject_is_never_scored_normal_when_it_comes_back(rule_id, phases):
    learn, attack = phases
    detector = _fresh(rule_id)
    detector.observe(learn.batch)
    scores = detector.score(attack.batch)
    flagged = {s.subject for s in scores if s.flagged}
    assert flagged
    detector.learn(attack.batch, flagged)
    later = attack.shifted(int(PHASE_S * 1e9))
    again = [s for s in detector.score(later.batch) if s.subject in flagged]
    assert again, f"{rule_id}: no flagged subject was scored when it came back: nothing was checked"
    assert all(s.alarm for s in again), [s.subject for s in again if not s.alarm]


@pytest.mark.parametrize("rule_id", RULE_IDS)
def test_empty_batch_scores_nothing(rule_id):
    detector = _fresh(rule_id)
    assert detector.observe(batch_of(FlowRecords.empty())) == []
    assert detector.to_state()["state_version"] == type(detector).state_version
    json.dumps(detector.to_state())


@pytest.mark.parametrize("rule_id", RULE_IDS)
def test_documents_what_it_catches_misses_and_its_false_positives(rule_id):
    doc = inspect.getmodule(type(_fresh(rule_id))).__doc__
    for section in ("Catches", "Misses", "False positives", "Score", "Example"):
        assert section in doc, f"{rule_id}'s docstring lacks '{section}'"
