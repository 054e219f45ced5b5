"""The spool against a hostile or unlucky disk (issue 19): corrupt entries are quarantined and counted,
the sensor keeps publishing, counters follow the directory, and the bound is never passed."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import time

import numpy as np
import pytest

from kubesonar.sensor import spool as spool_module
from kubesonar.sensor.queues import Message, window_messages
from kubesonar.sensor.queues.directory import DirectoryQueue
from kubesonar.sensor.spool import ENTRY_OVERHEAD, QUARANTINE, SpoolingPublisher
from kubesonar.shared.batch import BatchHeader
from kubesonar.shared.errors import ConfigError
from kubesonar.shared.flow import FlowRecords

LIMIT = 8192


def _window(sequence: int, flows: int = 300) -> list[Message]:
    records = FlowRecords.empty(flows)
    rng = np.random.default_rng(sequence)
    records.columns["first_ts"] = np.sort(rng.integers(0, 10**10, flows))
    records.columns["dst_port"] = rng.integers(0, 65535, flows).astype(np.uint16)
    return window_messages(BatchHeader("c", "node-1", "node-1/abc", sequence, 0, 1), records, limit=LIMIT)


def _down_queue(tmp_path):
    queue_dir = tmp_path / "queue"
    queue_dir.write_text("not a directory")  # every send fails
    return queue_dir


def _up(queue_dir):
    queue_dir.unlink()
    queue_dir.mkdir()


def _publisher(tmp_path, queue_dir, bound=256 << 10):
    return SpoolingPublisher(DirectoryQueue(queue_dir, limit=LIMIT), tmp_path / "spool", max_bytes=bound,
                             attempts=1, max_wait_s=0.001)


CORRUPT = {
    "empty": ("00000000000000000000.spool", b""),
    "one byte": ("00000000000000000001.spool", b"\x05"),
    "key past the end": ("00000000000000000002.spool", b"\xff\x00abc"),
    "key not UTF-8": ("00000000000000000003.spool", b"\x04\x00\xff\xfe\xfd\xfc" + b"data"),
    "key not a batch key": ("00000000000000000004.spool", b"\x03\x00abcdata"),
    "a foreign name": ("garbage.spool", b"\x03\x00abcdata"),
}


@pytest.mark.parametrize("fault", [*CORRUPT, "a directory"])
def test_a_corrupt_entry_is_quarantined_and_publishing_goes_on(tmp_path, fault):
    spool = tmp_path / "spool"
    spool.mkdir()
    if fault == "a directory":
        (spool / "00000000000000000000.spool").mkdir()
    else:
        name, data = CORRUPT[fault]
        (spool / name).write_bytes(data)
    queue_dir = tmp_path / "queue"
    queue_dir.mkdir()
    publisher = _publisher(tmp_path, queue_dir)  # a restart over the bad entry
    messages = _window(1)
    publisher.publish(messages)
    assert publisher.stats.quarantined == 1 and publisher.errors
    assert len(list(queue_dir.glob("*.ksfb"))) == len(messages)
    assert publisher.stats.depth == 0 and list(spool.glob("*.spool")) == []
    assert len(list((spool / QUARANTINE).iterdir())) == 1


def test_a_corrupt_entry_found_while_draining(tmp_path):
    queue_dir = _down_queue(tmp_path)
    publisher = _publisher(tmp_path, queue_dir)
    publisher.publish(_window(1))
    first = min((tmp_path / "spool").glob("*.spool"))
    first.write_bytes(b"\x09\x00\xff\xff\xff")
    _up(queue_dir)
    assert publisher.drain()
    assert publisher.stats.quarantined == 1 and publisher.stats.depth == 0
    assert len(list(queue_dir.glob("*.ksfb"))) == len(_window(1)) - 1


def test_counters_follow_the_directory_when_files_vanish(tmp_path):
    queue_dir = _down_queue(tmp_path)
    publisher = _publisher(tmp_path, queue_dir)
    for sequence in range(3):
        publisher.publish(_window(sequence))
    assert publisher.stats.depth > 0
    for path in (tmp_path / "spool").glob("*.spool"):
        path.unlink()
    publisher.publish(_window(9))
    on_disk = list((tmp_path / "spool").glob("*.spool"))
    assert publisher.stats.depth == len(on_disk) == len(_window(9))
    assert publisher.stats.depth_bytes == sum(p.stat().st_size for p in on_disk)


def test_the_spool_directory_deleted_while_the_queue_is_down(tmp_path):
    queue_dir = _down_queue(tmp_path)
    publisher = _publisher(tmp_path, queue_dir)
    publisher.publish(_window(1))
    shutil.rmtree(tmp_path / "spool")
    publisher.publish(_window(2))  # made again, and the window spooled
    assert publisher.stats.depth == len(_window(2))
    (tmp_path / "spool").rename(tmp_path / "gone")
    (tmp_path / "spool").write_text("a file where the directory was")  # cannot be made again
    publisher.publish(_window(3))
    assert publisher.stats.write_errors == len(_window(3)) and publisher.stats.depth == 0
    assert "cannot write to the spool" in publisher.errors[-1]


def test_the_bound_is_never_passed_even_by_the_key(tmp_path):
    bound = LIMIT + ENTRY_OVERHEAD
    queue_dir = _down_queue(tmp_path)
    publisher = _publisher(tmp_path, queue_dir, bound=bound)
    big = Message("node-1/abc/1/0", b"x" * LIMIT)
    for n in range(5):
        publisher.publish([Message(f"node-1/abc/{n}/0", big.data)])
        assert publisher.stats.depth_bytes <= bound and publisher.stats.peak_bytes <= bound
    assert publisher.stats.dropped == 4 and publisher.stats.depth == 1


def test_a_bound_below_one_message_and_its_key_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="smaller than one message"):
        _publisher(tmp_path, tmp_path / "q", bound=LIMIT)


def test_a_write_cut_by_a_crash_is_removed_at_start(tmp_path):
    """A crash between writing an entry's temporary file and renaming it left the file for good, outside
    the bound: a spool that crashed often filled the disk past --spool-max-bytes."""
    spool = tmp_path / "spool"
    spool.mkdir()
    cut = spool / "00000000000000000007.tmp"
    cut.write_bytes(b"\x0e\x00node-1/abc/7/0" + b"x" * (64 << 10))
    queue_dir = _down_queue(tmp_path)
    publisher = _publisher(tmp_path, queue_dir)
    assert not cut.exists()
    publisher.publish(_window(1))
    assert publisher.stats.depth_bytes == sum(p.stat().st_size for p in spool.iterdir() if p.is_file())


def test_an_entry_is_durable_once_spooled(tmp_path, monkeypatch):
    """The rename that publishes an entry is durable only once its directory is synced: without it a
    power loss could lose an entry the spool had counted as spooled."""
    events = []
    real_replace, real_fsync = os.replace, os.fsync
    monkeypatch.setattr(os, "replace", lambda a, b: events.append("rename") or real_replace(a, b))
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(
        "sync directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "sync file") or real_fsync(fd))
    queue_dir = _down_queue(tmp_path)
    publisher = _publisher(tmp_path, queue_dir)
    for sequence in range(3):
        publisher.publish(_window(sequence))
    monkeypatch.undo()
    assert publisher.stats.spooled == 3
    assert events == ["sync file", "rename", "sync directory"] * 3


def test_write_errors_are_logged_at_the_first_and_then_at_most_once_a_minute(tmp_path, caplog, monkeypatch):
    """A spool that could not be written (disk full, read-only) dropped every batch with only a counter to
    show for it: nothing in the log said the sensor was losing its windows."""
    monkeypatch.setattr(spool_module, "WRITE_ERROR_LOG_S", 0.5, raising=False)  # a minute, shortened
    queue_dir = _down_queue(tmp_path)
    publisher = _publisher(tmp_path, queue_dir)
    (tmp_path / "spool").rename(tmp_path / "gone")
    (tmp_path / "spool").write_text("a file where the directory was")  # every write fails

    def reports():
        return [r.getMessage() for r in caplog.records if "batch dropped" in r.getMessage()]

    with caplog.at_level(logging.WARNING, logger="kubesonar.sensor.spool"):
        for sequence in range(5):
            publisher.publish(_window(sequence))
        assert len(reports()) == 1
        assert "cannot write to the spool" in reports()[0] and "(1 batches dropped" in reports()[0]
        before = publisher.stats.write_errors
        assert before == sum(len(_window(n)) for n in range(5)) > 1
        time.sleep(0.6)
        publisher.publish(_window(5))
    assert len(reports()) == 2 and f"({before + 1} batches dropped" in reports()[1]


def test_entries_put_in_the_spool_meanwhile_are_read_and_never_overwritten(tmp_path):
    """The index is read again when something else changes the directory; new names follow the ones
    found (an operator moving a node's spool to another, for instance)."""
    queue_dir = _down_queue(tmp_path)
    publisher = _publisher(tmp_path, queue_dir)
    publisher.publish(_window(1))
    spool = tmp_path / "spool"
    moved_in = spool / "00000000000000000100.spool"
    moved_in.write_bytes(min(spool.glob("*.spool")).read_bytes())
    second = _window(2)
    publisher.publish(second)
    names = sorted(p.name for p in spool.glob("*.spool"))
    assert publisher.stats.depth == len(names) == len(_window(1)) + 1 + len(second)
    assert names[-len(second) - 1 :] == [moved_in.name] + [f"{100 + n:020d}.spool" for n in range(1, len(second) + 1)]
