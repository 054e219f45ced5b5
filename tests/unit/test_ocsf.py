"""Alerts rendered as OCSF Detection Findings validate against the OCSF schema itself."""

from __future__ import annotations

import jsonschema
import pytest
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

from kubesonar.demo import run_demo
from kubesonar.shared.ocsf import OCSF_VERSION, to_ocsf


@pytest.fixture(scope="module")
def validator():
    schema = OcsfJsonSchemaEmbedded(get_ocsf_schema(OCSF_VERSION)).get_class_schema("detection_finding")
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="module")
def alerts(tmp_path_factory):
    result, _ = run_demo(str(tmp_path_factory.mktemp("demo")))
    return result.alerts


def test_every_alert_is_a_valid_detection_finding(validator, alerts):
    assert alerts
    for alert in alerts:
        finding = to_ocsf(alert)
        errors = sorted(validator.iter_errors(finding), key=str)
        assert not errors, [e.message for e in errors[:5]]
        assert finding["class_uid"] == 2004 and finding["finding_info"]["uid"] == alert["id"]


def test_updates_and_triage_states_map_too(validator, alerts):
    alert = dict(alerts[0], count=3, status="closed", tags=["triaged"], assignee="team-sre")
    finding = to_ocsf(alert)
    assert not list(validator.iter_errors(finding))
    assert (finding["activity_id"], finding["status_id"], finding["metadata"]["labels"]) == (2, 4, ["triaged"])


def test_the_schema_is_strict_enough_to_catch_mistakes(validator, alerts):
    finding = to_ocsf(alerts[0])
    del finding["finding_info"]["uid"]
    finding["severity_id"] = "high"
    assert len(list(validator.iter_errors(finding))) >= 2
