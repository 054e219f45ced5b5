"""Heartbeats: a node whose kernel drops too much raises sensor_drops once; a node that goes quiet
raises sensor_silent once, whether another node's batch or the scheduled check notices."""

from __future__ import annotations

from kubesonar.functions.local.notifier import CollectingNotifier
from kubesonar.functions.local.store import LocalObjectStore
from kubesonar.shared.batch import Batch, BatchHeader, decode_batch, encode_batch
from kubesonar.shared.flow import FlowRecords
from kubesonar.shared.pipeline import CoreConfig, Dependencies, check_sensors, process_batch

S = 1_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000 * S

    def now_ns(self) -> int:
        return self.now


def _heartbeat(node: str, seq: int, packets: int, drops: int, sensor: str = "a") -> Batch:
    counters = {"packets": packets, "kernel_packets": packets + drops, "kernel_drops": drops}
    return Batch(BatchHeader("c", node, f"{node}/{sensor}", seq, seq * 10 * S, (seq + 1) * 10 * S,
                             counters=counters), FlowRecords.empty())


def _types(result) -> list[str]:
    return [a["type"] for a in result.new_alerts]


def test_drops_silence_and_recovery(tmp_path):
    clock = Clock()
    deps = Dependencies(LocalObjectStore(tmp_path), CollectingNotifier(), clock)
    assert _types(process_batch(_heartbeat("node-1", 0, 50_000, 0), deps)) == []
    assert _types(process_batch(_heartbeat("node-2", 0, 1_000, 0), deps)) == []
    clock.now += 10 * S
    dropping = process_batch(_heartbeat("node-1", 1, 900_000, 40_000), deps)  # 40,000 of 890,000 in a window
    assert _types(dropping) == ["sensor_drops"]
    assert dropping.new_alerts[0]["source"]["node"] == "node-1"
    assert dropping.new_alerts[0]["evidence"]["kernel_drops_in_window"] == 40_000
    clock.now += 10 * S
    assert _types(process_batch(_heartbeat("node-1", 2, 950_000, 40_500), deps)) == []  # 500 more: fine
    assert _types(process_batch(_heartbeat("node-2", 1, 2_000, 0), deps)) == []
    # node-2 stops; node-1 goes on: its batches notice the silence after a minute
    for seq in range(3, 12):
        clock.now += 10 * S
        result = process_batch(_heartbeat("node-1", seq, 950_000 + seq, 40_500), deps)
        if seq < 9:
            assert _types(result) == []
    alerts = {a["type"]: a for a in deps.notifier.sent}
    assert alerts["sensor_silent"]["source"]["node"] == "node-2"
    assert len([a for a in deps.notifier.sent if a["type"] == "sensor_silent"]) == 1


def test_the_scheduled_check_sees_a_whole_cluster_go_silent_and_a_restart_is_not_a_drop(tmp_path):
    clock = Clock()
    deps = Dependencies(LocalObjectStore(tmp_path), CollectingNotifier(), clock)
    process_batch(_heartbeat("node-1", 0, 10, 0), deps)
    process_batch(_heartbeat("node-1", 1, 10, 0, sensor="b"), deps)  # restarted: counters start again
    clock.now += 30 * S
    assert _types(check_sensors(deps, "c")) == []
    clock.now += 60 * S
    assert _types(check_sensors(deps, "c")) == ["sensor_silent"]
    clock.now += 60 * S
    assert _types(check_sensors(deps, "c")) == []  # once per silence
    assert [a["type"] for a in deps.notifier.sent] == ["sensor_silent"]


