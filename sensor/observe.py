"""The one step the offline and the live sensor share: a packet batch into flow records and DNS messages."""

from __future__ import annotations

from dataclasses import dataclass

from kubesonar.sensor.app_layer import DnsParser, rpc_method_codes
from kubesonar.sensor.dissect import PacketFields, dissect
from kubesonar.sensor.flow_table import FlowTable
from kubesonar.sensor.packets import PacketBatch
from kubesonar.shared.dns import DnsMessages
from kubesonar.shared.flow import FlowRecords


@dataclass
class Observed:
    """What one chunk of packets gave: the flow records it completed and the DNS messages it held."""

    flows: FlowRecords
    dns: DnsMessages


def observe(batch: PacketBatch, table: FlowTable, dns: DnsParser) -> tuple[Observed, PacketFields]:
    """Dissect a packet batch, name mining RPC methods, parse DNS, and account it in the flow table:
    records complete only as flows end, so they lag the DNS messages of the same packets."""
    fields = dissect(batch)
    fields.rpc_code[:] = rpc_method_codes(batch, fields)
    messages = dns.parse(batch, fields, batch.ts)
    return Observed(table.add(fields, batch.ts), messages), fields


