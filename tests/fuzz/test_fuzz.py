"""Bounded structure-aware fuzzing in CI (fixed seeds, well under 60 s in all); ``bench/fuzz.py`` runs
the same campaigns for longer. The rule: any input gives a result or the project's own one-line error
(exit 0, 1 or 2 at the command line); never a traceback, a hang past 60 s, or more than
:data:`MEMORY_BOUND_MB` of memory; in process, memory in use never climbs past
``campaign.GROWTH_BOUND_MB`` over a campaign."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fuzz import capture_mutator, config_mutator
from fuzz.campaign import CAMPAIGNS

KUBESONAR = Path(sys.executable).with_name("kubesonar")
MEMORY_BOUND_MB = 1024  # a whole `kubesonar` process, interpreter and numba included
HANG_S = 60  # one command on one input, its kernels compiled: longer is a hang
# numba compiling the kernels into a cold cache (a fresh checkout, an edited kernel) before any case:
# 20 s of CPU, 49-57 s at load 5-6 on 2 cores, which took the first case past HANG_S ("no answer
# within 60 s", 1 of 4 cold runs with both cores loaded)
COMPILE_S = 600
CI_CASES = {"capture": 300, "batch": 60, "config": 300}


@pytest.mark.parametrize("target", sorted(CI_CASES))
def test_campaign_finds_nothing(target):
    report = CAMPAIGNS[target](seed=19, cases=CI_CASES[target], seconds=15)
    assert report.cases >= min(CI_CASES[target], 30)
    assert report.findings == [], "\n".join(report.findings[:10])


def _cli(args: list[str], seconds: float = HANG_S) -> subprocess.CompletedProcess:
    """Run a command; its peak memory (this child's alone, from wait4) is checked against the bound."""
    proc = subprocess.Popen([str(KUBESONAR), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = _read_all(proc, seconds)
    except BaseException:
        proc.kill()
        os.wait4(proc.pid, 0)
        raise
    _, status, usage = os.wait4(proc.pid, 0)
    peak_mb = usage.ru_maxrss / 1024
    assert peak_mb < MEMORY_BOUND_MB, f"{args}: {peak_mb:.0f} MB"
    return subprocess.CompletedProcess(args, os.waitstatus_to_exitcode(status), out, err)


def _read_all(proc: subprocess.Popen, seconds: float) -> tuple[bytes, bytes]:
    """Both pipes to the end within ``seconds``, without reaping the child (wait4 reads its usage after)."""
    import selectors

    chunks: dict[int, list[bytes]] = {proc.stdout.fileno(): [], proc.stderr.fileno(): []}
    selector = selectors.DefaultSelector()
    for pipe in (proc.stdout, proc.stderr):
        selector.register(pipe, selectors.EVENT_READ)
    deadline = time.monotonic() + seconds
    while selector.get_map():
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no answer within {seconds} s"
        for key, _ in selector.select(remaining):
            data = os.read(key.fd, 65536)
            if data:
                chunks[key.fd].append(data)
            else:
                selector.unregister(key.fileobj)
    return b"".join(chunks[proc.stdout.fileno()]), b"".join(chunks[proc.stderr.fileno()])


def _assert_rule(done: subprocess.CompletedProcess) -> None:
    err = done.stderr.decode(errors="replace")
    assert done.returncode in (0, 1, 2), err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    if done.returncode == 1:  # one error line, the last; a note on how the rest was judged may precede it
        errors = [line for line in lines if line.startswith("kubesonar: error:")]
        assert len(errors) == 1 and lines[-1] == errors[0], err
        assert all(line.startswith(("kubesonar: note:", "kubesonar: warning:")) for line in lines[:-1]), err


def _compile_kernels(tmp_path: Path, bases: list[bytes]) -> None:
    """Every kernel the cases run (both record walkers, dissection, flows, JSON lines) compiled, or
    loaded from numba's cache, before any case is timed against HANG_S."""
    unmutated = [tmp_path / "seed.pcap", tmp_path / "seed.pcapng"]
    for path, data in zip(unmutated, (bases[0], bases[2])):
        path.write_bytes(data)
    done = _cli(["flows", "--format", "jsonl", *map(str, unmutated)], COMPILE_S)
    assert done.returncode == 0, done.stderr.decode(errors="replace")


def test_the_command_line_keeps_the_rule_on_mutated_inputs(tmp_path):
    rng = random.Random(19)
    bases = capture_mutator.seeds()
    _compile_kernels(tmp_path, bases)
    for case in range(2):
        path = tmp_path / f"c{case}.cap"
        path.write_bytes(capture_mutator.mutate(rng.choice(bases), rng))
        _assert_rule(_cli(["flows", "--format", "jsonl", str(path)]))
        _assert_rule(_cli(["analyze", str(path)]))  # the core's notes beside a capture's fault too
    capture = tmp_path / "ok.pcap"
    capture.write_bytes(bases[0])
    pods = tmp_path / "pods.json"
    pods.write_bytes(config_mutator.mutate_json(config_mutator.GOOD_PODS, rng))
    _assert_rule(_cli(["analyze", "--pods", str(pods), str(capture)]))
    allow = tmp_path / "allow.yaml"
    allow.write_bytes(config_mutator.mutate_allowlist(rng))
    _assert_rule(_cli(["analyze", "--allowlist", str(allow), str(capture)]))
