"""The spool: the queue goes away mid-stream and comes back; every batch arrives exactly once, in
order, and the spool never holds more than its bound. Beyond the bound the oldest are dropped, counted."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest

from kubesonar.compose import build_sensor
from kubesonar.functions.local.backend import LocalBackend
from kubesonar.sensor.live import SensorSettings
from kubesonar.sensor.queues import Message, open_publisher, parse_queue_url, window_messages
from kubesonar.sensor.queues.directory import DirectoryQueue
from kubesonar.sensor.spool import OUTAGE_BACKOFF_S, SpoolingPublisher
from kubesonar.shared.applied import MAX_AGE_NS
from kubesonar.shared.batch import BatchHeader
from kubesonar.shared.errors import ConfigError
from kubesonar.shared.flow import FlowRecords


def _window(sequence: int, flows: int = 400) -> list[Message]:
    records = FlowRecords.empty(flows)
    rng = np.random.default_rng(sequence)
    records.columns["first_ts"] = np.sort(rng.integers(0, 10**10, flows))
    records.columns["dst_port"] = rng.integers(0, 65535, flows).astype(np.uint16)
    records.columns["bytes_out"] = rng.integers(0, 10**9, flows).astype(np.uint64)
    header = BatchHeader("c", "node-1", "node-1/abc", sequence, 0, 1, counters={"packets": sequence})
    return window_messages(header, records, limit=8192)  # several parts per window


def _break(queue_dir):
    queue_dir.rename(queue_dir.with_name("away"))
    queue_dir.write_text("not a directory")  # writes now fail with ENOTDIR


def _mend(queue_dir):
    queue_dir.unlink()
    queue_dir.with_name("away").rename(queue_dir)


def test_an_outage_mid_stream_loses_nothing_and_the_spool_stays_in_bound(tmp_path):
    queue_dir = tmp_path / "queue"
    queue_dir.mkdir()
    bound = 64 << 10
    # no outage backoff: the queue is tried again at every window, so it is used as soon as it is back
    publisher = SpoolingPublisher(DirectoryQueue(queue_dir, limit=8192), tmp_path / "spool", max_bytes=bound, attempts=2,
                                  max_wait_s=0.01, outage_backoff_s=(0.0, 0.0))
    sent = []
    for sequence in range(30):
        if sequence == 8:
            _break(queue_dir)
        if sequence == 16:
            _mend(queue_dir)
        messages = _window(sequence)
        sent += [m.key for m in messages]
        publisher.publish(messages)
        assert publisher.stats.depth_bytes <= bound
    assert publisher.drain()
    s = publisher.stats
    assert s.spooled > 0 and s.drained == s.spooled and s.dropped == 0 and s.peak_bytes <= bound
    # the receiver: every batch exactly once, by key, and all of them decode
    backend = LocalBackend(tmp_path / "state")
    received = sorted(queue_dir.glob("*.ksfb"))
    for path in received:
        sensor, sequence, part = path.stem.rsplit("-", 2)
        assert backend.receive(f"node-1/abc/{int(sequence)}/{int(part)}", path.read_bytes()) is not None
    assert len(received) == len(sent) and backend.counters["messages"] == len(sent)
    assert backend.counters["flows"] == 30 * 400


def test_beyond_the_bound_the_oldest_are_dropped_and_counted(tmp_path):
    queue_dir = tmp_path / "queue"
    queue_dir.mkdir()
    _break(queue_dir)
    bound = 40 << 10
    publisher = SpoolingPublisher(DirectoryQueue(queue_dir, limit=8192), tmp_path / "spool", max_bytes=bound, attempts=1)
    windows = [_window(n) for n in range(20)]
    for messages in windows:
        publisher.publish(messages)
    assert publisher.stats.dropped > 0 and publisher.stats.peak_bytes <= bound
    _mend(queue_dir)
    assert publisher.drain()
    delivered = {p.name for p in queue_dir.glob("*.ksfb")}
    newest = windows[-1]
    assert {m.file_name for m in newest} <= delivered  # the newest survive
    assert windows[0][0].file_name not in delivered  # the oldest went first
    assert len(delivered) + publisher.stats.dropped == sum(len(w) for w in windows)


def _one_part(sequence: int) -> list[Message]:
    header = BatchHeader("c", "node-1", "node-1/abc", sequence, 0, 1, counters={"packets": sequence})
    return window_messages(header, FlowRecords.empty(4), limit=8192)


def test_an_outage_is_tried_once_then_windows_go_to_disk_until_the_backoff_passes(tmp_path):
    """A window published while the queue is down waits (retries, timeouts) in the capture loop: during an
    outage only the first window and then one try a backoff pays that, not every window."""
    queue_dir = tmp_path / "queue"
    queue_dir.mkdir()
    tries = []

    class Counted(DirectoryQueue):
        def send(self, messages):
            tries.append(len(messages))
            super().send(messages)

    publisher = SpoolingPublisher(Counted(queue_dir, limit=8192), tmp_path / "spool", attempts=3, max_wait_s=0.01)
    _break(queue_dir)
    for sequence in range(10):
        publisher.publish(_one_part(sequence))
    assert len(tries) == 3 and publisher.stats.retries == 2  # the first window's three attempts, then none
    assert publisher.stats.spooled == 10 and "Not a directory" in publisher.errors[-1]
    _mend(queue_dir)
    time.sleep(OUTAGE_BACKOFF_S[0] * 1.05)  # past the first backoff: one try finds the queue back
    publisher.publish(_one_part(10))
    assert publisher.stats.depth == 0 and publisher.stats.drained == 10 and publisher.stats.sent == 11
    assert len(list(queue_dir.glob("*.ksfb"))) == 11


def test_the_backoff_grows_while_the_queue_stays_down(tmp_path):
    queue_dir = tmp_path / "queue"
    queue_dir.mkdir()
    tries = []

    class Counted(DirectoryQueue):
        def send(self, messages):
            tries.append(time.monotonic())
            super().send(messages)

    publisher = SpoolingPublisher(Counted(queue_dir, limit=8192), tmp_path / "spool", attempts=3, max_wait_s=0.01,
                                  outage_backoff_s=(0.05, 0.4))
    _break(queue_dir)
    end = time.monotonic() + 1.0
    sequence = 0
    while time.monotonic() < end:  # a window every 10 ms for a second
        publisher.publish(_one_part(sequence))
        sequence += 1
        time.sleep(0.01)
    # three attempts, then single tries 0.05, 0.1, 0.2, 0.4 s apart: not three every 0.05 s
    assert 5 <= len(tries) <= 8, len(tries)
    assert publisher.stats.spooled == sequence and publisher.stats.dropped == 0


def test_a_spool_drains_a_little_each_window_in_order(tmp_path):
    """After a long outage the capture loop does not wait for the whole spool: each publish drains for its
    budget (and always one message more than it adds, so the spool empties), newer windows wait behind."""
    queue_dir = tmp_path / "queue"
    queue_dir.mkdir()
    publisher = SpoolingPublisher(DirectoryQueue(queue_dir, limit=8192), tmp_path / "spool", attempts=1,
                                  drain_budget_s=0.0, outage_backoff_s=(0.0, 0.0))
    _break(queue_dir)
    for sequence in range(40):
        publisher.publish(_one_part(sequence))
    assert publisher.stats.depth == 40
    _mend(queue_dir)
    publisher.publish(_one_part(40))
    assert publisher.stats.depth == 39  # two went, the new window waits behind the rest
    publishes = 1
    while publisher.stats.depth:
        publisher.publish(_one_part(40 + publishes))
        publishes += 1
    assert publishes <= 41 and publisher.stats.sent == 40 + publishes
    delivered = sorted(queue_dir.glob("*.ksfb"), key=lambda p: p.stat().st_mtime_ns)
    sequences = [int(p.stem.rsplit("-", 2)[1]) for p in delivered]
    assert sequences == sorted(sequences) == list(range(40 + publishes))  # oldest first, none twice


def test_a_restarted_sensor_resumes_its_spool(tmp_path):
    queue_dir = tmp_path / "queue"
    queue_dir.mkdir()
    _break(queue_dir)
    first = SpoolingPublisher(DirectoryQueue(queue_dir, limit=8192), tmp_path / "spool", attempts=1)
    first.publish(_window(0))
    _mend(queue_dir)
    second = SpoolingPublisher(DirectoryQueue(queue_dir, limit=8192), tmp_path / "spool", attempts=1)
    assert second.stats.depth == first.stats.depth > 0
    second.publish(_window(1))
    assert second.stats.depth == 0
    assert len(list(queue_dir.glob("*.ksfb"))) == len(_window(0)) + len(_window(1))


@pytest.mark.parametrize("url, kind", [
    ("file:///var/lib/kubesonar/queue", "file"),
    ("https://sqs.eu-west-1.amazonaws.com/123456789012/kubesonar-flows", "sqs"),
    ("http://127.0.0.1:5000/123456789012/flows", "sqs"),
    ("pubsub://projects/my-project/topics/kubesonar-flows", "pubsub"),
    ("eventgrid://kubesonar-flows.westeurope-1.eventgrid.azure.net", "eventgrid"),
])
def test_queue_urls(url, kind):
    assert parse_queue_url(url).kind == kind


@pytest.mark.parametrize("url", ["s3://bucket/x", "file://", "pubsub://projects/p/topics/t", "kafka://x"])
def test_a_bad_queue_url_lists_the_forms(url):
    with pytest.raises(ConfigError, match="file://"):
        open_publisher(url)


def test_an_sqs_fifo_queue_is_refused_at_start():
    """The publisher sends no MessageGroupId, so a FIFO queue refused every batch; with refusals now
    dropped and counted (not spooled), a sensor pointed at one would have lost every window."""
    with pytest.raises(ConfigError, match="FIFO"):
        open_publisher("https://sqs.eu-west-1.amazonaws.com/123456789012/kubesonar-flows.fifo")


def _heartbeats(spool, count: int) -> int:
    """``count`` heartbeat-sized entries written straight to the spool directory; their bytes."""
    spool.mkdir()
    key = b"node-1/abc/0/0"
    entry = len(key).to_bytes(2, "little") + key + b"x" * 880
    for n in range(count):
        (spool / f"{n:020d}.spool").write_bytes(entry)
    return count * len(entry)


def test_a_publish_does_not_list_a_large_spool(tmp_path, monkeypatch):
    """A publish that listed the spool directory took 0.5 s with 10,000 heartbeats spooled and 9.7 s
    with 100,000, most of a 10 s window: the spool lists it once, at start, and keeps an index."""
    held = _heartbeats(tmp_path / "spool", 2000)
    queue_dir = tmp_path / "queue"
    queue_dir.write_text("not a directory")  # the queue is down
    publisher = SpoolingPublisher(DirectoryQueue(queue_dir, limit=8192), tmp_path / "spool", attempts=1)
    assert publisher.stats.depth == 2000 and publisher.stats.depth_bytes == held
    listings = []
    for name in ("scandir", "listdir"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda path=".", real=real: listings.append(path) or real(path))
    for sequence in range(5):
        publisher.publish(_one_part(sequence))
    assert listings == []
    monkeypatch.undo()
    on_disk = list((tmp_path / "spool").glob("*.spool"))
    assert publisher.stats.depth == len(on_disk) == 2005
    assert publisher.stats.depth_bytes == sum(p.stat().st_size for p in on_disk)


def _spooled(tmp_path, windows: int, **options) -> tuple[Path, SpoolingPublisher]:
    """A queue directory that is down and a publisher that has spooled ``windows`` one-part windows."""
    queue_dir = tmp_path / "queue"
    queue_dir.mkdir()
    _break(queue_dir)
    publisher = SpoolingPublisher(DirectoryQueue(queue_dir, limit=8192), tmp_path / "spool", attempts=1, **options)
    for sequence in range(windows):
        publisher.publish(_one_part(sequence))
    return queue_dir, publisher


def test_an_entry_gone_behind_the_spools_back_is_dropped_from_the_index(tmp_path):
    queue_dir, publisher = _spooled(tmp_path, 3)
    spool = tmp_path / "spool"
    seen = spool.stat()
    min(spool.glob("*.spool")).unlink()
    os.utime(spool, ns=(seen.st_atime_ns, seen.st_mtime_ns))  # a change the directory's time does not show
    _mend(queue_dir)
    assert publisher.drain()
    s = publisher.stats
    assert s.depth == s.depth_bytes == 0 and s.drained == 2 and s.dropped == 0
    assert sorted(int(p.stem.rsplit("-", 2)[1]) for p in queue_dir.glob("*.ksfb")) == [1, 2]


class _Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_what_the_backend_would_refuse_is_expired_not_sent(tmp_path, caplog):
    """The backend refuses as a replay a batch whose window ended MAX_AGE_NS (23 h) ago or more: a spool
    that outlived that sent every such batch anyway, to be counted stale."""
    clock = _Clock()
    queue_dir, publisher = _spooled(tmp_path, 3, outage_backoff_s=(0.0, 0.0), clock=clock)
    old_bytes = publisher.stats.depth_bytes
    clock.now += MAX_AGE_NS / 1e9 - 60
    publisher.publish(_one_part(3))
    assert publisher.stats.depth == 4 and publisher.stats.expired == 0
    clock.now += 60
    _mend(queue_dir)
    with caplog.at_level(logging.WARNING, logger="kubesonar.sensor.spool"):
        publisher.publish(_one_part(4))
    s = publisher.stats
    assert s.expired == 3 and s.expired_bytes == old_bytes and s.dropped == 0 and s.depth == 0
    assert sorted(int(p.stem.rsplit("-", 2)[1]) for p in queue_dir.glob("*.ksfb")) == [3, 4]
    expiries = [r.getMessage() for r in caplog.records if "expired" in r.getMessage()]
    assert len(expiries) == 1 and "deleted 3 spooled batches" in expiries[0]


def test_a_restart_over_old_entries_expires_them_and_reports_it(tmp_path):
    queue_dir, _first = _spooled(tmp_path, 3)
    written = time.time() - MAX_AGE_NS / 1e9 - 1  # a sensor down for a day, its spool kept
    for path in sorted((tmp_path / "spool").glob("*.spool"))[:2]:
        os.utime(path, (written, written))
    _mend(queue_dir)
    settings = SensorSettings(("lo",), node="node-1")
    sensor = build_sensor(settings, queue_dir.as_uri(), str(tmp_path / "spool"), 1 << 20)
    assert sensor.extra_counters()["spool_expired"] == 2  # in the heartbeat's counters
    second = SpoolingPublisher(DirectoryQueue(queue_dir, limit=8192), tmp_path / "spool", attempts=1)
    assert second.drain() and second.stats.drained == 1
    assert [int(p.stem.rsplit("-", 2)[1]) for p in queue_dir.glob("*.ksfb")] == [2]


def test_the_first_heartbeat_covers_the_start_of_a_sensor_whose_kernels_compile(tmp_path):
    """The probe restarted a sensor 3 windows and 2 minutes after its start, while its capture workers
    may take 10 minutes to answer first when the kernels compile (no native module): it never started."""
    from kubesonar.sensor.capture_workers import START_TIMEOUT_S

    queue_dir = tmp_path / "queue"
    queue_dir.mkdir()
    build_sensor(SensorSettings(("lo",), node="node-1"), queue_dir.as_uri(), str(tmp_path / "spool"), 1 << 20,
                 health_file=str(tmp_path / "alive"))
    assert float((tmp_path / "alive").read_text()) >= time.time() + START_TIMEOUT_S - 5
