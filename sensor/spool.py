"""A bounded on-disk spool in front of a publisher: when the queue cannot be reached, messages wait on
disk and drain, oldest first, once it is back. Nothing is lost within the bound; beyond it the oldest
messages are dropped and counted. Delivery is at least once (receivers deduplicate by message key).

The directory is the truth, read once at start into an in-memory index (:class:`SpoolIndex`) that the
spool's own writes and deletes keep up to date, so a publish costs the same with 10 or 300,000 entries
spooled. When the directory changes behind the spool's back (its modification time or inode moves: an
operator, a deleted directory) the index is read again; a file it names that is gone anyway is dropped
from it when the spool next reaches it, so the counters never drift for long. An entry that cannot
be a message (empty, cut, a key that is not UTF-8 or not a batch key, a name that is not ours, a
directory) is moved to ``quarantine/`` and counted; the sensor keeps publishing. If the spool cannot
be written at all (the directory is gone and cannot be made again, the disk is full), the message is
dropped and counted.

A batch is worth sending only while the backend takes it: it refuses as a replay any whose window ended
``MAX_AGE_NS`` (23 h) ago or more (shared/applied.py). Entries written that long ago (their windows ended
earlier still) are expired: deleted, counted and logged, never sent.

The capture loop waits while a window is published, so an outage costs it little: once the queue has
failed, windows go straight to disk until a backoff (1 s doubling to 30 s) has passed, and then one
try (no retries) says whether it is back. A spool that drains after an outage drains for at most
``drain_budget_s`` a publish; the windows that arrive meanwhile wait behind it, so order is kept, but for
one window: while the queue refuses every window (QueueRefusingAll, sensor/queues/refusals.py) a try offers
a newer one than the oldest, the window being published or a spooled one at most ``PROBE_REACH`` from the
oldest, to learn whether the queue works and the held windows at the head are bad on their own.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import shutil
import stat
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tenacity import (
    Retrying,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from kubesonar.sensor.queues import Message, Publisher
from kubesonar.sensor.spool_index import SpoolIndex
from kubesonar.shared.applied import MAX_AGE_NS, WINDOW
from kubesonar.shared.errors import BatchFormatError, ConfigError, QueueRefusingAll, QueueUnavailable
from kubesonar.shared.identity import split_batch_key

_KEY_LEN = struct.Struct("<H")
MAX_KEY_BYTES = 1024
ENTRY_OVERHEAD = _KEY_LEN.size + MAX_KEY_BYTES  # an entry is key length, key, message
_NAME = re.compile(r"\d{20}\.spool\Z")
_PARTIAL = re.compile(r"\d{20}\.tmp\Z")
QUARANTINE = "quarantine"
QUARANTINE_KEEP = 32  # the newest quarantined entries kept for a look; older ones are deleted
OUTAGE_BACKOFF_S = (1.0, 30.0)  # after a failed try the queue is left alone this long, doubling to the cap
# A probe is at most this many entries from the oldest: the backend refuses as a replay a window WINDOW
# sequences below the newest it took, and a sensor's held windows are spooled in order, one entry or more
# each, so every held window ahead of the probe is still taken (half of it: room for sequences skipped).
PROBE_REACH = WINDOW // 2
WRITE_ERROR_LOG_S = 60.0  # write errors are logged at the first and then at most this often, with the count

log = logging.getLogger(__name__)


@dataclass
class SpoolStats:
    sent: int = 0  # messages the queue accepted
    retries: int = 0
    spooled: int = 0  # messages that went to disk
    drained: int = 0  # spooled messages delivered later
    dropped: int = 0  # messages dropped: the oldest, to keep the bound, or any the spool could not write
    dropped_bytes: int = 0
    expired: int = 0  # messages spooled too long ago for the backend to take (MAX_AGE_NS), deleted unsent
    expired_bytes: int = 0
    quarantined: int = 0  # spool entries that could not be read as messages
    write_errors: int = 0  # messages the spool could not write or make room for (also counted in dropped)
    depth: int = 0  # messages on disk now
    depth_bytes: int = 0
    peak_bytes: int = 0


class _Corrupt(Exception):
    pass


class SpoolingPublisher:
    def __init__(self, inner: Publisher, directory: str | os.PathLike[str], max_bytes: int = 256 << 20,
                 attempts: int = 3, max_wait_s: float = 0.5, drain_budget_s: float = 1.0,
                 outage_backoff_s: tuple[float, float] = OUTAGE_BACKOFF_S,
                 clock: Callable[[], float] = time.time):
        self.inner, self.limit = inner, inner.limit
        self.directory = Path(directory)
        if max_bytes < self.limit + ENTRY_OVERHEAD:
            raise ConfigError(f"spool bound {max_bytes} bytes is smaller than one message "
                              f"({self.limit} bytes and {ENTRY_OVERHEAD} for its key)")
        self.max_bytes = max_bytes
        self.drain_budget_s, self.outage_backoff_s = drain_budget_s, outage_backoff_s
        self._clock = clock  # write times, as the files' mtimes: seconds since the epoch
        self._failed_tries = 0  # since the queue last took a message
        self._retry_at = 0.0  # monotonic time before which the queue is not tried
        self._held = False  # the queue refused every window at the last try: the next try is a probe
        self._held_below: int | None = None  # a probe was taken: the entries below this sequence were held
        self._probe_refused: int | None = None  # the entry last offered as a probe and not taken
        self._write_error_log_at = 0.0  # monotonic time before which write errors are counted, not logged
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create spool directory {self.directory}: {exc.strerror}") from None
        self.stats = SpoolStats()
        self.errors: list[str] = []  # the latest faults, for the log
        # retries stay short: the capture loop waits meanwhile; the spool absorbs longer outages. A hold is
        # no passing fault: the queue refused that window for good, and would again at once
        self._retrying = Retrying(stop=stop_after_attempt(attempts), wait=wait_random_exponential(0.02, max_wait_s),
                                  retry=retry_if_exception_type(QueueUnavailable)
                                  & retry_if_not_exception_type(QueueRefusingAll), reraise=True,
                                  before_sleep=self._count_retry)
        self._next = 0
        self._index = self._scan()  # a restarted sensor resumes its spool
        self._settle()
        self._expire()

    def _count_retry(self, _state) -> None:
        self.stats.retries += 1

    def publish(self, messages: list[Message]) -> None:
        """Send now if the queue is reachable and nothing waits before these; else spool them."""
        self._refresh()
        self._expire()
        try:
            if time.monotonic() >= self._retry_at:
                if self._held and self._index.count < PROBE_REACH:  # these are the newest: the probe
                    if self._probe(messages, self._next):
                        self.stats.sent += len(messages)
                        self._drain(self.drain_budget_s, 1)
                        return
                # drain at least one more than this publish adds, so a slow queue still empties the spool
                elif (not self._held or self._probe_spooled()) and self._drain(self.drain_budget_s,
                                                                                 len(messages) + 1):
                    try:
                        self._send(messages)
                        self._up()
                        self.stats.sent += len(messages)
                        return
                    except QueueUnavailable as exc:
                        self._down(exc)
            for m in messages:
                self._spool(m)
        finally:
            self._settle()

    def drain(self, budget_s: float | None = None, at_least: int = 1) -> bool:
        """Deliver spooled messages oldest first, for at most ``budget_s`` once ``at_least`` have gone;
        True once the spool is empty."""
        self._refresh()
        self._expire()
        try:
            if self._held and not self._probe_spooled():
                return False
            return self._drain(budget_s, at_least)
        finally:
            self._settle()

    def _probe(self, messages: list[Message], held_below: int) -> bool:
        """Offer a queue that refused every window one newer than the held entries (those below
        ``held_below``), in place of the oldest: two bad windows at the head would otherwise hold the spool
        while the queue takes the rest. Order is given up for this window only (receivers deduplicate)."""
        try:
            self.inner.probe(messages)  # type: ignore[attr-defined] - only DropRefused raises QueueRefusingAll
        except QueueUnavailable as exc:
            self._down(exc)
            return False
        self._up()
        self._held_below = held_below
        return True

    def _probe_spooled(self) -> bool:
        """The probe from the spool: the newest of its PROBE_REACH oldest entries, or after a refused probe
        the next older one, from the newest again past the oldest: the entry refused may be bad on its own,
        and offered again and again it would hold the spool as the head did (True once it is taken, or if
        there is none)."""
        reach = list(itertools.islice(self._index.entries(), PROBE_REACH))
        if not reach:
            self._held = False
            return True
        older = [e for e in reach if self._probe_refused is None or e[1] < self._probe_refused]
        slot, sequence, _size, _written = (older or reach)[-1]
        path = self._path(sequence)
        try:
            message = _read(path)
        except FileNotFoundError:
            self._index.remove(slot)
            return False  # another at the next try
        except (_Corrupt, OSError) as exc:
            self._quarantine(path, str(exc))
            self._index.remove(slot)
            return False
        if not self._probe([message], sequence):
            self._probe_refused = sequence
            return False
        self._index.remove(slot)
        _remove(path)
        self.stats.sent += 1
        self.stats.drained += 1
        return True

    def _drain(self, budget_s: float | None, at_least: int) -> bool:
        deadline = None if budget_s is None else time.monotonic() + budget_s
        for i, (slot, sequence, _size, _written) in enumerate(self._index.entries()):
            if self._held_below is not None and sequence >= self._held_below:
                self._held_offered()
            if i >= at_least and deadline is not None and time.monotonic() >= deadline:
                return False  # the rest next time: the capture loop is waiting
            path = self._path(sequence)
            try:
                message = _read(path)
            except FileNotFoundError:
                self._index.remove(slot)  # gone behind the spool's back: nothing to send
                continue
            except (_Corrupt, OSError) as exc:
                self._quarantine(path, str(exc))
                self._index.remove(slot)
                continue
            try:
                self._send([message])
            except QueueUnavailable as exc:
                self._down(exc)
                return False
            self._up()
            # delivered: out of the index even if the file stays (a restart sends it again, deduplicated)
            self._index.remove(slot)
            _remove(path)
            self.stats.sent += 1
            self.stats.drained += 1
        if self._held_below is not None:
            self._held_offered()
        return True

    def _held_offered(self) -> None:
        """Every entry held before the probe was offered: the queue's refusals are judged as usual again."""
        self._held_below = None
        self.inner.held_offered()  # type: ignore[attr-defined]

    def _send(self, messages: list[Message]) -> None:
        if self._failed_tries:  # the queue was down a moment ago: one try says whether it is back
            self.inner.send(messages)
        else:
            self._retrying(self.inner.send, messages)

    def _down(self, exc: QueueUnavailable) -> None:
        self._failed_tries += 1
        self._held = isinstance(exc, QueueRefusingAll)
        base, cap = self.outage_backoff_s
        self._retry_at = time.monotonic() + min(cap, base * 2 ** (self._failed_tries - 1))
        self._note(str(exc))
        if self._failed_tries == 1:
            log.warning("queue unreachable, spooling to %s: %s", self.directory, exc)

    def _up(self) -> None:
        if self._failed_tries:
            log.warning("queue reachable again after %d failed tries; %d batches spooled to send",
                        self._failed_tries, self._index.count)
        self._failed_tries, self._retry_at, self._held, self._probe_refused = 0, 0.0, False, None

    def _spool(self, message: Message) -> None:
        key = message.key.encode()
        size = _KEY_LEN.size + len(key) + len(message.data)
        if size > self.max_bytes or len(key) > MAX_KEY_BYTES:
            self._drop_new(size, f"message {message.key[:80]!r} of {size} bytes does not fit the spool")
            return
        for slot, sequence, old_size, _written in self._index.entries():
            if self._index.bytes + size <= self.max_bytes:
                break
            try:
                self._path(sequence).unlink()
            except FileNotFoundError:
                pass  # gone behind the spool's back: not a drop
            except OSError:
                continue
            else:
                self.stats.dropped += 1
                self.stats.dropped_bytes += old_size
            self._index.remove(slot)
        if self._index.bytes + size > self.max_bytes:  # older entries could not be removed: never pass the bound
            self._write_failed(size, f"the spool {self.directory} is full and its oldest entries cannot be removed")
            return
        sequence, self._next = self._next, self._next + 1
        path = self._path(sequence)
        tmp = path.with_suffix(".tmp")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)  # it may have been deleted meanwhile
            with open(tmp, "wb") as f:
                f.write(_KEY_LEN.pack(len(key)) + key + message.data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            _remove(tmp)
            self._write_failed(size, f"cannot write to the spool {self.directory}: {exc.strerror}")
            return
        self._index.add(sequence, size, self._clock())
        self.stats.spooled += 1
        self.stats.peak_bytes = max(self.stats.peak_bytes, self._index.bytes)
        self._sync_directory()

    def _sync_directory(self) -> None:
        """Make the rename durable: until the directory is synced, a power loss can undo it and lose an
        entry counted as spooled (0.14 ms a write here, 0.29 -> 0.43 ms median, ext4)."""
        try:
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self._note(f"cannot sync the spool directory {self.directory}: {exc.strerror}")

    def _expire(self) -> None:
        """Delete the entries written ``MAX_AGE_NS`` ago or more: the backend would refuse them."""
        written_before = self._clock() - MAX_AGE_NS / 1e9
        count = size_total = 0
        for slot, sequence, size, written in self._index.entries():
            if written > written_before:
                break  # oldest first: the rest are younger
            try:
                self._path(sequence).unlink()
            except FileNotFoundError:
                pass  # gone behind the spool's back
            except OSError:
                continue
            else:
                count, size_total = count + 1, size_total + size
            self._index.remove(slot)
        if count:
            self.stats.expired += count
            self.stats.expired_bytes += size_total
            log.warning("deleted %d spooled batches (%d bytes) written %.0f h ago or more, unsent: the backend "
                        "refuses them as replays; %d expired since the start", count, size_total,
                        MAX_AGE_NS / 3.6e12, self.stats.expired)
            self._settle()

    def _write_failed(self, size: int, why: str) -> None:
        """Drop a message the spool cannot write (disk full, read-only); say so at the first and then at
        most every WRITE_ERROR_LOG_S, not at every message of every window."""
        self.stats.write_errors += 1
        self._drop_new(size, why)
        now = time.monotonic()
        if now >= self._write_error_log_at:
            log.warning("%s: batch dropped (%d batches dropped since the start because the spool could not "
                        "take them)", why, self.stats.write_errors)
            self._write_error_log_at = now + WRITE_ERROR_LOG_S

    def _drop_new(self, size: int, why: str) -> None:
        self.stats.dropped += 1
        self.stats.dropped_bytes += size
        self._note(why)

    def _note(self, why: str) -> None:
        self.errors = (self.errors + [why])[-16:]

    def _path(self, sequence: int) -> Path:
        return self.directory / f"{sequence:020d}.spool"

    def _scan(self) -> SpoolIndex:
        """The spooled messages on disk, oldest first, with their sizes and write times. Entries that
        are not ours are quarantined on the way."""
        index = SpoolIndex()
        try:  # names only: a month of heartbeats is 300,000 of them
            listing = os.listdir(self.directory)
        except OSError:
            listing = []
        directory = str(self.directory)  # not a Path a name: pathlib interns every part, for good
        # a write cut by a crash: never an entry, and unseen by the bound (writes finish before a scan)
        partial = [name for name in listing if _PARTIAL.match(name)]
        for name in partial:
            _remove(Path(directory, name))
        if partial:
            log.warning("removed %d partial writes left in the spool %s by a crash", len(partial), directory)
        names = sorted(name for name in listing if name.endswith(".spool"))
        del listing
        for name in names:
            if not _NAME.match(name):
                self._quarantine(self.directory / name, "not a spool entry name")
                continue
            try:
                st = os.lstat(os.path.join(directory, name))
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_size < _KEY_LEN.size + 1:
                self._quarantine(self.directory / name, "not a spool entry (a directory, a link or too short)")
                continue
            index.add(int(name[:20]), st.st_size, st.st_mtime)
        last = index.last_sequence()  # new names follow every name found, never overwrite one
        self._next = max(self._next, 0 if last is None else last + 1)
        return index

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = self.directory.stat()
        except OSError:
            return None
        return st.st_dev, st.st_ino, st.st_mtime_ns

    def _refresh(self) -> None:
        """Read the directory again if something else changed it since the spool last did. (Before
        Linux 6.13's fine-grained timestamps a change within the clock tick of the spool's own goes
        unseen here; the index drops the files it names that are gone when it reaches them.)"""
        if self._signature() != self._seen:
            self._index = self._scan()
            self._settle()

    def _settle(self) -> None:
        """Counters from the index, and the directory as the spool left it."""
        self.stats.depth = self._index.count
        self.stats.depth_bytes = self._index.bytes
        self.stats.peak_bytes = max(self.stats.peak_bytes, self.stats.depth_bytes)
        self._seen = self._signature()

    def _quarantine(self, path: Path, why: str) -> None:
        """Move an unreadable entry aside (kept for a look, the newest few) and count it."""
        self.stats.quarantined += 1
        self._note(f"spool entry {path.name} quarantined: {why}")
        aside = self.directory / QUARANTINE
        try:
            aside.mkdir(exist_ok=True)
            os.replace(path, aside / f"{path.name}.{self.stats.quarantined}")
            kept = sorted(aside.iterdir(), key=lambda p: p.stat().st_mtime_ns)
            for old in kept[:-QUARANTINE_KEEP]:
                _remove(old)
        except OSError:  # cannot move it: remove it, so it is not read (and counted) again
            _remove(path)


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def _read(path: Path) -> Message:
    raw = path.read_bytes()
    if len(raw) < _KEY_LEN.size:
        raise _Corrupt("shorter than its key length")
    (n,) = _KEY_LEN.unpack_from(raw)
    if n == 0 or n > MAX_KEY_BYTES or _KEY_LEN.size + n > len(raw):
        raise _Corrupt(f"key length {n} does not fit the entry")
    try:
        key = raw[2 : 2 + n].decode()
        split_batch_key(key)
    except (UnicodeDecodeError, BatchFormatError):
        raise _Corrupt("the key is not a batch key") from None
    return Message(key, raw[2 + n :])
