"""A TLS ClientHello, read from the first bytes of a TCP payload (or a QUIC client's CRYPTO stream:
sensor/quic_initial.py), into the strings that name the client: JA3 (Salesforce), JA4 (FoxIO), the
server name and the ALPN list.

Only these strings leave the node. A ClientHello cut by the snap length, or spread over several TCP
segments, is not fingerprinted: a hash of part of the message would name a client that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass

HANDSHAKE, CLIENT_HELLO = 0x16, 0x01
_EXT_SNI, _EXT_GROUPS, _EXT_POINT_FORMATS, _EXT_SIGALGS, _EXT_ALPN, _EXT_VERSIONS = 0, 10, 11, 13, 16, 43
_JA4_VERSIONS = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3", 0x0002: "s2"}
_EMPTY_HASH = "000000000000"


def is_grease(value: int) -> bool:
    """RFC 8701 GREASE values (0x0a0a, 0x1a1a, ... 0xfafa), which both fingerprints leave out."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


@dataclass(frozen=True)
class ClientHello:
    version: int  # legacy_version of the message
    ciphers: tuple[int, ...]
    extensions: tuple[int, ...]  # in the order sent
    groups: tuple[int, ...]
    point_formats: tuple[int, ...]
    signature_algorithms: tuple[int, ...]
    supported_versions: tuple[int, ...]
    server_name: str
    alpn: tuple[bytes, ...]

    def ja3_string(self) -> str:
        def joined(values: tuple[int, ...]) -> str:
            return "-".join(str(v) for v in values if not is_grease(v))

        return ",".join((str(self.version), joined(self.ciphers), joined(self.extensions), joined(self.groups),
                         "-".join(str(v) for v in self.point_formats)))

    def ja3(self) -> str:
        import hashlib  # here, as in _hash12: loading OpenSSL cost every start 2-3 ms, most captures hold no hello

        return hashlib.md5(self.ja3_string().encode(), usedforsecurity=False).hexdigest()

    def ja4(self, transport: str = "t") -> str:
        """``transport``: ``t`` for TLS over TCP, ``q`` for QUIC."""
        ciphers = [c for c in self.ciphers if not is_grease(c)]
        extensions = [e for e in self.extensions if not is_grease(e)]
        offered = [v for v in self.supported_versions if not is_grease(v)]
        version = _JA4_VERSIONS.get(max(offered) if offered else self.version, "00")
        sni = "d" if _EXT_SNI in extensions else "i"
        counts = f"{min(len(ciphers), 99):02d}{min(len(extensions), 99):02d}"
        head = f"{transport}{version}{sni}{counts}{_alpn_chars(self.alpn)}"
        cipher_text = ",".join(f"{c:04x}" for c in sorted(ciphers))
        ext_text = ",".join(f"{e:04x}" for e in sorted(e for e in extensions if e not in (_EXT_SNI, _EXT_ALPN)))
        if self.signature_algorithms:
            ext_text += "_" + ",".join(f"{s:04x}" for s in self.signature_algorithms)
        return f"{head}_{_hash12(cipher_text, bool(ciphers))}_{_hash12(ext_text, bool(extensions))}"

    def alpn_text(self) -> str:
        return ",".join(p.decode("ascii", "replace") for p in self.alpn)


def _hash12(text: str, present: bool) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:12] if present else _EMPTY_HASH


def _alpn_chars(alpn: tuple[bytes, ...]) -> str:
    """First and last character of the first ALPN value; its hex digits' when either is not alphanumeric."""
    if not alpn or not alpn[0]:
        return "00"
    first = alpn[0]
    ends = bytes((first[0], first[-1]))
    if ends.isalnum() and ends.isascii():
        return ends.decode()
    text = first.hex()
    return text[0] + text[-1]


class NotAClientHello(ValueError):
    """The bytes are not one whole ClientHello (cut, spread over segments, or malformed)."""


