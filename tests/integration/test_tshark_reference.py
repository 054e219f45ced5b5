"""Every shared capture parses, and its flows agree with tshark's TCP/UDP stream tracking."""

from __future__ import annotations

import pytest
from reference.tshark import tshark_flows

from kubesonar.sensor.offline import CaptureStats

from conftest import require_tool, shared_captures
from helpers import flows_of


def _ours(path) -> dict:
    totals: dict = {}
    for r in flows_of(path):
        if r["proto"] not in (6, 17):
            continue
        a, b = (r["src_ip"], r["src_port"]), (r["dst_ip"], r["dst_port"])
        t = totals.setdefault((r["proto"], frozenset((a, b))), {"packets": 0, "bytes": 0, "sent": {}, "ids": set()})
        t["packets"] += r["packets_out"] + r["packets_in"]
        t["bytes"] += r["bytes_out"] + r["bytes_in"]
        for end, n in ((a, r["packets_out"]), (b, r["packets_in"])):
            if n:
                t["sent"][end] = t["sent"].get(end, 0) + n
        t["ids"].add(r["flow_id"])
    return {k: (v["packets"], v["bytes"], v["sent"], len(v["ids"])) for k, v in totals.items()}


def _theirs(path) -> dict:
    totals: dict = {}
    for f in tshark_flows(str(path)).values():
        t = totals.setdefault((f.proto, f.endpoints), [0, 0, {}, 0])
        t[0] += f.packets
        t[1] += f.ip_bytes
        for end, n in f.sent.items():
            t[2][end] = t[2].get(end, 0) + n
        t[3] += 1
    return {k: tuple(v) for k, v in totals.items()}


def test_the_shared_captures_are_there():
    assert len(shared_captures()) >= 20


@pytest.mark.parametrize("path", shared_captures(), ids=lambda p: p.name)
def test_flows_agree_with_tshark(path):
    require_tool("tshark")
    stats = CaptureStats()
    ours = flows_of(path, stats=stats)
    assert stats.errors == [] and stats.packets > 0 and ours
    mine, ref = _ours(path), _theirs(path)
    assert set(mine) == set(ref), "the same TCP/UDP conversations"
    diffs = {k: (mine[k], ref[k]) for k in ref if mine[k] != ref[k]}
    assert not diffs, f"packets, IP bytes, packets per sender, connections differ: {list(diffs.items())[:3]}"
