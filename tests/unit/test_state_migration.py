"""Stored state of every detector, as documents were written before ``state_version`` existed, is
migrated and keeps what was learned: the same scores and findings follow as the code that wrote them
made (tests/fixtures/state_v0/generate.py says how the documents were made, by main at 8e27742).
A document that cannot be read is dropped with a logged reason, never misread."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from kubesonar.demo import LEARN_S, PHASE_S, demo_watchlist, run_demo
from kubesonar.sensor.offline import read_captures
from kubesonar.shared.detectors import Detector, batch_of
from kubesonar.shared.dns import DnsMessages
from kubesonar.shared.flow import FlowRecords
from kubesonar.shared.inventory import PodInventory
from kubesonar.shared.pipeline import CoreConfig, detectors

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "state_v0"
CONFIG = CoreConfig(learning_period_s=LEARN_S, watchlist=tuple(demo_watchlist()))
# the detectors that stored documents before versions existed (those born since never wrote one)
RULE_IDS = [d.rule_id for d in detectors(CONFIG) if (FIXTURES / f"{d.rule_id}.learned.json").exists()]


def _fresh(rule_id: str) -> Detector:
    return next(d for d in detectors(CONFIG) if d.rule_id == rule_id)


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    """The demo's detection capture, as the fixtures' findings were made on it: once, and shifted."""
    root = tmp_path_factory.mktemp("demo")
    run_demo(str(root))
    inventory = PodInventory.load(root / "pods.json")
    observed = list(read_captures([root / "detection.pcap"]))
    flows = inventory.enrich(FlowRecords.concat([o.flows for o in observed]))
    dns = inventory.enrich(DnsMessages.concat([o.dns for o in observed]))
    flows = flows.take(np.argsort(flows["first_ts"], kind="stable"))
    dns = dns.take(np.argsort(dns["ts"], kind="stable"))
    shift = int(PHASE_S * 1e9)
    later = FlowRecords(dict(flows.columns, first_ts=flows["first_ts"] + shift, last_ts=flows["last_ts"] + shift,
                             conn_start=flows["conn_start"] + shift))
    return {"learned": batch_of(flows, None, dns),
            "attacked": batch_of(later, None, DnsMessages(dict(dns.columns, ts=dns["ts"] + shift)))}


def _load(name: str):
    return json.loads((FIXTURES / name).read_text())


@pytest.mark.parametrize("stage", ["learned", "attacked"])
@pytest.mark.parametrize("rule_id", RULE_IDS)
def test_a_document_without_version_is_migrated_and_keeps_what_was_learned(rule_id, stage, batches):
    document = _load(f"{rule_id}.{stage}.json")
    assert "state_version" not in document  # the format stored until now
    detector = _fresh(rule_id).from_state(document)
    assert detector.reset_reason is None
    scores = detector.score(batches[stage])
    findings = json.loads(json.dumps([f.document() for f in detector.decide(scores)], sort_keys=True))
    expected = _load(f"{rule_id}.{stage}.findings.json")
    assert len(findings) == len(expected)
    assert [_old_evidence(f, e) for f, e in zip(findings, expected, strict=True)] == expected

    # the same scores as before; besides them only flagged subjects scored again (alarm, nothing fresh).
    # Scores are compared to 9 places: port_scan's walk differs in the last bits from run to run (its
    # sources are grouped by Python's salted string hash, which orders the segments of the walk)
    expected_scores = [json.dumps([round(s[0], 9), *s[1:]], sort_keys=True)
                       for s in _load(f"{rule_id}.{stage}.scores.json")]
    old_keys = {key for s in _load(f"{rule_id}.{stage}.scores.json") for key in s[4]}
    now = [json.dumps([round(s.score, 9), s.alarm, s.fresh, s.warming_up,
                       {k: v for k, v in s.evidence.items() if k in old_keys}], sort_keys=True) for s in scores]
    for s in expected_scores:
        assert s in now, f"{rule_id}: a score the old code made is missing: {s}"
        now.remove(s)
    assert all(json.loads(s)[1] and not json.loads(s)[2] for s in now), now
    assert expected_scores or stage == "attacked" or findings, "nothing was checked"


def _old_evidence(finding: dict, expected: dict) -> dict:
    """A finding with its evidence cut to the fields the old code wrote: evidence may gain fields, never
    lose or change one."""
    return {**finding, "evidence": {k: v for k, v in finding["evidence"].items() if k in expected["evidence"]}}


@pytest.mark.parametrize("rule_id", RULE_IDS)
def test_a_migrated_document_is_written_in_this_version_and_reads_back_the_same(rule_id):
    detector = _fresh(rule_id).from_state(_load(f"{rule_id}.attacked.json"))
    state = json.loads(json.dumps(detector.to_state()))
    assert state["state_version"] == type(detector).state_version
    again = _fresh(rule_id).from_state(state)
    assert again.reset_reason is None and again.to_state() == state


@pytest.mark.parametrize("rule_id", RULE_IDS)
def test_a_document_of_a_newer_version_is_dropped_with_a_logged_reason(rule_id, caplog):
    stored = {**_fresh(rule_id).from_state(_load(f"{rule_id}.attacked.json")).to_state(), "state_version": 99}
    with caplog.at_level(logging.WARNING):
        detector = _fresh(rule_id).from_state(stored)
    assert detector.reset_reason and "99" in detector.reset_reason
    assert detector.reset_reason in caplog.text
    assert detector.to_state() == _fresh(rule_id).to_state()  # afresh, nothing half-read


@pytest.mark.parametrize("rule_id", [r for r in RULE_IDS if r not in ("metadata_access",)])
def test_a_document_that_does_not_parse_as_its_version_is_dropped_not_misread(rule_id, caplog):
    document = _load(f"{rule_id}.attacked.json")
    broken = {key: ({"oops": 1} if isinstance(value, (dict, list)) else value) for key, value in document.items()}
    assert broken != document
    with caplog.at_level(logging.WARNING):
        detector = _fresh(rule_id).from_state(broken)
    assert detector.reset_reason and rule_id in detector.reset_reason
    assert detector.to_state() == _fresh(rule_id).to_state()
