"""One conformance suite over every detector the core runs (STYLE: detectors).

Each detector is driven with the demo's cluster traffic (a learning phase, then a phase with a new
workload and a port scan) and must: keep quiet on the learning traffic, raise its own rule on the
attack, carry its state through JSON without changing a decision, give the same decisions whatever
the batch boundaries, be deterministic, never score a flagged subject as normal, and document itself.
"""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from kubesonar.functions.local.demo import PHASE_S, run_demo
from kubesonar.sensor.offline import flows_from_captures
from kubesonar.shared.alerts import SEVERITIES, rules
from kubesonar.shared.flow import FlowRecords
from kubesonar.shared.inventory import PodInventory
from kubesonar.shared.pipeline import CoreConfig, detectors

CONFIG = CoreConfig(learning_period_s=PHASE_S)
RULE_IDS = [d.rule_id for d in detectors(CONFIG)]


@pytest.fixture(scope="module")
def phases(tmp_path_factory) -> tuple[FlowRecords, FlowRecords]:
    root = tmp_path_factory.mktemp("demo")
    run_demo(str(root))
    inventory = PodInventory.load(root / "pods.json")

    def flows(name: str) -> FlowRecords:
        records = inventory.enrich(FlowRecords.concat(list(flows_from_captures([root / name]))))
        return records.take(np.argsort(records["first_ts"], kind="stable"))

    return flows("learning.pcap"), flows("detection.pcap")


def _fresh(rule_id: str):
    return next(d for d in detectors(CONFIG) if d.rule_id == rule_id)


def _chunks(flows: FlowRecords, n: int) -> list[FlowRecords]:
    return [flows.take(idx) for idx in np.array_split(np.arange(len(flows)), n)]


def _run(rule_id: str, batches: list[FlowRecords], through_json: bool = False) -> tuple[list, dict]:
    detector, findings = _fresh(rule_id), []
    for batch in batches:
        if through_json:
            detector = _fresh(rule_id).from_state(json.loads(json.dumps(detector.to_state())))
        findings += detector.decide(detector.update(batch))
    return findings, detector.to_state()


def _who(findings) -> set[tuple[str, str]]:
    return {(f.type, f.source.get("workload") or f.source["ip"]) for f in findings}


@pytest.mark.parametrize("rule_id", RULE_IDS)
def test_quiet_on_learning_traffic_and_raises_its_own_rule_on_the_attack(rule_id, phases):
    learn, attack = phases
    detector = _fresh(rule_id)
    assert detector.decide(detector.update(learn)) == []
    findings = detector.decide(detector.update(attack))
    assert findings and {f.type for f in findings} == {rule_id}
    for f in findings:
        assert f.source["ip"] and f.first_seen_ns <= f.last_seen_ns and f.evidence


@pytest.mark.parametrize("rule_id", RULE_IDS)
def test_rule_metadata_is_complete(rule_id):
    rule = rules()[rule_id]
    assert rule["title"] and rule["description"] and rule["severity"] in SEVERITIES
    assert rule["mitre"]["technique_id"].startswith("T") and rule["mitre"]["tactic"]
    assert isinstance(rule["false_positives"], list) and rule["false_positives"]


@pytest.mark.parametrize("rule_id", RULE_IDS)
def test_state_through_json_changes_no_decision(rule_id, phases):
    batches = [*_chunks(phases[0], 3), *_chunks(phases[1], 3)]
    direct, state = _run(rule_id, batches)
    carried, carried_state = _run(rule_id, batches, through_json=True)
    assert [(f.type, f.source, f.evidence) for f in direct] == [(f.type, f.source, f.evidence) for f in carried]
    assert json.dumps(state, sort_keys=True) == json.dumps(carried_state, sort_keys=True)


@pytest.mark.parametrize("rule_id", RULE_IDS)
@pytest.mark.parametrize("pieces", [2, 7, 40])
def test_batch_boundaries_change_no_decision(rule_id, pieces, phases):
    learn, attack = phases
    whole, _ = _run(rule_id, [learn, attack])
    split, _ = _run(rule_id, [*_chunks(learn, pieces), *_chunks(attack, pieces)])
    assert _who(split) == _who(whole)


@pytest.mark.parametrize("rule_id", RULE_IDS)
def test_deterministic(rule_id, phases):
    first = _run(rule_id, list(phases))
    second = _run(rule_id, list(phases))
    assert json.dumps(first[1], sort_keys=True) == json.dumps(second[1], sort_keys=True)
    assert _who(first[0]) == _who(second[0])


@pytest.mark.parametrize("rule_id", RULE_IDS)
def test_a_flagged_subject_is_never_scored_normal_when_it_comes_back(rule_id, phases):
    learn, attack = phases
    detector = _fresh(rule_id)
    detector.update(learn)
    flagged = {s.subject for s in detector.update(attack) if s.alarm}
    assert flagged
    later = FlowRecords(dict(attack.columns, first_ts=attack["first_ts"] + int(PHASE_S * 1e9),
                             conn_start=attack["conn_start"] + int(PHASE_S * 1e9)))
    again = [s for s in detector.update(later) if s.subject in flagged]
    assert all(s.alarm for s in again)


@pytest.mark.parametrize("rule_id", RULE_IDS)
def test_empty_batch_scores_nothing(rule_id):
    detector = _fresh(rule_id)
    assert detector.decide(detector.update(FlowRecords.empty())) == []
    json.dumps(detector.to_state())


@pytest.mark.parametrize("rule_id", RULE_IDS)
def test_documents_what_it_catches_misses_and_its_false_positives(rule_id):
    doc = inspect.getmodule(type(_fresh(rule_id))).__doc__
    for section in ("Catches", "Misses", "False positives", "Score", "Example"):
        assert section in doc, f"{rule_id}'s docstring lacks '{section}'"
