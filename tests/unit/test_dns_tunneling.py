"""dns_tunneling on DNS messages built to the point: low-volume tunnels, unused record types, made-up
namespaces answered by their own server, answers that carry the data; and the look-alikes it must
leave alone (CDN-heavy browsing, mail servers' TXT lookups, browsers' random probes, internal zones)."""

from __future__ import annotations

import secrets

import pytest

from kubesonar.shared.detectors import batch_of
from kubesonar.shared.detectors.dns_tunneling import DnsTunnelingDetector
from kubesonar.shared.dns import DnsMessages, data_part, is_made_up, looks_encoded
from kubesonar.shared.flow import FlowRecords, address_bytes

S = 1_000_000_000
T0 = 1_767_225_600 * S
CLIENT, RESOLVER = "10.1.0.5", "10.96.0.10"
TXT, NULL, CNAME, MX, A, AAAA, HTTPS, SRV = 16, 10, 5, 15, 1, 28, 65, 33


def _exchange(name: str, qtype: int, t: int, *, server: str = RESOLVER, answer: int | None = 40, rcode: int = 0,
              client: str = CLIENT) -> list[dict]:
    """A query and, unless ``answer`` is None, its response ``answer`` bytes larger."""
    query = {"ts": t, "client": address_bytes(client), "server": address_bytes(server), "qname": name,
             "qtype": qtype, "size": 17 + len(name)}
    if answer is None:
        return [query]
    return [query, {**query, "ts": t + S // 100, "response": 1, "rcode": rcode, "answers": int(rcode == 0),
                    "size": query["size"] + answer}]


def _findings(rows: list[dict], detector: DnsTunnelingDetector | None = None):
    return (detector or DnsTunnelingDetector()).observe(batch_of(FlowRecords.empty(), None, DnsMessages.from_rows(rows)))


def _hex(n: int) -> str:
    return secrets.token_hex(n)


@pytest.mark.parametrize("name", [
    "147901b8d3df9cc46c59d600078b3316ce.biillpi.com",  # dnscat2, hex
    "laczi1dwmfbaywb0fm5xhkrgz0heotzq.t1.biillpi.com",  # iodine, base32
    "aaaaah7wqa.=auth.dns2tcp.hsc.fr",  # dns2tcp: '=' is in no hostname
    "0.r747clg-tk5pudkh0r12a7gj9sfpi9aackw0kgtq_dnfd7vnx5cb3l1jqqjqmh3.base64.hsc.fr",  # DNSExfiltrator
    "z0plaa0123456789\xbc\xbd\xbe.t1.biillpi.com",  # iodine's raw bytes
    "2a6003921900000000d84e2fb430070085d445c826227b9b550f19910647",  # dnscat2 with no domain
    "dnscat.2a6003921900000000d84e2fb430070085d445c826227b9b550f19910647.cb87c0b3641ad657aa41",  # ... in labels
])
def test_encoded_names(name):
    assert looks_encoded(name)


@pytest.mark.parametrize("name", [
    "blocklists.settings.services.mozilla.com", "array609-prod.do.dsp.mp.microsoft.com", "normandy-cloudfront.cdn.mozilla.net",
    "ping-edge.smartscreen.microsoft.com", "_acme-challenge.www.example.com", "google-site-verification.example.com",
    "selector1._domainkey.contoso.com", "e6858.dscx.akamaiedge.net", "d2c8v52ll5s99u.cloudfront.net",
    "xn--bcher-kva-long-label.example.com", "ec2-54-23-11-9.compute-1.amazonaws.com", "wpad.bluecatnetworks.corp",
    "www.example.com", "example.com",
])
def test_names_people_chose(name):
    assert not looks_encoded(name)


def test_made_up_names_and_their_data_part():
    assert is_made_up("116.1.gettasks") and is_made_up("x.pirate.sea") and not is_made_up("x.example.com")
    assert data_part("116.1.gettasks") == "116" and data_part("abc.def.example.com") == "abc.def"
    assert data_part("0123abcd") == "0123abcd"  # a bare made-up name is data throughout
    assert data_part("example.com") == ""


