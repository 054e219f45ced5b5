"""DNS messages a sensor parsed (names, types, response codes), carried in the batch next to the flows
(schema 3); the registered domain a name belongs to, by the Public Suffix List; and the shape of a
name's labels that tells data encoded into it from a name people chose."""

from __future__ import annotations

import re
from enum import IntEnum
from functools import lru_cache
from typing import TYPE_CHECKING

from kubesonar.shared.flow import Column
from kubesonar.shared.table import Table

if TYPE_CHECKING:
    from publicsuffixlist import PublicSuffixList


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


# Types whose answers carry free-form data or a name of the server's choosing: a tunnel's downstream.
DATA_TYPES = frozenset({int(QType.CNAME), int(QType.NULL), int(QType.MX), int(QType.TXT), int(QType.ANY)})
# Types no stub resolver or application lookup asks: NULL (RFC 1035's experimental record) and the
# private-use range.
UNUSED_TYPES = frozenset({int(QType.NULL)})


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
    from publicsuffixlist import PublicSuffixList  # here: its import cost every start of the CLI 1-2 ms

    return PublicSuffixList(only_icann=True)


@lru_cache(maxsize=65_536)
def registered_domain(name: str) -> str:
    """``eu1.nanopool.org`` -> ``nanopool.org``; a name under an unknown suffix keeps its last two labels
    (``x.pirate.sea`` -> ``pirate.sea``), so a tunnel's private top domain still groups its names; a
    bare suffix or single label is its own domain."""
    return _suffixes().privatesuffix(name) or name


def is_private_type(qtype: int) -> bool:
    return 65280 <= qtype <= 65534


def is_data_type(qtype: int) -> bool:
    return qtype in DATA_TYPES or is_private_type(qtype)


def is_unused_type(qtype: int) -> bool:
    return qtype in UNUSED_TYPES or is_private_type(qtype)


@lru_cache(maxsize=65_536)
def is_made_up(name: str) -> bool:
    """The name's top-level domain is not in the root zone (``116.1.gettasks``, ``x.pirate.sea``, a bare
    hex label): no public resolver can answer it, only a server that makes up its own namespace."""
    return _suffixes().publicsuffix(name, accept_unknown=False) is None


def data_part(name: str) -> str:
    """The part of a name its owner's server is free to fill: the labels under the registered domain
    (under a made-up top-level domain, its last two labels stand for one, as in ``registered_domain``);
    a made-up name of one or two labels (dnscat2's bare hex) is data throughout."""
    domain = registered_domain(name)
    if name != domain and name.endswith(domain):
        return name[: -len(domain)].rstrip(".")
    return name if is_made_up(name) else ""


_HOSTNAME_LABEL = re.compile(r"[a-z0-9_-]*")  # what names people choose are made of (RFC 952/1123, and _srv)
ENCODED_LABEL_CHARS = 16  # a label this long that reads as random: a hash, an id or encoded data


def looks_encoded(name: str) -> bool:
    """Some label of the name's data part (of the whole name, under a made-up top-level domain) is
    encoded data, not a chosen name: it holds characters no hostname has (base64 padding and '+' '/',
    iodine's raw bytes), or it is 16 characters or more and reads as random: letters and digits
    alternate (a random string over an alphabet of a fraction p of digits alternates at 2p(1-p), 0.47
    for hex, 0.30 for base32, where words and version numbers alternate at well under 0.2), or too few
    of its letters are vowels to be words (a random letter is a vowel 5 times in 26, 0.19; words in
    names hold 0.3 to 0.4)."""
    # a made-up name's tail may be data too (dnscat2 without a domain splits its hex over labels)
    for label in (name if is_made_up(name) else data_part(name)).split("."):
        if not _HOSTNAME_LABEL.fullmatch(label):
            return True
        if len(label) < ENCODED_LABEL_CHARS or label.startswith("xn--"):  # punycode reads as random too
            continue
        if _alternation(label) >= 0.2 or _vowel_share(label) < 0.25:
            return True
    return False


def _alternation(label: str) -> float:
    """How often the letters and digits of a label switch between the two classes, per character."""
    digits = [c.isdigit() for c in label if c.isalnum()]
    return sum(a != b for a, b in zip(digits, digits[1:], strict=False)) / (len(digits) - 1) if len(digits) > 1 else 0.0


def _vowel_share(label: str) -> float:
    letters = [c for c in label if c.isalpha()]
    return sum(c in "aeiou" for c in letters) / len(letters) if letters else 1.0
