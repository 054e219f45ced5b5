"""The host an HTTP/1.x request names in its Host header (RFC 9110 7.2), read from a request's first
captured bytes: the one string of a plain-HTTP request that leaves the node (flow schema 5's
``http_host``), as the ClientHello's server name does for TLS."""

from __future__ import annotations

import re

MAX_HOST = 253  # a DNS name's longest text form (RFC 1035 3.1); longer is not a host
_HEADERS_END = b"\r\n\r\n"
# a header line "Host:" in any case, optional whitespace around the value (RFC 9110 5.5, 5.6.3)
_HOST_LINE = re.compile(rb"\r\nhost[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r\n", re.IGNORECASE)
# what a host may be written with: a registered name or IPv4 address, or an IPv6 literal in brackets
_NAME = re.compile(r"[a-z0-9_.-]+|\[[0-9a-f:.]+\]")
_PORT = re.compile(r":[0-9]{1,5}$")


def request_host(payload: bytes) -> str:
    """The Host header's host of the request ``payload`` starts, lower case, its port stripped; '' when
    the captured bytes hold no whole Host line in the headers, or its value is not a host."""
    headers, ended, _ = payload.partition(_HEADERS_END)
    match = _HOST_LINE.search(headers + b"\r\n" if ended else headers)  # a cut line is no host
    if not match:
        return ""
    try:
        host = match.group(1).decode("ascii").lower()
    except UnicodeDecodeError:
        return ""
    host = _PORT.sub("", host)
    if len(host) > MAX_HOST or not _NAME.fullmatch(host):
        return ""
    return host