class _Reader:
    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int, end: int):
        self.data, self.pos, self.end = data, pos, end

    def take(self, size: int) -> bytes:
        if self.pos + size > self.end:
            raise NotAClientHello(f"field of {size} bytes runs past the message at {self.pos}")
        out = self.data[self.pos : self.pos + size]
        self.pos += size
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def vector(self, length_size: int) -> _Reader:
        size = int.from_bytes(self.take(length_size), "big")
        start = self.pos
        self.take(size)
        return _Reader(self.data, start, start + size)

    def u16s(self) -> tuple[int, ...]:
        body = self.take(self.end - self.pos)
        if len(body) % 2:
            raise NotAClientHello("a list of 16-bit values has an odd length")
        return tuple(int.from_bytes(body[k : k + 2], "big") for k in range(0, len(body), 2))


def parse_client_hello(payload: bytes) -> ClientHello:
    """The ClientHello that starts a TCP payload (a TLS record header, then the handshake message).

    Raises :class:`NotAClientHello` when the whole message is not in ``payload``."""
    if len(payload) < 9 or payload[0] != HANDSHAKE or payload[1] != 3 or payload[5] != CLIENT_HELLO:
        raise NotAClientHello("not a TLS handshake record holding a ClientHello")
    record_len = int.from_bytes(payload[3:5], "big")
    message_len = int.from_bytes(payload[6:9], "big")
    if message_len + 4 > record_len:  # one record must hold the message: it is not reassembled
        raise NotAClientHello("the ClientHello continues in another record")
    if 9 + message_len > len(payload):
        raise NotAClientHello("the ClientHello is cut (snap length or TCP segmentation)")
    r = _Reader(payload, 9, 9 + message_len)
    version = r.u16()
    r.take(32)  # random
    r.vector(1)  # session id
    ciphers = r.vector(2).u16s()
    r.vector(1)  # compression methods
    extensions: list[int] = []
    values: dict[int, bytes] = {}
    if r.pos < r.end:
        block = r.vector(2)
        while block.pos < block.end:
            kind = block.u16()
            body = block.vector(2)
            extensions.append(kind)
            values.setdefault(kind, body.take(body.end - body.pos))
    return ClientHello(
        version=version, ciphers=ciphers, extensions=tuple(extensions),
        groups=_list(values.get(_EXT_GROUPS), 2), point_formats=_u8_list(values.get(_EXT_POINT_FORMATS)),
        signature_algorithms=_list(values.get(_EXT_SIGALGS), 2),
        supported_versions=_u8_prefixed_u16s(values.get(_EXT_VERSIONS)),
        server_name=_server_name(values.get(_EXT_SNI)), alpn=_alpn(values.get(_EXT_ALPN)),
    )


def _list(body: bytes | None, length_size: int) -> tuple[int, ...]:
    if not body:
        return ()
    return _Reader(body, 0, len(body)).vector(length_size).u16s()


def _u8_prefixed_u16s(body: bytes | None) -> tuple[int, ...]:
    return _list(body, 1)


def _u8_list(body: bytes | None) -> tuple[int, ...]:
    if not body:
        return ()
    items = _Reader(body, 0, len(body)).vector(1)
    return tuple(items.take(items.end - items.pos))


def _server_name(body: bytes | None) -> str:
    if not body:
        return ""
    names = _Reader(body, 0, len(body)).vector(2)
    while names.pos < names.end:
        kind = names.u8()
        name = names.vector(2)
        if kind == 0:  # host_name
            return name.take(name.end - name.pos).decode("ascii", "replace").lower()
    return ""


def _alpn(body: bytes | None) -> tuple[bytes, ...]:
    if not body:
        return ()
    protocols = _Reader(body, 0, len(body)).vector(2)
    out = []
    while protocols.pos < protocols.end:
        name = protocols.vector(1)
        out.append(name.take(name.end - name.pos))
    return tuple(out)
