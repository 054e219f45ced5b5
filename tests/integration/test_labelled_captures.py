"""Every labelled capture under shared/data (pcaps/ and more/, held-out ones included) through the real
pipeline, scored as `kubesonar analyze CAPTURE` scores it (cold: default learning period, no pod
inventory): an attack capture raises an alert of an expected type naming the labelled actor; a benign
capture raises nothing; a hard negative (`not:type`) never raises that type. One analysis per capture,
in-process, shared by the checks (about 10 s for all after the sensor's compile)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.evaluate import evaluate_captures, label_rows

from conftest import DATA

LABELS = label_rows(DATA)
# Attack captures the product does not detect yet (issue 17 is open on them; docs/detection-quality.md
# lists why). Strict: the day one is detected, this test fails until it leaves the list.
KNOWN_MISSES = {line.split("#")[0].strip() for line in
                (Path(__file__).resolve().parents[2] / "lab" / "known_misses.txt").read_text().splitlines()} - {""}


@pytest.fixture(scope="module")
def outcomes():
    return {r.path: r for r in evaluate_captures(DATA)}


def test_both_label_sets_are_read():
    paths = [row["path"] for row in LABELS]
    assert len(paths) == len(set(paths))
    assert {p.split("/")[0] for p in paths} == {"pcaps", "more"}
    assert sum(p.startswith("more/") for p in paths) >= 30


def _cases():
    for row in LABELS:
        miss = row["path"] in KNOWN_MISSES
        yield pytest.param(row, id=row["path"], marks=[pytest.mark.xfail(
            strict=True, reason="not detected yet: lab/known_misses.txt")] if miss else [])


def test_the_known_misses_are_labelled_attacks():
    attacks = {row["path"] for row in LABELS if row["expected_alert"] not in ("none", "") and
               not row["expected_alert"].startswith("not:")}
    assert KNOWN_MISSES <= attacks, KNOWN_MISSES - attacks


@pytest.mark.parametrize("label", list(_cases()))
def test_capture_meets_the_goal(label, outcomes):
    result = outcomes[label["path"]]
    assert not result.errors, result.errors
    if result.wanted:
        assert result.verdict == "detected", (
            f"expected {label['expected_alert']} from {label['actor_ip']}; raised {result.alerts}")
    else:
        assert result.verdict == "pass", f"{label['expected_alert']}: raised {result.alerts}"