def test_a_dozen_encoded_txt_names_are_a_tunnel_and_nine_are_not():
    rows = [r for i in range(12) for r in _exchange(f"{_hex(17)}.biillpi.com", (TXT, CNAME, MX)[i % 3], T0 + i * S)]
    assert not _findings(rows[:18])  # nine names
    (finding,) = _findings(rows)
    assert finding.source["ip"] == CLIENT and finding.evidence["domain"] == "biillpi.com"
    assert finding.evidence["reasons"] == ["encoded_data_types"]


def test_encoded_names_asked_as_addresses_need_the_volume():
    """Random labels asked as A are what CDNs and cloud load balancers look like: a dozen are nothing."""
    rows = [r for i in range(12) for r in _exchange(f"{_hex(16)}.elb.example.com", A, T0 + i * S)]
    assert not _findings(rows)
    many = [r for i in range(60) for r in _exchange(f"{_hex(16)}.elb.example.com", A, T0 + i * S)]
    (finding,) = _findings(many)
    assert "volume" in finding.evidence["reasons"]


def test_null_records_are_a_tunnel_whatever_the_names_look_like():
    rows = [r for i in range(10) for r in _exchange(f"yrb{i}pe.t1.biillpi.com", NULL, T0 + i * S // 100)]
    (finding,) = _findings(rows)
    assert finding.evidence["reasons"] == ["unused_types"]
    assert not _findings(rows[:18])


def test_a_made_up_namespace_answered_by_its_own_server_is_c2():
    """Mozart: a few dot-less names polled as TXT straight at a server that answers them."""
    c2 = "93.188.155.2"
    names = ["116.1.gettasks", "116.1.0.getupdates"]
    rows = [r for i in range(20) for r in _exchange(names[i % 2], TXT, T0 + i * 2 * S, server=c2)]
    (finding,) = _findings(rows)
    assert finding.evidence["server"] == c2 and finding.evidence["reasons"] == ["made_up_namespace_answered"]
    assert finding.source["ip"] == CLIENT


def test_a_resolver_saying_nxdomain_to_made_up_names_is_no_tunnel():
    rows = [r for i in range(20) for r in _exchange("116.1.gettasks", TXT, T0 + i * 2 * S, rcode=3)]
    assert not _findings(rows)


def test_dnscat2_without_a_domain_is_grouped_by_the_server_it_asks():
    rows = [r for i in range(12) for r in _exchange(_hex(30), (TXT, CNAME, MX)[i % 3], T0 + i * S, server="192.0.2.9")]
    (finding,) = _findings(rows)
    assert finding.evidence["server"] == "192.0.2.9" and "encoded_data_types" in finding.evidence["reasons"]


def test_answers_carrying_the_data_make_a_downstream_tunnel_of_counter_names():
    rows = [r for i in range(60) for r in _exchange(f"{i}-{i * 7}.id-1605.down.tun.example.com", CNAME, T0 + i * S,
                                                    answer=180)]
    (finding,) = _findings(rows)
    assert finding.evidence["reasons"] == ["answers_carry_data"] and finding.evidence["answer_to_question_bytes"] > 3
    small = [r for i in range(60) for r in _exchange(f"{i}-{i * 7}.id-1605.down.tun.example.com", CNAME, T0 + i * S,
                                                     answer=40)]
    assert not _findings(small)


def test_cdn_heavy_browsing_mail_lookups_browser_probes_and_internal_zones_are_silent():
    rows: list[dict] = []
    t = T0
    cdn = ["r4---sn-5hne6nzk.googlevideo.com", "e6858.dscx.akamaiedge.net", "d2c8v52ll5s99u.cloudfront.net",
           "k8s-default-myapp-1a2b3c4d5e-1234567890.us-east-1.elb.amazonaws.com", "i.ytimg.com",
           "6ff8c6a9e2d34a5b9f3a6ee0f58a6bbb.us-east-1.aws.found.io", "scontent-iad3-1.xx.fbcdn.net"]
    for k in range(400):  # a browser-like client: each name again and again, CNAME chains in the answers
        for qtype in (A, AAAA, HTTPS):
            rows += _exchange(cdn[k % len(cdn)] if k % 3 else f"img{k % 40}.cdn.example.net", qtype, t, answer=220)
            t += S // 4
    for domain in (f"sender{i}.com" for i in range(200)):  # a mail server: SPF, DMARC, DKIM of its senders
        rows += _exchange(domain, TXT, t, answer=300)
        rows += _exchange(f"_dmarc.{domain}", TXT, t + 1, answer=120)
        rows += _exchange(f"{_hex(16)}._domainkey.{domain}", TXT, t + 2, answer=420)
        t += S
    for _ in range(3):  # Chrome's probes for NXDOMAIN hijacking: random single labels
        rows += _exchange(secrets.token_hex(5), A, t, rcode=3)
    for host in ("dc1", "fs1", "print", "wpad"):  # an internal zone under a made-up TLD
        rows += _exchange(f"{host}.ad.corp", A, t, answer=16)
        rows += _exchange(f"_ldap._tcp.{host}.ad.corp", SRV, t, answer=40)
    assert _findings(rows) == []


def test_a_cdns_own_zone_carries_no_ones_data_however_many_hashed_names():
    """Sixty distinct per-edge names an hour under one CDN zone (a media proxy) read as encoded, but only
    the CDN's servers answer them; the same names under a zone anyone can run are a channel."""
    edge = [f"r{i}---sn-{_hex(10)}.googlevideo.com" for i in range(60)]
    rows = [r for i, n in enumerate(edge) for r in _exchange(n, A, T0 + i * S, answer=60)]
    assert _findings(rows) == []
    own = [n.replace("googlevideo.com", "video-edge.example.com") for n in edge]
    assert _findings([r for i, n in enumerate(own) for r in _exchange(n, CNAME, T0 + i * S, answer=60)])


def test_a_tunnel_is_scored_again_when_it_comes_back_but_reported_once():
    d = DnsTunnelingDetector()
    rows = [r for i in range(12) for r in _exchange(f"{_hex(17)}.biillpi.com", TXT, T0 + i * S)]
    assert len(_findings(rows, d)) == 1
    again = [r for i in range(3) for r in _exchange(f"{_hex(17)}.biillpi.com", TXT, T0 + (20 + i) * S)]
    scores = d.score(batch_of(FlowRecords.empty(), None, DnsMessages.from_rows(again)))
    assert scores and all(s.alarm and not s.fresh for s in scores)


def test_a_version_1_document_reads_with_the_new_counters_at_zero():
    d = DnsTunnelingDetector()
    rows = [r for i in range(5) for r in _exchange(f"{_hex(17)}.biillpi.com", TXT, T0 + i * S)]
    _findings(rows, d)
    document = d.to_state()
    document["state_version"] = 1
    for _, _, window in document["windows"]:
        for key in ("encoded_names", "encoded_data_type_names", "unused_type_names", "data_type_names",
                    "question_bytes", "response_bytes", "made_up_answers"):
            del window[key]
    again = DnsTunnelingDetector().from_state(document)
    assert again.reset_reason is None
    (window,) = again.state.windows.values()
    assert window.distinct_names == 5 and window.encoded_data_type_names == 0


def test_windows_over_are_forgotten_so_a_month_of_new_domains_leaves_the_last_hours():
    """A client asking names of 50 new domains every hour for 30 days (CDN and SaaS hosts rotate): the state
    keeps the windows still open, not the 36,000 pairs the month made, and a tunnel is still seen after."""
    detector = DnsTunnelingDetector()
    for hour in range(30 * 24):
        t = T0 + hour * 3600 * S
        rows = [r for d in range(50) for r in _exchange(f"img.cdn{hour}x{d}.net", A, t + d * S)]
        _findings(rows, detector)
    assert len(detector.state.windows) <= 150, len(detector.state.windows)
    t = T0 + 30 * 24 * 3600 * S
    tunnel = [r for i in range(12) for r in _exchange(f"{_hex(i)}.t.evil.example", TXT, t + i * S)]
    assert _findings(tunnel, detector)


def test_a_window_that_ends_inside_one_batch_is_judged_before_the_next_starts():
    """A sparse capture read in one batch: a dozen encoded names, then one more two hours on. The first
    hour was a tunnel; the next window must not replace it unjudged."""
    rows = [r for i in range(12) for r in _exchange(_hex(30), (TXT, CNAME, MX)[i % 3], T0 + i * S, server="192.0.2.9")]
    later = _exchange(_hex(30), TXT, T0 + 7200 * S, server="192.0.2.9")
    (finding,) = _findings(rows + later)
    assert finding.evidence["server"] == "192.0.2.9" and "encoded_data_types" in finding.evidence["reasons"]
