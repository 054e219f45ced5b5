"""`kubesonar evaluate` on the shared labelled captures: the report is produced, and for every detector
that is built, every capture expecting it is detected with the labelled actor; benign captures and
the Bitcoin P2P hard negative raise nothing they must not."""

from __future__ import annotations

import subprocess

from conftest import PCAPS

from kubesonar.evaluate import evaluate_captures
from kubesonar.shared.pipeline import CoreConfig, detectors


def test_every_built_detector_catches_its_captures_and_benign_ones_stay_quiet(tmp_path):
    built = {d.rule_id for d in detectors(CoreConfig())}
    results = evaluate_captures(PCAPS)
    assert len(results) >= 21
    for r in results:
        assert not r.errors, (r.path, r.errors)
        if r.wanted & built:
            assert r.verdict == "detected", (r.path, r.alerts)
        if not r.wanted:
            assert r.verdict == "pass", (r.path, r.alerts)
    out = tmp_path / "quality.md"
    run = subprocess.run(["kubesonar", "evaluate", "--data", str(PCAPS), "--out", str(out)], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    text = out.read_text()
    assert "| `port_scan` | yes | 5 | 5 | 0 |" in text and "| `brute_force` | yes | 2 | 2 | 0 |" in text
