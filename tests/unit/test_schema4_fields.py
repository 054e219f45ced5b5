"""Flow schema 4 as the sensor fills it, on real captures, checked against independent references:
tshark's JA3 and its per-packet fields, FoxIO's published JA4 values, and a real iputils ping."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import ICMP, IP, Ether, Raw, wrpcap

from kubesonar.sensor import payload_kinds
from kubesonar.sensor.app_layer import DnsParser
from kubesonar.sensor.capture_file import read_capture
from kubesonar.sensor.flow_table import FlowTable, FlowTimeouts
from kubesonar.sensor.observe import observe
from kubesonar.sensor.offline import flows_from_captures
from kubesonar.sensor.tls_hello import NotAClientHello, parse_client_hello
from kubesonar.shared.flow import FlowRecords

from conftest import DATA, PCAPS, require_tool

MORE = DATA / "more"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "captures"
# captures holding TLS ClientHellos: browsers, a miner's stratum+ssl probe, RATs, Empire's TLS on port 80
TLS_CAPTURES = [
    MORE / "benign/ja4_latest.pcapng", MORE / "mining/jsiwek_bitcoin-mining.pcap", MORE / "mining/jsiwek_coinhive.pcap",
    MORE / "c2_beacon/corelight_asyncrat_cd010953.pcap", MORE / "c2_beacon/spiderlabs_ps-empire.pcap",
    MORE / "exfil/corelight_agenttesla_smtp_a30789ce.pcap", PCAPS / "benign/ndpi_chrome.pcap",
    PCAPS / "mining/nesfit_cgminer.s0.pcapng",
]


def _records(path: Path, timeouts: FlowTimeouts | None = None) -> FlowRecords:
    return FlowRecords.concat(list(flows_from_captures([path], timeouts=timeouts)))


def _tshark(path: Path, fields: list[str], display_filter: str, decode_as: tuple[str, ...] = ()) -> list[list[str]]:
    cmd = [require_tool("tshark"), "-n", "-r", str(path), "-Y", display_filter, "-T", "fields", "-E", "separator=\t"]
    for rule in decode_as:
        cmd += ["-d", rule]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [line.split("\t") for line in out.splitlines()]


def _client_key(row: dict) -> tuple[str, int, str, int]:
    return (row["src_ip"], row["src_port"], row["dst_ip"], row["dst_port"])


@pytest.mark.parametrize("path", TLS_CAPTURES, ids=lambda p: p.name)
def test_ja3_sni_and_alpn_equal_tsharks_for_every_whole_client_hello(path):
    rows = [r for r in _records(path).iter_dicts() if r["proto"] == 6]
    ports = sorted({r["dst_port"] for r in rows if r["tls_ja3"]})
    assert ports, "each of these captures holds a ClientHello"
    # tshark decodes TLS on the ports the sensor found it on (Empire speaks it on 80)
    hellos = _tshark(path, ["ip.src", "tcp.srcport", "ip.dst", "tcp.dstport", "tls.handshake.ja3",
                            "tls.handshake.extensions_server_name", "tcp.len", "tls.handshake.length",
                            "tls.handshake.extensions_alpn_str"],
                     "tls.handshake.type == 1 && !tcp.analysis.retransmission",
                     tuple(f"tcp.port=={p},tls" for p in ports))
    expected: dict[tuple, tuple[str, str, str]] = {}
    for src, sport, dst, dport, ja3, sni, seg, length, alpn in hellos:
        whole = int(seg) >= int(length.split(",")[0]) + 9  # the message and its headers in one segment
        if whole:
            expected.setdefault((src, int(sport), dst, int(dport)),
                                (ja3.split(",")[0], sni.split(",")[0].lower(), alpn))
    got = {_client_key(r): (r["tls_ja3"], r["tls_sni"], r["tls_alpn"]) for r in rows if r["tls_ja3"]}
    assert expected and got == expected


def test_ja4_equals_foxios_published_values():
    # FoxIO-LLC/ja4, rust/ja4/src/snapshots/ja4__insta@latest.pcapng.snap: the JA4 of each stream
    published = {
        52936: "t13d1516h2_8daaf6152771_e5627efa2ab1", 52937: "t12d190800_d83cc789557e_7af1ed941c26",
        52938: "t13d1516h2_8daaf6152771_9b887d9acb53", 52940: "t13d1516h2_8daaf6152771_e5627efa2ab1",
        52941: "t13d1516h2_8daaf6152771_e5627efa2ab1",
    }
    rows = _records(MORE / "benign/ja4_latest.pcapng").iter_dicts()
    got = {r["src_port"]: r["tls_ja4"] for r in rows if r["tls_ja4"]}
    assert got == published
    alpn = {r["src_port"]: r["tls_alpn"] for r in _records(MORE / "benign/ja4_latest.pcapng").iter_dicts()}
    assert alpn[52938] == "h2,http/1.1" and alpn[52937] == ""


def test_a_client_hello_cut_anywhere_is_refused_never_misread():
    path = MORE / "benign/ja4_latest.pcapng"
    payload = bytes.fromhex(_tshark(path, ["tcp.payload"], "tls.handshake.type == 1")[0][0])
    whole = parse_client_hello(payload)
    assert whole.server_name == "pdx-col.eum-appdynamics.com"
    for cut in range(len(payload)):
        with pytest.raises(NotAClientHello):
            parse_client_hello(payload[:cut])


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=600))
def test_any_bytes_after_a_hello_header_parse_or_are_refused(body):
    payload = bytes((0x16, 3, 1)) + (len(body) + 4).to_bytes(2, "big") + b"\x01" + len(body).to_bytes(3, "big") + body
    try:
        hello = parse_client_hello(payload)
    except NotAClientHello:
        return
    assert len(hello.ja4().split("_")) == 3 and len(hello.ja3()) == 32


def _tshark_burst_starts(path: Path, flow: tuple[str, int, str, int], transport: str) -> dict[str, np.ndarray]:
    """Per side, the starts (ns) of its bursts from tshark's frame times of packets with 1-300 payload
    bytes, a burst being small packets less than 1 s apart."""
    src, sport, dst, dport = flow
    rows = _tshark(path, ["frame.time_epoch", "ip.src"],
                   f"ip.addr=={src} && ip.addr=={dst} && {transport}.port=={sport} && {transport}.port=={dport} && "
                   + ("tcp.len >= 1 && tcp.len <= 300" if transport == "tcp" else "udp.length >= 9 && udp.length <= 308"))
    out = {}
    for side, sender in (("out", src), ("in", dst)):
        # whole nanoseconds from the text, as the sensor holds them (a float64 of epoch seconds loses them)
        times = np.array([int(t.replace(".", "").ljust(19, "0")[:19]) for t, s in rows if s == sender], dtype=np.int64)
        out[side] = times[np.concatenate([[True], np.diff(times) > 1_000_000_000])] if len(times) else times
    return out


def _tshark_gaps(path: Path, flow: tuple[str, int, str, int], transport: str) -> dict[str, tuple[int, float, float]]:
    """(gaps, mean us, cv) per side: gaps between the starts of bursts."""
    out = {}
    for side, starts in _tshark_burst_starts(path, flow, transport).items():
        gaps = np.diff(starts) / 1e3
        cv = gaps.std() / gaps.mean() if len(gaps) >= 2 else 0.0
        out[side] = (len(gaps), gaps.mean() if len(gaps) else 0.0, cv)
    return out


def _reference_timer(starts: np.ndarray, tolerance: float = 0.05) -> tuple[int, int, int]:
    """(period us, beats, bursts between) of the last run of the burst timer, as docs/flow-format.md
    describes it: a burst about one period (within 5%) after the last beat is a beat, one sooner is
    between, one later starts a new run whose period is the gap before it."""
    period = anchor = beats = between = 0
    for before, now in zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True):
        if period and now - anchor < period - int(period * tolerance):
            between += 1
        elif period and now - anchor <= period + int(period * tolerance):
            beats, anchor = beats + 1, now
        else:
            period, anchor, beats, between = (now - before) // 1000 * 1000, now, 0, 0
    return period // 1000, beats, between


@pytest.mark.parametrize("path, server_port, transport", [
    (MORE / "c2_beacon/corelight_strrat_4423258f.pcap", 8219, "tcp"),  # check-ins every 5 s in one session
    (MORE / "c2_beacon/corelight_asyncrat_cd010953.pcap", 4041, "tcp"),  # TLS keep-alives every 10-13 s
    (MORE / "benign/ja4_latest.pcapng", 443, "tcp"),  # browsers' short sessions: a few bursts or none
    (MORE / "c2_beacon/zeek_merlinc2_quic.pcapng", 443, "udp"),  # HTTP/3 check-ins every 15 s
])
def test_gaps_between_small_packets_equal_tsharks_frame_times(path, server_port, transport):
    proto = 6 if transport == "tcp" else 17
    rows = [r for r in _records(path).iter_dicts() if r["dst_port"] == server_port and r["proto"] == proto]
    assert rows
    for r in rows:
        reference = _tshark_gaps(path, _client_key(r), transport)
        for side in ("out", "in"):
            gaps, mean_us, cv = reference[side]
            assert r[f"gaps_{side}"] == gaps
            assert abs(r[f"gap_mean_us_{side}"] - mean_us) <= 1  # rounded to the microsecond
            assert abs(r[f"gap_cv_milli_{side}"] - cv * 1000) <= 1


@pytest.mark.parametrize("path, server_port, transport", [
    (MORE / "c2_beacon/corelight_asyncrat_cd010953.pcap", 4041, "tcp"),  # keep-alives through commands
    (MORE / "c2_beacon/corelight_strrat_4423258f.pcap", 8219, "tcp"),
    (MORE / "c2_beacon/zeek_merlinc2_quic.pcapng", 443, "udp"),
    (MORE / "benign/ja4_latest.pcapng", 443, "tcp"),
    (PCAPS / "c2_beacon/chrissanders_ratinfected.pcapng", 4433, "tcp"),
])
def test_the_burst_timer_equals_one_followed_over_tsharks_frame_times(path, server_port, transport):
    proto = 6 if transport == "tcp" else 17
    rows = [r for r in _records(path).iter_dicts() if r["dst_port"] == server_port and r["proto"] == proto]
    assert rows
    for r in rows:
        for side, starts in _tshark_burst_starts(path, _client_key(r), transport).items():
            period_us, beats, between = _reference_timer(starts)
            assert (r[f"beat_period_us_{side}"], r[f"beats_{side}"], r[f"beat_between_{side}"]) == (
                period_us, beats, between)
    if "asyncrat" in path.name:  # the figures the rule reads: a 13.53 s keep-alive, 13 beats, 6 bursts between
        (rat,) = rows
        assert (round(rat["beat_period_us_out"] / 1e6, 2), rat["beats_out"], rat["beat_between_out"]) == (13.53, 13, 6)


def _kernel_timer(starts: list[int]) -> tuple[int, int, int]:
    from kubesonar.sensor import flow_layout as layout
    from kubesonar.sensor.flow_kernel import _track_beat

    num = np.zeros((1, layout.N_COLS), dtype=np.int64)
    for before, now in zip(starts[:-1], starts[1:], strict=False):
        _track_beat(0, 0, now, now - before, num)
    word = int(num[0, layout.BEAT_A])
    return word >> 32, (word >> 16) & 0xFFFF, word & 0xFFFF


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1_000_000_001, 120_000_000_000), min_size=2, max_size=60),
       st.integers(1_000_000_000, 30_000_000_000), st.floats(0.0, 0.2))
def test_the_kernels_burst_timer_follows_the_documented_rule(gaps, period, share_on_beat):
    """Any sequence of burst starts, part of them on a clock: the compiled timer equals the rule as
    docs/flow-format.md states it."""
    starts, t = [0], 0
    for k, gap in enumerate(gaps):  # a share of the bursts come one period apart
        t += period if k % 5 < share_on_beat * 25 else gap
        starts.append(t)
    assert _kernel_timer(starts) == _reference_timer(np.array(starts))


@given(st.lists(st.integers(-10**12, 10**12), min_size=2, max_size=40))
def test_time_running_backwards_never_makes_a_negative_or_huge_period(times):
    period_us, beats, between = _kernel_timer(times)
    assert 0 <= period_us < 1 << 31 and beats + between <= len(times)


def test_interim_records_carry_the_connections_figures_so_far():
    path = MORE / "c2_beacon/corelight_asyncrat_cd010953.pcap"
    whole = {r["flow_id"]: r for r in _records(path).iter_dicts() if r["dst_port"] == 4041}
    sliced = [r for r in _records(path, FlowTimeouts(active_s=30.0)).iter_dicts() if r["dst_port"] == 4041]
    for flow_id, final in whole.items():
        parts = [r for r in sliced if r["flow_id"] == flow_id]
        assert len(parts) > 3 and parts[0]["end_reason"] == "active_timeout"
        assert [p["gaps_out"] for p in parts] == sorted(p["gaps_out"] for p in parts)  # cumulative
        last = parts[-1]
        for column in ("gaps_out", "gaps_in", "gap_mean_us_out", "gap_cv_milli_in", "tls_ja3", "tls_sni"):
            assert last[column] == final[column]
        assert {p["tls_ja4"] for p in parts} == {final["tls_ja4"]} != {""}  # every slice names the client


def test_real_iputils_pings_are_ping_patterns():
    """tests/fixtures/captures/iputils_ping.pcap: iputils ping and ping -6 between two network
    namespaces (default, -s 200, -p c0ffee), with the kernel's neighbour discovery around them."""
    path = FIXTURES / "iputils_ping.pcap"
    rows = list(_records(path).iter_dicts())
    echoes = [r for r in rows if r["icmp_type"] in (8, 128)]
    assert len(echoes) == 4 and all(r["icmp_sizes"] == 1 for r in echoes)
    assert sum(r["icmp_odd"] for r in rows) == 0  # neither pings nor discovery
    sizes = _tshark(path, ["icmp.ident", "data.len"], "icmp.type == 8")
    assert {int(size) + 8 for _, size in sizes} == {56, 200}  # tshark shows 8 bytes as the timestamp


