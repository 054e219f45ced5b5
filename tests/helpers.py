"""Small helpers shared by tests: run the engine on a file, read records as dicts."""

from __future__ import annotations

from kubesonar.sensor.flow_table import FlowTimeouts
from kubesonar.sensor.offline import CaptureStats, flows_from_captures
from kubesonar.shared.flow import FlowRecords

NO_TIMEOUTS = FlowTimeouts(active_s=1e9, idle_s=1e9)


def flows_of(path, timeouts: FlowTimeouts = NO_TIMEOUTS, stats: CaptureStats | None = None) -> list[dict]:
    records = FlowRecords.concat(list(flows_from_captures([path], timeouts=timeouts, stats=stats)))
    return sorted(records.iter_dicts(), key=lambda r: (r["first_ts"], r["src_port"]))


def scores_of(detector, flows, pods=None, dns=None) -> list:
    """What ``detector.observe`` does, returning the scores instead of the findings: score the batch,
    then learn it with the flagged subjects kept out of the baseline."""
    from kubesonar.shared.detectors import batch_of

    batch = batch_of(flows, pods, dns)
    scores = detector.score(batch)
    detector.learn(batch, {s.subject for s in scores if s.flagged})
    return scores
