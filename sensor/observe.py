"""The one step the offline and the live sensor share: a packet batch into flow records and DNS messages."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kubesonar.sensor.app_layer import DnsParser, icmp_shapes, rpc_method_codes
from kubesonar.sensor.dissect import SUPPORTED_LINKTYPES, PacketFields, dissect
from kubesonar.sensor.flow_table import FlowTable
from kubesonar.sensor.packets import PacketBatch
from kubesonar.sensor.record_walk import walk_v3_blocks
from kubesonar.shared.dns import DnsMessages
from kubesonar.shared.flow import FlowRecords


@dataclass
class Observed:
    """What one chunk of packets gave: the flow records it completed and the DNS messages it held."""

    flows: FlowRecords
    dns: DnsMessages


def observe(batch: PacketBatch, table: FlowTable, dns: DnsParser | None) -> tuple[Observed, PacketFields]:
    """Dissect a packet batch, read the few payloads that matter (mining RPC methods, TLS ClientHellos,
    HTTP requests' hosts, ICMP data, executable headers, DNS unless ``dns`` is None), and account it in the flow table:
    records complete only as flows end, so they lag the DNS messages of the same packets."""
    fields = dissect(batch)
    # the readers' columns, in the fields' types, take the blank ones' place: no copy of each a batch
    fields.rpc_code = rpc_method_codes(batch, fields)
    fields.tls_code = table.tls.hello_codes(batch, fields)
    fields.host_code = table.hosts.host_codes(batch, fields)
    fields.icmp_size, fields.icmp_odd = icmp_shapes(batch, fields)
    fields.exec_code = table.executables.codes(batch, fields)
    messages = dns.parse(batch, fields, batch.ts) if dns is not None else DnsMessages.empty()
    return Observed(table.add(fields, batch.ts), messages), fields




UNPLACED_REASONS = ("unknown_linktype", "not_ip", "truncated")


def unplaced(batch: PacketBatch, fields: PacketFields) -> dict[str, int]:
    """Packets of the batch that joined no flow, by reason: a link type the sensor does not read, a
    network layer that is not IP (ARP, LLDP, an unknown EtherType), or an IP header cut by the capture.
    The counts add up to the packets that are not IP packets, so no packet vanishes uncounted."""
    left = ~fields.is_ip
    if not left.any():  # the usual read: every packet joined a flow
        return dict.fromkeys(UNPLACED_REASONS, 0)
    unknown_link = left & ~np.isin(batch.linktype, SUPPORTED_LINKTYPES)
    truncated = left & ~unknown_link & fields.truncated
    not_ip = left & ~unknown_link & ~fields.truncated
    return {"unknown_linktype": int(unknown_link.sum()), "not_ip": int(not_ip.sum()),
            "truncated": int(truncated.sum())}


def warm_up() -> None:
    """Load (or, without the native module, compile) the per-packet kernels before capture starts,
    so the first packets of a live ring never wait for the compiler and overflow it."""
    ip_tcp = bytes.fromhex(
        "000000000002" "000000000001" "0800"  # Ethernet
        "45000028000040004006" "0000" "0a000001" "0a000002"  # IPv4, 40 bytes, TCP
        "9c400050" "00000001" "00000000" "5002ffff" "00000000"  # TCP SYN
    )
    data = np.frombuffer(ip_tcp, dtype=np.uint8).copy()
    one = np.ones(1, dtype=np.int64)
    batch = PacketBatch(data=data, offset=np.zeros(1, dtype=np.int64), caplen=one * len(data),
                        wirelen=one * len(data), ts=one, linktype=one)
    table = FlowTable()
    observe(batch, table, DnsParser())
    table.flush()
    empty = np.zeros(1, dtype=np.int64)  # the V3 ring's block walk, over one block the kernel still owns
    walk_v3_blocks(np.zeros(64, dtype=np.uint8), 64, 0, False, empty, empty, empty, empty, empty)
