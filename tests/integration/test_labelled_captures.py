"""Every labelled capture under shared/data (pcaps/ and more/, held-out ones included) through the real
pipeline, scored as `kubesonar analyze CAPTURE` scores it (cold: default learning period, no pod
inventory): an attack capture raises an alert of an expected type naming the labelled actor; a benign
capture raises nothing; a hard negative (`not:type`) never raises that type. One analysis per capture,
in-process, shared by the checks (about 10 s for all after the sensor's compile)."""

from __future__ import annotations

import pytest

from lab.evaluate import evaluate_captures, label_rows

from conftest import DATA

LABELS = label_rows(DATA)


@pytest.fixture(scope="module")
def outcomes():
    return {r.path: r for r in evaluate_captures(DATA)}


def test_both_label_sets_are_read():
    paths = [row["path"] for row in LABELS]
    assert len(paths) == len(set(paths))
    assert {p.split("/")[0] for p in paths} == {"pcaps", "more"}
    assert sum(p.startswith("more/") for p in paths) >= 30


@pytest.mark.parametrize("label", LABELS, ids=lambda row: row["path"])
def test_capture_meets_the_goal(label, outcomes):
    result = outcomes[label["path"]]
    assert not result.errors, result.errors
    if result.wanted:
        assert result.verdict == "detected", (
            f"expected {label['expected_alert']} from {label['actor_ip']}; raised {result.alerts}")
    else:
        assert result.verdict == "pass", f"{label['expected_alert']}: raised {result.alerts}"
