"""DNS messages a sensor parsed (names, types, response codes), carried in the batch next to the flows
(schema 3), and the registered domain a name belongs to, by the Public Suffix List."""

from __future__ import annotations

from enum import IntEnum
from functools import lru_cache

from publicsuffixlist import PublicSuffixList

from kubesonar.shared.flow import Column
from kubesonar.shared.table import Table


class QType(IntEnum):
    A = 1
    NS = 2
    CNAME = 5
    NULL = 10
    PTR = 12
    MX = 15
    TXT = 16
    AAAA = 28
    SRV = 33
    HTTPS = 65
    ANY = 255
    PRIVATE = 65399  # the private-use range is 65280-65534; iodine and others pick one of them


DNS_COLUMNS: tuple[Column, ...] = (
    Column("ts", "i8", "when the message was seen, ns since the epoch"),
    Column("client", "V16", "the querying side (source of a query, destination of a response)"),
    Column("server", "V16", "the answering side"),
    Column("client_port", "u2", "the querying side's port"),
    Column("response", "u1", "1 for a response, 0 for a query"),
    Column("qname", "O", "the question's name, lower case, without the final dot"),
    Column("qtype", "u2", "the question's type (QType)"),
    Column("rcode", "u1", "response code (0 NOERROR, 3 NXDOMAIN, ...); 0 in a query"),
    Column("answers", "u2", "answer records"),
    Column("size", "u2", "DNS message bytes on the wire"),
) + tuple(Column(f"client_{name}", "O", f"the querying pod's {name}, '' if unknown")
          for name in ("namespace", "pod", "workload_kind", "workload_name"))


class DnsMessages(Table):
    NAME = "dns"
    COLUMNS = DNS_COLUMNS
    __slots__ = ()


@lru_cache(maxsize=1)
def _suffixes() -> PublicSuffixList:
    """The list the package bundles (no network), loaded on first use: ~0.1 s a function's cold start
    need not pay before DNS arrives. ICANN suffixes only, so names under a cloud's private suffixes
    (s3.amazonaws.com) group under the cloud's domain."""
    return PublicSuffixList(only_icann=True)


@lru_cache(maxsize=65_536)
def registered_domain(name: str) -> str:
    """``eu1.nanopool.org`` -> ``nanopool.org``; a name under an unknown suffix keeps its last two labels
    (``x.pirate.sea`` -> ``pirate.sea``), so a tunnel's private top domain still groups its names; a
    bare suffix or single label is its own domain."""
    return _suffixes().privatesuffix(name) or name


def is_private_type(qtype: int) -> bool:
    return 65280 <= qtype <= 65534