def test_pingback_commands_in_echo_data_are_odd():
    path = MORE / "exfil/spiderlabs_pingback_icmp.pcapng"
    rows = [r for r in _records(path).iter_dicts() if r["proto"] == 1]
    echo = _tshark(path, ["data.len"], "icmp.type == 8 || icmp.type == 0")
    assert sum(r["icmp_odd"] for r in rows) == len(echo) == 12
    distinct = {int(n) for (n,) in echo}
    assert max(r["icmp_sizes"] for r in rows) <= len(distinct)


def test_windows_ping_zero_fill_and_payloads_tell_apart(tmp_path):
    rng = np.random.default_rng(7)
    windows = b"abcdefghijklmnopqrstuvwabcdefghi"
    cases = {  # echo identifier: (data, odd)
        1: (windows, False), 2: (bytes(48), False), 3: (bytes(range(64)), False),
        4: (rng.integers(0, 256, 64, dtype=np.uint8).tobytes(), True),  # an encrypted tunnel's payload
        5: (b"GET /cmd HTTP/1.1\r\nHost: c2\r\n\r\n", True),
    }
    packets = []
    for ident, (data, _) in cases.items():
        for seq in range(3):
            packets.append(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=8, id=ident, seq=seq) / Raw(data))
    packets.append(Ether() / IP(src="10.0.0.1", dst="10.0.0.3") / ICMP(type=47) / Raw(b"x" * 40))  # no echo
    for k, p in enumerate(packets):
        p.time = 1.7e9 + k
    wrpcap(str(tmp_path / "icmp.pcap"), packets)
    rows = list(_records(tmp_path / "icmp.pcap").iter_dicts())
    odd = {r["src_port"]: r["icmp_odd"] for r in rows if r["icmp_type"] == 8}
    assert odd == {ident: 3 * int(is_odd) for ident, (_, is_odd) in cases.items()}
    assert [r["icmp_odd"] for r in rows if r["icmp_type"] == 47] == [1]