def test_a_heartbeat_delivered_again_is_no_sign_of_life(tmp_path):
    """A redelivered or replayed heartbeat (a window no later than the node's last one recorded, of this
    sensor or an earlier one) must not keep a node whose sensor stopped from being reported silent."""
    clock = Clock()
    deps = Dependencies(LocalObjectStore(tmp_path), CollectingNotifier(), clock)
    for seq in range(3):
        process_batch(_heartbeat("node-1", seq, 10 + seq, 0), deps)
        clock.now += 10 * S
    silent = []
    for _ in range(8):  # the sensor stopped; its last heartbeat, and one of a sensor before it, come again
        clock.now += 15 * S
        silent += _types(process_batch(_heartbeat("node-1", 2, 12, 0), deps))
        silent += _types(process_batch(_heartbeat("node-1", 0, 10, 0, sensor="before"), deps))
        silent += _types(check_sensors(deps, "c"))
    assert silent == ["sensor_silent"] and [a["type"] for a in deps.notifier.sent] == ["sensor_silent"]


def test_nodes_the_autoscaler_replaced_are_forgotten_a_day_after_their_silence(tmp_path):
    """Thirty days of a node replaced daily: each old node is reported silent once, then forgotten, so the
    health document (read and written per batch) holds the present nodes, not the cluster's history."""
    import json

    clock = Clock()
    store = LocalObjectStore(tmp_path)
    # heartbeats every 3 hours (fewer calls); silent after 4 hours
    deps = Dependencies(store, CollectingNotifier(), clock, CoreConfig(sensor_silent_after_s=4 * 3600))
    for day in range(30):
        nodes = [f"node-{day + i}" for i in range(3)]  # one node replaced a day
        for hour in range(0, 24 * 3600, 3 * 3600):
            for node in nodes:
                seq = (day * 24 * 3600 + hour) // 10
                process_batch(_heartbeat(node, seq, seq + 10, 0), deps)
            clock.now += 3 * 3600 * S
        check_sensors(deps, "c")
    kept = json.loads(store.get("state/c/sensor_health.json").data)["state"]["nodes"]
    assert len(kept) <= 5, sorted(kept)  # the present three and those gone less than a day
    assert {"node-29", "node-30", "node-31"} <= set(kept)
    silent = [a for a in deps.notifier.sent if a["type"] == "sensor_silent"]
    assert len(silent) == len({a["source"]["node"] for a in silent}) >= 28  # each replaced node reported once


def _last_words(node: str, seq: int, retiring: bool, sensor: str = "a") -> Batch:
    """A heartbeat as it travels, through the batch codec: the sensor's last one says whether its node is
    leaving the cluster (sensor/kube.py reads the Node on SIGTERM)."""
    counters = {"packets": 10 + seq, "kernel_packets": 10 + seq, "kernel_drops": 0}
    counters |= {"node_retiring": 1} if retiring else {}
    header = BatchHeader("c", node, f"{node}/{sensor}", seq, seq * 10 * S, (seq + 1) * 10 * S, counters=counters)
    (message,) = encode_batch(header, FlowRecords.empty())
    return decode_batch(message)


def test_a_node_scaled_down_raises_nothing_and_one_whose_sensor_just_stopped_still_does(tmp_path):
    """Every scale-down stops a sensor: a node that said it was leaving is retired, not silent, and is
    forgotten as silent nodes are; a sensor that stopped on a node in service (killed, crashed) is silent."""
    import json

    clock = Clock()
    store = LocalObjectStore(tmp_path)
    deps = Dependencies(store, CollectingNotifier(), clock)
    for seq in range(3):
        for node in ("leaving", "staying", "busy"):
            process_batch(_last_words(node, seq, retiring=False), deps)
        clock.now += 10 * S
    process_batch(_last_words("leaving", 3, retiring=True), deps)  # its last batch, at SIGTERM
    process_batch(_last_words("staying", 3, retiring=False), deps)  # SIGTERM on a node in service
    found = []
    for seq in range(4, 40):  # six minutes of the third node's heartbeats, and the scheduled check
        clock.now += 10 * S
        found += [(a["type"], a["source"]["node"]) for a in process_batch(_last_words("busy", seq, False), deps).new_alerts]
        found += [(a["type"], a["source"]["node"]) for a in check_sensors(deps, "c").new_alerts]
    assert found == [("sensor_silent", "staying")]
    nodes = json.loads(store.get("state/c/sensor_health.json").data)["state"]["nodes"]
    assert nodes["leaving"]["retired"] and not nodes["leaving"]["silent"]
    clock.now += 25 * 3600 * S
    check_sensors(deps, "c")
    nodes = json.loads(store.get("state/c/sensor_health.json").data)["state"]["nodes"]
    assert "leaving" not in nodes and "staying" not in nodes  # both forgotten a day on
    assert [a["type"] for a in deps.notifier.sent] == ["sensor_silent", "sensor_silent"]  # 'busy' too, by now


