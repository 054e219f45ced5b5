"""exfiltration's cold judgments (shared/detectors/exfil_channels.py): an upload in one connection, mail
and FTP out, decided while the cluster still learns, with the benign shapes that resemble them."""

from __future__ import annotations

import numpy as np

from kubesonar.shared.detectors import batch_of
from kubesonar.shared.detectors.exfil_channels import UPLOAD_MIN_BYTES, UPLOAD_RATIO
from kubesonar.shared.detectors.exfiltration import ExfiltrationDetector
from kubesonar.shared.flow import FlowRecords, address_bytes, connection_state

S = 1_000_000_000
DAY = 86400 * S
T0 = 1_767_225_600 * S
POD, OUTSIDE = "10.1.0.5", "203.0.113.80"
SYN_ACK_FIN_PSH = 0x1B


def flows(rows: list[dict]) -> FlowRecords:
    """TCP records from dicts: src, dst, port, t, out, in; optional sport, start (the connection's first
    packet, for interim records), sni, http_host, rpc, flags_in; the source is the pod 'shop/Deployment/<name>'."""
    rec = FlowRecords.empty(len(rows))
    c = rec.columns
    for i, r in enumerate(rows):
        c["src_addr"][i], c["dst_addr"][i] = np.void(address_bytes(r["src"])), np.void(address_bytes(r["dst"]))
        c["first_ts"][i], c["conn_start"][i] = r["t"], r.get("start", r["t"])
        c["last_ts"][i] = r["t"] + S
        c["src_port"][i], c["dst_port"][i], c["proto"][i] = r.get("sport", 40000 + i), r["port"], 6
        c["packets_out"][i], c["packets_in"][i] = 20, 20
        c["bytes_out"][i], c["bytes_in"][i] = r["out"], r["in"]
        c["flags_out"][i], c["flags_in"][i] = SYN_ACK_FIN_PSH, r.get("flags_in", SYN_ACK_FIN_PSH)
        c["tls_sni"][i], c["rpc_method"][i] = r.get("sni", ""), r.get("rpc", "")
        c["http_host"][i] = r.get("http_host", "")
        if r.get("name"):
            c["src_namespace"][i], c["src_workload_kind"][i], c["src_workload_name"][i] = "shop", "Deployment", r["name"]
    # as the sensor states it from the flags (a refused session is REJECTED)
    c["state"][:] = connection_state(c["proto"], c["flags_out"], c["flags_in"], c["packets_in"], np.zeros(len(rows), bool))
    return rec


def cold() -> ExfiltrationDetector:
    """A detector a day away from the end of its learning: only baseline-free judgments may alarm."""
    return ExfiltrationDetector(learning_period_ns=DAY)


def findings(d: ExfiltrationDetector, rows: list[dict]) -> list:
    return d.observe(batch_of(flows(rows)))


def upload(**over) -> dict:
    """A stealer's POST: 1.3 MB up, ACKs down, on port 80 to an address outside."""
    return {"src": POD, "dst": OUTSIDE, "port": 80, "t": T0, "out": 1_380_000, "in": 53_000, "name": "web"} | over


def test_an_upload_in_one_connection_is_reported_while_the_cluster_learns():
    (f,) = findings(cold(), [upload()])
    assert f.type == "exfiltration" and f.source["workload"] == "shop/Deployment/web"
    assert f.evidence["kind"] == "upload" and f.evidence["bytes_sent"] == 1_380_000
    assert f.destination == {"ip": OUTSIDE, "port": 80}


def test_an_upload_to_a_gate_named_in_plain_http_is_still_an_upload():
    """Stealers post to their gate's name (more/exfil's Predator): an HTTP Host is no SNI here."""
    (f,) = findings(cold(), [upload(http_host="hostss.mcdir.ru")])
    assert f.evidence["kind"] == "upload"


def test_downloads_exchanges_small_posts_and_named_tls_are_not_uploads():
    d = cold()
    benign = [upload(out=60_000, **{"in": 5_000_000}),  # a download
              upload(out=3_000_000, **{"in": 1_000_000}),  # an exchange: 3x up, not an upload's ACKs
              upload(out=UPLOAD_MIN_BYTES - 1, **{"in": 2_000}),  # a large request, under a server's limit
              upload(sni="bucket.s3.amazonaws.com", port=9000),  # object store by name
              upload(port=443),  # HTTPS whose hello the sensor missed
              upload(dst="10.2.0.9")]  # inside the cluster
    assert findings(d, benign) == []


