"""An invocation's messages applied together (issue 12's contract): one document read and written per
invocation, per-message failure semantics, redelivery, the sequence window, and the layout-1 migration."""

from __future__ import annotations

import shutil

import pytest

from kubesonar.compose import analyze
from kubesonar.demo import demo_captures
from kubesonar.functions.local.notifier import CollectingNotifier
from kubesonar.functions.local.store import LocalObjectStore
from kubesonar.sensor.offline import flows_from_captures
from kubesonar.sensor.queues import window_messages
from kubesonar.shared.applied import APPLIED, FORGET_NS, MAX_AGE_NS, NEW, TOO_OLD, WINDOW, AppliedLog
from kubesonar.shared.batch import SQS_LIMIT, BatchHeader
from kubesonar.shared.flow import FlowRecords
from kubesonar.shared.pipeline import CoreConfig, Delivery, Dependencies, detectors, process_deliveries
from kubesonar.shared.ports import SystemClock
from kubesonar.shared.state import read_document

from conftest import PCAPS, REPO
from helpers import LIVE_WINDOW, cyclic_garbage_after


class CountingStore:
    """The local store, with the requests the core makes counted (as a cloud bills them)."""

    def __init__(self, root):
        self.inner = LocalObjectStore(root)
        self.gets = self.puts = self.lists = 0

    def get(self, key):
        self.gets += 1
        return self.inner.get(key)

    def put(self, key, data, **kw):
        self.puts += 1
        return self.inner.put(key, data, **kw)

    def list(self, prefix):
        self.lists += 1
        return self.inner.list(prefix)