def test_icmp_sizes_counts_distinct_data_sizes(tmp_path):
    packets = [Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=8, id=9, seq=k) / Raw(bytes(size))
               for k, size in enumerate([0, 8, 8, 56, 100, 56, 1000])]
    for k, p in enumerate(packets):
        p.time = 1.7e9 + k
    wrpcap(str(tmp_path / "sizes.pcap"), packets)
    (row,) = list(_records(tmp_path / "sizes.pcap").iter_dicts())
    assert row["icmp_sizes"] == 5


def test_mining_json_rpc_in_http_bodies_is_named_as_tshark_reads_it():
    path = MORE / "mining/jsiwek_bitcoin-mining.pcap"
    bodies = _tshark(path, ["tcp.srcport", "http.file_data"], "http.request.method == \"POST\"")
    import json

    expected = {(int(port), json.loads(body.replace("\\n", ""))["method"]) for port, body in bodies}
    got = {(r["src_port"], r["rpc_method"]) for r in _records(path).iter_dicts() if r["rpc_method"]}
    assert expected and {m for _, m in expected} == {"getblocktemplate", "getwork"}
    assert expected <= got


def test_forgetting_ended_flows_clients_changes_no_record():
    """The fingerprint and HTTP host tables are pruned to the open flows' entries; pruning after every
    batch must give the same records as never pruning (codes of open flows are renumbered, not lost)."""
    path = MORE / "mining/jsiwek_coinhive.pcap"  # 21 ClientHellos and 10 plain-HTTP requests among many flows

    def run(prune_at: int) -> FlowRecords:
        table, parts = FlowTable(), []
        table.tls_prune_at = prune_at
        for batch in read_capture(path):
            parts.append(observe(batch, table, DnsParser())[0].flows)
            assert prune_at or len(table.tls) <= max(prune_at, 2 * len(table))
            assert prune_at or len(table.hosts) <= max(prune_at, 2 * len(table))
        return FlowRecords.concat([*parts, table.flush()])

    kept, pruned = run(1 << 30), run(0)
    assert pruned.equals(kept) and (kept["tls_ja3"] != "").sum() >= 10 and (kept["http_host"] != "").sum() >= 5