def test_the_bar_is_both_size_and_direction():
    ratio_just_under = int(UPLOAD_MIN_BYTES * 2 / UPLOAD_RATIO) + 1
    assert findings(cold(), [upload(out=UPLOAD_MIN_BYTES * 2, **{"in": ratio_just_under})]) == []
    assert len(findings(cold(), [upload(out=UPLOAD_MIN_BYTES * 2, **{"in": ratio_just_under - 2})])) == 1


def test_an_upload_cut_into_interim_records_across_batches_is_reported_once_when_it_crosses_the_bar():
    d = cold()
    part = upload(out=600_000, **{"in": 20_000}, sport=51000, start=T0)
    assert findings(d, [part]) == []
    state = d.to_state()  # the tally survives the store
    d = cold().from_state(json_round_trip(state))
    (f,) = findings(d, [dict(part, t=T0 + 10 * S)])
    assert f.evidence["bytes_sent"] == 1_200_000
    assert findings(d, [dict(part, t=T0 + 20 * S)]) == [], "reported once per connection"


def test_mail_and_ftp_out_are_reported_at_any_size_from_a_client():
    d = cold()
    mail = {"src": POD, "dst": OUTSIDE, "port": 587, "t": T0, "out": 1_700, "in": 1_250, "name": "web"}
    ftp = {"src": POD, "dst": "198.51.100.7", "port": 21, "t": T0, "out": 640, "in": 1_200, "name": "web"}
    data = {"src": POD, "dst": "198.51.100.7", "port": 60150, "t": T0 + S, "out": 2_200, "in": 170, "name": "web"}
    got = {f.evidence["kind"]: f for f in findings(d, [mail, ftp, data])}
    assert set(got) == {"mail", "ftp"}
    assert got["ftp"].evidence["data_connections"] == {"connections": 1, "bytes_sent": 2_200, "bytes_received": 170}
    assert got["mail"].destination == {"ip": OUTSIDE, "port": 587}


def test_a_mail_relay_forwarding_mail_is_doing_its_job():
    d = cold()
    relay_answers = {"src": "10.1.0.9", "dst": POD, "port": 25, "t": T0, "out": 4_000, "in": 600}
    forwards = {"src": POD, "dst": OUTSIDE, "port": 25, "t": T0 + S, "out": 4_000, "in": 600}
    assert findings(d, [relay_answers]) == []
    assert findings(d, [forwards]) == [], "the relay's role is remembered across batches"


def test_mining_on_port_25_refused_and_unanswered_sessions_are_not_mail():
    rows = [{"src": POD, "dst": OUTSIDE, "port": 25, "t": T0, "out": 400, "in": 1_800, "rpc": "mining.authorize"},
            {"src": POD, "dst": "198.51.100.8", "port": 25, "t": T0, "out": 60, "in": 40, "flags_in": 0x14}]
    assert findings(cold(), rows) == []


def test_a_document_written_before_the_cold_judgments_reads_with_no_tallies():
    d = cold()
    findings(d, [upload(out=600_000, **{"in": 20_000})])
    old = d.to_state()
    del old["channels"]
    again = cold().from_state(old)
    assert again.reset_reason is None and again.state.channels.uploads == {}


def json_round_trip(document: dict) -> dict:
    import json

    return json.loads(json.dumps(document))


def test_a_stream_paced_by_its_producer_never_adds_up_to_an_upload():
    """A log shipper's plain TCP stream, 300 kB per 5-minute record for hours: 1 MiB only after the
    connection's first 10 minutes, so it is a stream, not a transfer."""
    d = cold()
    stream = upload(port=514, out=300_000, **{"in": 2_000}, sport=52000, start=T0, name="fluent-bit")
    assert all(findings(d, [dict(stream, t=T0 + k * 300 * S)]) == [] for k in range(24))
    assert d.state.channels.uploads == {}, "a stream's tally is forgotten"


def test_connections_past_deciding_are_forgotten():
    d = cold()
    findings(d, [upload(out=5_000, **{"in": 1_000}, sport=53000 + k) for k in range(50)])  # small POSTs
    assert len(d.state.channels.uploads) == 50
    findings(d, [upload(out=5_000, **{"in": 1_000}, t=T0 + 3600 * S)])
    assert len(d.state.channels.uploads) == 1, "an hour later only the new connection is tallied"