def test_a_retired_node_whose_sensor_sends_again_is_watched_again(tmp_path):
    """The node was cordoned, its sensor restarted, and it stayed after all: silence alerts again."""
    clock = Clock()
    deps = Dependencies(LocalObjectStore(tmp_path), CollectingNotifier(), clock)
    process_batch(_last_words("node-1", 0, retiring=False), deps)
    clock.now += 10 * S
    process_batch(_last_words("node-1", 1, retiring=True), deps)
    clock.now += 300 * S
    assert _types(check_sensors(deps, "c")) == []
    process_batch(_last_words("node-1", 40, retiring=False, sensor="b"), deps)  # back, with a new sensor
    clock.now += 60 * S
    assert _types(check_sensors(deps, "c")) == []
    clock.now += 30 * S
    assert _types(check_sensors(deps, "c")) == ["sensor_silent"]


def test_a_retiring_batch_from_the_future_hides_no_silence(tmp_path):
    """A batch whose window ends an hour ahead holds the node's real heartbeats back as older; had it
    retired the node, a forged one (root on another node, with the cluster-wide key) would hide this
    node's silence for the hour. It is taken as a plain heartbeat: the silence alerts."""
    clock = Clock()
    deps = Dependencies(LocalObjectStore(tmp_path), CollectingNotifier(), clock)
    now_window = clock.now // (10 * S)
    for seq in range(3):
        process_batch(_last_words("node-1", now_window + seq, retiring=False), deps)
        clock.now += 10 * S
    process_batch(_last_words("node-1", now_window + 360, retiring=True, sensor="forged"), deps)
    found = []
    for seq in range(3, 15):  # two minutes of the real sensor's heartbeats, all older than the forged window
        clock.now += 10 * S
        found += _types(process_batch(_last_words("node-1", now_window + seq, retiring=False), deps))
        found += _types(check_sensors(deps, "c"))
    assert found == ["sensor_silent"]


def test_forged_health_counters_are_counts_like_any(tmp_path):
    """A sensor sends node_retiring 1; a forged batch may carry any count the wire holds (2, 2**64 - 1),
    and kernel counters at the limit. A non-zero flag retires the node (no more than a forged 1 could:
    the MAC is what is trusted), the document keeps a bool, drops past the packets seen are judged
    without overflow, and a node not retired still goes silent."""
    import json

    clock = Clock()
    store = LocalObjectStore(tmp_path)
    deps = Dependencies(store, CollectingNotifier(), clock)
    top = (1 << 64) - 1
    for node, counters in (("two", {"node_retiring": 2}), ("top", {"node_retiring": top}),
                           ("flood", {"kernel_packets": 5, "kernel_drops": top})):
        header = BatchHeader("c", node, f"{node}/a", 0, clock.now - 10 * S, clock.now,
                             counters={"kernel_packets": 0, "kernel_drops": 0} | counters)
        (message,) = encode_batch(header, FlowRecords.empty())
        assert _types(process_batch(decode_batch(message), deps)) == (["sensor_drops"] if node == "flood" else [])
    clock.now += 300 * S
    assert [(a["type"], a["source"]["node"]) for a in check_sensors(deps, "c").new_alerts] == [
        ("sensor_silent", "flood")]
    nodes = json.loads(store.get("state/c/sensor_health.json").data)["state"]["nodes"]
    assert nodes["two"]["retired"] is True and nodes["top"]["retired"] is True