def _frames(payloads: list[tuple[int, int, bytes]]) -> list[bytes]:
    """Ethernet/IPv4 frames: (protocol, ICMP type or 0, L4 bytes after the ports/ICMP header)."""
    frames = []
    for proto, icmp_type, body in payloads:
        if proto == 1:
            l4 = bytes((icmp_type, 0, 0, 0, 0, 7, 0, 1)) + body
        else:  # TCP, 20-byte header, PSH+ACK
            l4 = (40000).to_bytes(2, "big") + (443).to_bytes(2, "big") + bytes(8) + b"\x50\x18\xff\xff" + bytes(4) + body
        ip = b"\x45\x00" + (20 + len(l4)).to_bytes(2, "big") + bytes(4) + bytes((64, proto)) + bytes(2)
        ip += bytes((10, 0, 0, 1, 10, 0, 0, 2))
        frames.append(bytes(12) + b"\x08\x00" + ip + l4)
    return frames


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 6]), st.integers(0, 255), st.binary(max_size=400)), min_size=1,
                max_size=12),
       st.integers(0, 255))
def test_hostile_payloads_in_hellos_and_icmp_are_counted_never_fatal(packets, snap_cut):
    """Random ICMP data and TLS-looking TCP payloads, cut anywhere by the snap length, through the real
    observe path: every candidate ClientHello is parsed or counted, and every count stays in range."""
    from kubesonar.sensor.packets import PacketBatch

    packets = [(p, t, (b"\x16\x03\x01" + body[3:5] + b"\x01" + body[5:]) if p == 6 else body)
               for p, t, body in packets]
    frames = _frames(packets)
    data = np.frombuffer(b"".join(frames), dtype=np.uint8).copy()
    lengths = np.array([len(f) for f in frames], dtype=np.int64)
    offset = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    caplen = np.minimum(lengths, 54 + snap_cut)
    batch = PacketBatch(data=data, offset=offset, caplen=caplen, wirelen=lengths,
                        ts=np.arange(len(frames), dtype=np.int64) * 1_000_000_000 + 1_700_000_000 * 10**9,
                        linktype=np.ones(len(frames), dtype=np.int64))
    table = FlowTable()
    observed, fields = observe(batch, table, DnsParser())
    records = FlowRecords.concat([observed.flows, table.flush()])
    hellos = int((fields.payload_kind == payload_kinds.TLS_CLIENT_HELLO).sum())
    segments = table.tls.segments  # hellos still awaiting segments, and first segments seen again
    assert table.tls.parsed + table.tls.unreadable + len(segments) + segments.repeated == hellos
    assert records["icmp_odd"].sum() <= sum(1 for p, _, _ in packets if p == 1)
    assert (records["icmp_sizes"] <= 127).all()


def test_a_beacons_period_inside_one_session_is_its_gap_mean():
    """Merlin's agent checks in every 15 s over one QUIC flow (labels.csv); each check-in is a burst
    of datagrams, so the gaps between bursts are the period and vary little."""
    rows = [r for r in _records(MORE / "c2_beacon/zeek_merlinc2_quic.pcapng").iter_dicts() if r["dst_port"] == 443]
    (flow,) = [r for r in rows if r["dst_ip"] == "24.199.110.233"]
    assert flow["gaps_out"] >= 10  # 184 s of 15 s check-ins
    assert abs(flow["gap_mean_us_out"] / 1e6 - 15.0) < 1.5  # the labelled period, to within 10%