def _scan_deliveries(node: str = "n1", windows: int = 4) -> list[Delivery]:
    """A real scan capture cut into windows, as a sensor on ``node`` would publish them."""
    flows = FlowRecords.concat(list(flows_from_captures([PCAPS / "portscan/evilfingers_nmap_TCP_SYN_SCAN.pcap"])))
    size = -(-len(flows) // windows)
    out = []
    for seq in range(windows):
        part = flows.take(slice(seq * size, (seq + 1) * size))
        header = BatchHeader("c1", node, f"{node}/s", seq, *LIVE_WINDOW,
                             counters={"packets": 1, "kernel_packets": 1, "kernel_drops": 0})
        out += [Delivery(f"{node}-{seq}-{m.key}", m.data) for m in window_messages(header, part, SQS_LIMIT)]
    return out


def _heartbeats(n: int) -> list[Delivery]:
    return [Delivery(f"hb-{i}", window_messages(BatchHeader("c1", f"idle-{i}", f"idle-{i}/s", 0, *LIVE_WINDOW,
            counters={"packets": 0, "kernel_packets": 0, "kernel_drops": 0}), FlowRecords.empty(), SQS_LIMIT)[0].data)
            for i in range(n)]


@pytest.fixture
def deps(tmp_path):
    return Dependencies(CountingStore(tmp_path / "bucket"), CollectingNotifier(), SystemClock(),
                        CoreConfig(learning_period_s=0))


def test_an_invocation_reads_and_writes_each_document_once(deps):
    outcome = process_deliveries(_scan_deliveries() + _heartbeats(6), deps)
    assert not outcome.poison and not outcome.retry and len(outcome.applied) == 10
    assert [a["type"] for a in outcome.result.new_alerts] == ["port_scan"]
    # reads: detectors, health, the alert; writes: the same three; lists: watchlists, and (a new cluster)
    # whether per-detector documents of layout 1 are there to carry over
    # (a new alert also reads and writes the outbox and the stored lists: issue 16)
    first = (deps.store.gets, deps.store.puts, deps.store.lists)
    assert first[0] <= 12 and first[1] <= 8
    process_deliveries(_scan_deliveries(node="n2") + _heartbeats(6), deps)  # warm; the scan is already alerted
    warm = (deps.store.gets - first[0], deps.store.puts - first[1])
    assert warm[0] <= 4 and warm[1] <= 4, warm  # detectors, health, edge summary (+ outbox read)


def test_heartbeats_alone_touch_only_the_health_document(deps):
    process_deliveries(_heartbeats(10), deps)
    assert (deps.store.gets, deps.store.puts) == (1, 1)
    assert read_document(deps.store, "state/c1/detectors.json") == (None, None)


def test_a_poison_message_amid_good_ones_fails_alone_and_a_redelivery_changes_nothing(deps):
    good = _scan_deliveries()
    poison = Delivery("bad", b"KSFB" + b"\x00" * 40)
    outcome = process_deliveries(good[:2] + [poison] + good[2:], deps)
    assert [i for i, _ in outcome.poison] == ["bad"] and not outcome.retry
    assert len(outcome.applied) == 4 and len(outcome.result.new_alerts) == 1
    before = read_document(deps.store, "state/c1/detectors.json")
    (count,) = [read_document(deps.store, k)[0]["count"] for k in deps.store.list("alerts/")]
    again = process_deliveries(good, deps)  # the whole invocation redelivered
    assert len(again.applied) == 4 and not again.result.new_alerts and not again.retry
    assert read_document(deps.store, "state/c1/detectors.json") == before  # not even rewritten
    (alert,) = [read_document(deps.store, k)[0] for k in deps.store.list("alerts/")]
    assert alert["count"] == count


def test_a_message_whose_scoring_fails_is_retried_without_reapplying_the_others(deps, monkeypatch):
    from kubesonar.shared.detectors.port_scan import PortScanDetector

    good = _scan_deliveries()
    original = PortScanDetector.score
    calls = {"n": 0}

    def breaks_on_the_second(self, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("a detector bug")
        return original(self, batch)

    monkeypatch.setattr(PortScanDetector, "score", breaks_on_the_second)
    outcome = process_deliveries(good, deps)
    assert [i for i, _ in outcome.retry] == [good[1].id] and len(outcome.applied) == 3
    monkeypatch.setattr(PortScanDetector, "score", original)
    retried = process_deliveries([good[1]], deps)  # the transport redelivers it alone
    assert retried.applied == [good[1].id] and not retried.retry
    log = AppliedLog(read_document(deps.store, "state/c1/detectors.json")[0]["applied"])
    assert all(log.status("n1/s", seq, 0) == APPLIED for seq in range(4))


def test_a_new_clusters_first_message_whose_scoring_fails_leaves_no_document_that_refuses_the_rest(deps, monkeypatch):
    """With nothing left to apply on a cluster that has no detectors document, nothing is written: an
    empty document would be refused by every later read, and the cluster's messages retried for good."""
    from kubesonar.shared.detectors.port_scan import PortScanDetector

    good = _scan_deliveries()
    original = PortScanDetector.score

    def breaks(self, batch):
        raise RuntimeError("a detector bug")

    monkeypatch.setattr(PortScanDetector, "score", breaks)
    failed = process_deliveries([good[0]], deps)
    assert [i for i, _ in failed.retry] == [good[0].id] and not failed.applied
    assert read_document(deps.store, "state/c1/detectors.json") == (None, None)
    monkeypatch.setattr(PortScanDetector, "score", original)
    rest = process_deliveries(good[1:], deps)
    assert rest.applied == [d.id for d in good[1:]] and not rest.retry


def test_an_invocation_of_many_rows_is_applied_a_bounded_number_of_rows_at_a_time(deps, monkeypatch):
    """What an invocation holds decoded is bounded (pipeline.ROWS_HELD, a full message's rows), not the sum
    of its messages: a flood's full messages, 100 to an invocation, would outgrow the function."""
    from kubesonar.shared import pipeline

    good = _scan_deliveries(windows=8)
    monkeypatch.setattr(pipeline, "ROWS_HELD", 300, raising=False)
    held, apply = [], pipeline._apply_cluster
    monkeypatch.setattr(pipeline, "_apply_cluster", lambda cluster, items, *rest: (
        held.append(sum(len(b.flows) for _, b in items)), apply(cluster, items, *rest))[1])
    outcome = process_deliveries(good, deps)
    largest = max(held)
    assert len(held) > 1 and largest < 300 + 2 * sum(held) / len(good)
    assert outcome.applied == [d.id for d in good] and not outcome.retry
    assert [a["type"] for a in outcome.result.new_alerts] == ["port_scan"]


def test_the_applied_log_knows_parts_gaps_and_refuses_what_is_older_than_its_window():
    log = AppliedLog()
    log.mark("s", 10, 0, 2, now_ns=1)
    assert log.status("s", 10, 0) == APPLIED and log.status("s", 10, 1) == NEW
    log.mark("s", 12, 0, 1, now_ns=1)  # 11 never came (an idle window), 10 still half applied
    assert log.status("s", 11, 0) == NEW and log.status("s", 10, 1) == NEW
    log.mark("s", 10, 1, 2, now_ns=1)
    assert log.status("s", 10, 1) == APPLIED and log.status("s", 12, 0) == APPLIED
    log.mark("s", 12 + WINDOW, 0, 1, now_ns=1)
    assert log.status("s", 12, 0) == TOO_OLD and log.status("s", 13, 0) == NEW
    again = AppliedLog(log.to_state())
    assert again.to_state() == log.to_state() and again.status("s", 12 + WINDOW, 0) == APPLIED


def test_a_replay_older_than_the_window_is_refused_and_counted(deps):
    first = _scan_deliveries(windows=1)
    process_deliveries(first, deps)
    later = BatchHeader("c1", "n1", "n1/s", WINDOW + 5, *LIVE_WINDOW)
    process_deliveries([Delivery("later", window_messages(later, FlowRecords.concat(list(flows_from_captures(
        [PCAPS / "portscan/evilfingers_nmap_UDP_SCAN.pcap"]))), SQS_LIMIT)[0].data)], deps)
    replayed = process_deliveries(first, deps)
    assert replayed.result.stale == 1 and not replayed.retry and replayed.applied == [first[0].id]


def test_a_window_that_ended_longer_ago_than_the_memory_is_refused_known_sensor_or_not():
    """The log forgets a sensor unheard for FORGET_NS; a message whose window ended that long ago may be
    one it forgot, so it is TOO_OLD (an hour's margin for the clocks of concurrent invocations)."""
    hour = 3600 * 10**9
    log = AppliedLog()
    assert log.status("s", 1, 0, age_ns=MAX_AGE_NS) == TOO_OLD and log.status("s", 1, 0, age_ns=MAX_AGE_NS - 1) == NEW
    assert log.status("s", 1, 0, age_ns=-MAX_AGE_NS) == TOO_OLD  # a clock a day ahead: kept for ever otherwise
    # a sensor whose clock runs two hours ahead is kept until its windows are too old to take
    log.mark("s", 1, 0, 1, now_ns=0, window_end_ns=2 * hour)
    log.forget_older_than(FORGET_NS + hour // 2)
    assert log.status("s", 1, 0, age_ns=FORGET_NS + hour // 2 - 2 * hour) == APPLIED
    log.forget_older_than(FORGET_NS + 2 * hour)
    assert log.to_state() == {}


def test_baselines_of_the_per_detector_layout_carry_over(tmp_path):
    """A bucket written by the previous release (one document per detector, tests/fixtures/state_layout1:
    the demo's learning day) keeps its baselines: the attack phase then raises exactly what the previous
    release raised from the same state (one alert per rule, from the planted actors)."""
    state = tmp_path / "state"
    shutil.copytree(REPO / "tests" / "fixtures" / "state_layout1", state)
    _, detect, pods, _ = demo_captures(tmp_path / "captures")
    result = analyze([str(detect)], pods=str(pods), cluster="demo", state_dir=str(state))
    got = sorted((a["type"], a["source"]["workload"] or a["source"]["ip"], a["count"]) for a in result.alerts)
    intruder = "default/Deployment/debug-tools"
    assert got == sorted([("api_server_access", intruder, 1), ("beaconing", intruder, 1), ("brute_force", intruder, 1),
                          ("crypto_mining", "ml/Deployment/trainer", 1), ("dns_tunneling", intruder, 1),
                          ("exfiltration", "payments/Deployment/api", 1), ("metadata_access", intruder, 1),
                          ("new_workload", intruder, 1), ("port_scan", "shop/Deployment/frontend", 1),
                          ("unusual_destination", "payments/Deployment/api", 1), ("watchlist_hit", intruder, 1)])
    doc = read_document(LocalObjectStore(state), "state/demo/detectors.json")[0]
    assert doc["layout"] == 2 and len(doc["detectors"]) == len(detectors(CoreConfig()))
    # without the old baselines the same capture looks different: the test can fail
    fresh = analyze([str(detect)], pods=str(pods), cluster="demo", state_dir=str(tmp_path / "fresh"))
    assert sorted((a["type"], a["source"]["workload"] or a["source"]["ip"], a["count"]) for a in fresh.alerts) != got


def test_an_invocation_leaves_nothing_for_the_cyclic_collector(deps):
    """Everything an invocation made is freed when it returns: the detectors document's update step
    once retried by calling itself, a closure holding itself and with it every batch of the invocation,
    freed only when the cyclic collector ran (a warm Lambda or the backend kept them meanwhile)."""
    deliveries = _scan_deliveries()
    process_deliveries(deliveries[:1], deps)  # what loads once (modules, caches) is not the invocation's
    outcome = []
    assert cyclic_garbage_after(lambda: outcome.append(process_deliveries(deliveries[1:], deps))) == []
    assert len(outcome[0].applied) == len(deliveries) - 1
