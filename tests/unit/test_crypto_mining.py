"""crypto_mining's protocol evidence: a mining JSON-RPC method the sensor found in a flow's payload,
on any port (HTTP getwork on 80, a node's RPC, Stratum on a pool port), and what is not mining."""

from __future__ import annotations

import numpy as np
import pytest

from kubesonar.shared.detectors import batch_of
from kubesonar.shared.detectors.crypto_mining import CryptoMiningDetector
from kubesonar.shared.flow import ConnState, FlowRecords, Opening, address_bytes
from kubesonar.shared.mining import RPC_CODES, RPC_METHODS

S = 1_000_000_000
T0 = 1_767_225_600 * S


def _flows(rows: list[tuple[str, int, str]]) -> FlowRecords:
    """One short TCP flow per (destination, port, method) from 10.1.0.5, a second apart."""
    f = FlowRecords.empty(len(rows))
    c = f.columns
    for i, (dst, port, method) in enumerate(rows):
        c["src_addr"][i], c["dst_addr"][i] = np.void(address_bytes("10.1.0.5")), np.void(address_bytes(dst))
        c["first_ts"][i] = c["conn_start"][i] = T0 + i * S
        c["last_ts"][i] = T0 + i * S + S // 2
        c["src_port"][i], c["dst_port"][i], c["proto"][i] = 40000 + i, port, 6
        c["packets_out"][i] = c["packets_in"][i] = 6
        c["bytes_out"][i], c["bytes_in"][i] = 700, 900
        c["state"][i] = int(ConnState.CLOSED)
        c["rpc_method"][i] = method
    return f


@pytest.mark.parametrize(("port", "method"), [
    (80, "getwork"), (80, "getblocktemplate"), (8332, "submitblock"), (8545, "eth_getWork"),
    (8080, "eth_submitWork"), (443, "eth_submitLogin"), (80, "mining.subscribe"), (3333, "login"),
])
def test_a_mining_method_on_any_port_is_mining(port, method):
    (finding,) = CryptoMiningDetector().observe(batch_of(_flows([("203.0.113.40", port, method)])))
    assert finding.source["ip"] == "10.1.0.5" and finding.evidence["evidence"] == "protocol"
    assert finding.evidence["methods"] == [method] and finding.evidence["port"] == port


def test_one_alert_per_pool_whatever_the_number_of_calls():
    calls = [("203.0.113.40", 80, m) for m in ("getblocktemplate", "getwork", "getwork", "getwork")]
    (finding,) = CryptoMiningDetector().observe(batch_of(_flows(calls)))
    assert finding.evidence["methods"] == ["getblocktemplate", "getwork"]


def test_plain_http_and_node_rpc_without_a_mining_method_are_not_mining():
    assert CryptoMiningDetector().observe(batch_of(_flows([("203.0.113.40", 80, ""), ("203.0.113.41", 8545, "")]))) == []


def test_method_codes_only_ever_grow():
    """Sensors store a method's index: codes never move, new methods are appended."""
    assert RPC_METHODS[:19] == (
        "", "mining.subscribe", "mining.authorize", "mining.submit", "mining.notify", "mining.set_difficulty",
        "mining.set_target", "mining.extranonce.subscribe", "mining.configure", "login", "job", "submit",
        "keepalived", "eth_submitLogin", "eth_getWork", "eth_submitWork", "eth_submitHashrate", "getblocktemplate",
        "submitblock")
    assert RPC_CODES["getwork"] == 19


def test_a_browser_miners_websocket_proxy_is_found_by_its_name():
    """CoinHive-style mining runs Stratum inside TLS to the service's proxy: the name asked is the evidence."""
    from kubesonar.shared.dns import DnsMessages

    dns = DnsMessages.from_rows([{"ts": T0, "client": address_bytes("10.1.0.5"), "qname": "ws027.authedmine.com",
                                  "qtype": 1}])
    (finding,) = CryptoMiningDetector().observe(batch_of(FlowRecords.empty(), None, dns))
    assert finding.evidence == {"evidence": "pool_domain", "domain": "authedmine.com", "name": "ws027.authedmine.com"}


@pytest.mark.parametrize(("opening", "mining"), [
    (Opening.OTHER, True), (Opening.TLS, True), (Opening.UNKNOWN, True),  # Stratum's JSON line, stratum+ssl
    (Opening.HTTP, False), (Opening.RESPONDER_FIRST, False),  # a web server (Caldera's on 8888), SMTP, FTP
])
def test_a_held_pool_port_counts_only_when_it_opened_as_stratum_can(opening, mining):
    """Twenty minutes on 8888 outside the cluster, with no mining method seen: a pool only if the
    connection opened the way Stratum does (the miner's JSON, or TLS)."""
    f = _flows([("198.51.100.7", 8888, "")])
    f.columns["last_ts"][0] = T0 + 1200 * S
    f.columns["opening"][0] = int(opening)
    alerts = CryptoMiningDetector().observe(batch_of(f))
    assert [a.evidence["evidence"] for a in alerts] == (["pool_port"] if mining else [])
