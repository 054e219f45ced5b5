"""The ClientHello a QUIC client opens with, read from its Initial packets (RFC 9000 17.2.2, RFC 9001).

QUIC carries the TLS handshake in CRYPTO frames inside Initial packets, encrypted, but with keys that
anyone can derive from the Destination Connection ID in the packet's header (RFC 9001 5.2: the keys
only keep middleboxes from ossifying the format, not the content secret). So the hello of HTTP/3 and
of QUIC implants (Merlin) can be fingerprinted as a TCP one is, JA4's ``q`` for QUIC. Versions 1 and
2 (RFC 9369) are read; other versions, and packets whose authentication fails (a server's Initial,
sealed with the server's keys, or bytes that only look like QUIC), are not.

Only the client's CRYPTO stream is kept, by offset (Chromium scatters its hello over frames out of
order, and a post-quantum key share spreads it over two datagrams), until the ClientHello is whole;
then it is parsed as a TCP one. Nothing of a packet other than the hello is decrypted or kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

V1, V2 = 0x00000001, 0x6B3343CF
_SALTS = {V1: bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"),
          V2: bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9")}
_LABEL_PREFIX = {V1: "quic", V2: "quicv2"}
# an Initial's first byte, its top four bits (which header protection leaves clear): long header, fixed
# bit, and the packet type, 00 in version 1 and 01 in version 2 (RFC 9369 3.2)
INITIAL_FIRST = {V1: 0xC0, V2: 0xD0}
MIN_DATAGRAM = 1200  # a client pads the datagrams carrying its Initial packets to this many bytes (RFC 9000 14.1)
MAX_HELLO = 1 << 16  # the CRYPTO stream kept per connection: a ClientHello runs to a few kilobytes
MAX_PACKETS = 4  # Initial packets opened per datagram: a client coalesces one, with 0-RTT or Handshake ones after
_CRYPTO, _PADDING, _PING, _ACK, _ACK_ECN = 0x06, 0x00, 0x01, 0x02, 0x03


class NotAnInitial(ValueError):
    """The bytes are no client Initial packet that can be read."""


def looks_like_initial(first: int, version: int) -> bool:
    """A long header of version 1 or 2 whose type is Initial (bits the header protection leaves clear)."""
    return first & 0xF0 == INITIAL_FIRST.get(version)


def client_initial_frames(datagram: bytes) -> list[tuple[bytes, bytes]]:
    """(Destination Connection ID, decrypted frames) of each client Initial packet in the datagram
    (packets may be coalesced); stops at the first packet that is no Initial the client sealed, and
    after MAX_PACKETS (each costs a key derivation and a decryption)."""
    out, pos = [], 0
    while pos < len(datagram) and len(out) < MAX_PACKETS:
        try:
            dcid, frames, pos = _open_initial(datagram, pos)
        except NotAnInitial:
            break
        out.append((dcid, frames))
    return out


def crypto_data(frames: bytes) -> list[tuple[int, bytes]]:
    """The (offset, data) of each CRYPTO frame among an Initial packet's frames (RFC 9000 19.6)."""
    out, r = [], _Reader(frames)
    while r.pos < len(frames):
        kind = r.varint()
        if kind == _PADDING or kind == _PING:
            continue
        if kind in (_ACK, _ACK_ECN):
            r.varint(), r.varint()  # largest acknowledged, delay
            ranges = r.varint()
            r.varint()  # the first range
            for _ in range(2 * ranges):
                r.varint()
            if kind == _ACK_ECN:
                r.varint(), r.varint(), r.varint()
            continue
        if kind == _CRYPTO:
            offset, size = r.varint(), r.varint()
            out.append((offset, r.take(size)))
            continue
        break  # CONNECTION_CLOSE or a frame an Initial may not carry: nothing more to read
    return out


def _open_initial(d: bytes, start: int) -> tuple[bytes, bytes, int]:
    from cryptography.exceptions import InvalidTag  # here: most captures hold no QUIC

    r = _Reader(d, start)
    first = r.u8()
    version = int.from_bytes(r.take(4), "big")
    if not looks_like_initial(first, version):
        raise NotAnInitial("not a version 1 or 2 Initial packet")
    dcid = r.take(r.u8())
    if len(dcid) > 20 or len(r.take(r.u8())) > 20:  # connection IDs are at most 20 bytes (RFC 9000 17.2)
        raise NotAnInitial("connection ID over 20 bytes")
    r.take(r.varint())  # token
    length = r.varint()
    pn_at = r.pos
    end = pn_at + length
    if end > len(d) or length < 20:
        raise NotAnInitial("the packet runs past the datagram")
    key, iv, hp = _client_keys(version, dcid)
    mask = _aes_ecb(hp, d[pn_at + 4 : pn_at + 20])
    first ^= mask[0] & 0x0F
    pn_len = (first & 0x03) + 1
    pn = bytes(b ^ m for b, m in zip(d[pn_at : pn_at + pn_len], mask[1:], strict=False))
    header = bytes((first,)) + d[start + 1 : pn_at] + pn
    nonce = (int.from_bytes(iv, "big") ^ int.from_bytes(pn, "big")).to_bytes(12, "big")
    try:
        frames = _aes_gcm(key).decrypt(nonce, d[pn_at + pn_len : end], header)
    except InvalidTag:
        raise NotAnInitial("authentication failed: not sealed with the client's Initial keys") from None
    return dcid, frames, end


_KEYS: dict[tuple[int, bytes], tuple[bytes, bytes, bytes]] = {}  # the last connections' keys: a hello spans packets


def _client_keys(version: int, dcid: bytes) -> tuple[bytes, bytes, bytes]:
    found = _KEYS.get((version, dcid))
    if found is None:
        import hmac

        initial = hmac.digest(_SALTS[version], dcid, "sha256")  # HKDF-Extract (RFC 5869 2.2)
        secret = _expand_label(initial, "client in", 32)
        prefix = _LABEL_PREFIX[version]
        found = (_expand_label(secret, f"{prefix} key", 16), _expand_label(secret, f"{prefix} iv", 12),
                 _expand_label(secret, f"{prefix} hp", 16))
        if len(_KEYS) >= 256:
            _KEYS.clear()
        _KEYS[(version, dcid)] = found
    return found


def _expand_label(secret: bytes, label: str, length: int) -> bytes:
    """TLS 1.3's HKDF-Expand-Label (RFC 8446 7.1) with an empty context; one block suffices here."""
    import hmac

    full = b"tls13 " + label.encode()
    info = length.to_bytes(2, "big") + bytes((len(full),)) + full + b"\x00"
    return hmac.digest(secret, info + b"\x01", "sha256")[:length]


def _aes_ecb(key: bytes, block: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    if len(block) != 16:
        raise NotAnInitial("too short for the header protection sample")
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305 (RFC 9001 5.4.3 asks for it)
    return encryptor.update(block) + encryptor.finalize()


def _aes_gcm(key: bytes):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0):
        self.data, self.pos = data, pos

    def take(self, size: int) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise NotAnInitial(f"a field of {size} bytes runs past the data at {self.pos}")
        out = self.data[self.pos : self.pos + size]
        self.pos += size
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def varint(self) -> int:
        """RFC 9000 16: the two high bits of the first byte give the length, 1 to 8 bytes."""
        first = self.u8()
        size = 1 << (first >> 6)
        return int.from_bytes(bytes((first & 0x3F,)) + self.take(size - 1), "big")


@dataclass
class _Stream:
    data: bytearray  # the stream from offset 0, as far as it is contiguous
    parts: dict[int, bytes]  # frames past a gap, waiting for it to fill (bounded)
    started_ns: int


MAX_PARTS = 64  # frames held past a gap, per stream: Chromium scatters a hello over about a dozen


@dataclass
class QuicHellos:
    """The CRYPTO streams of QUIC connections whose ClientHello is not whole yet, per client side and
    Destination Connection ID; bounded in number (the oldest gives way), in bytes and frames each, and
    in time. A connection whose hello was read is remembered, so its retransmitted Initials (a lost
    server answer makes the client send them again) are not read twice."""

    max_pending: int = 512
    timeout_s: float = 10.0
    abandoned: int = 0
    repeated: int = 0  # Initials of a connection whose hello was already read
    _pending: dict[bytes, _Stream] = field(default_factory=dict)
    _read: dict[bytes, None] = field(default_factory=dict)  # recent connections whose hello was read

    def add(self, key: bytes, ts_ns: int, dcid: bytes, parts: list[tuple[int, bytes]]) -> bytes | None:
        """Add a packet's CRYPTO data; the ClientHello handshake message once it is whole, else None."""
        key += dcid
        if key in self._read:
            self.repeated += 1
            return None
        stream = self._pending.get(key)
        if stream is not None and abs(ts_ns - stream.started_ns) > self.timeout_s * 1e9:
            del self._pending[key]
            self.abandoned += 1
            stream = None
        if stream is None:
            if not parts:  # an Initial with no CRYPTO frame (an ACK alone) begins nothing
                return None
            self._expire(ts_ns)
            if len(self._pending) >= self.max_pending:  # the oldest gives way
                del self._pending[next(iter(self._pending))]
                self.abandoned += 1
            stream = self._pending[key] = _Stream(bytearray(), {}, ts_ns)
        for offset, data in parts:
            _place(stream, offset, data)
        data = stream.data
        if len(data) < 4:
            return None
        need = 4 + int.from_bytes(data[1:4], "big")
        if data[0] != 1 or need > MAX_HELLO:  # the stream must open with a ClientHello of bounded size
            del self._pending[key]
            self.abandoned += 1
            return None
        if len(data) < need:
            return None
        del self._pending[key]
        if len(self._read) >= self.max_pending:
            del self._read[next(iter(self._read))]
        self._read[key] = None
        return bytes(data[:need])

    def abandon_all(self) -> None:
        self.abandoned += len(self._pending)
        self._pending.clear()

    def _expire(self, now_ns: int) -> None:
        """Streams begun more than ``timeout_s`` ago, oldest first (the dict keeps the order they began)."""
        while self._pending:
            key, stream = next(iter(self._pending.items()))
            if abs(now_ns - stream.started_ns) <= self.timeout_s * 1e9:
                break
            del self._pending[key]
            self.abandoned += 1

    def __len__(self) -> int:
        return len(self._pending)


def _place(stream: _Stream, offset: int, data: bytes) -> None:
    """Put a CRYPTO frame's bytes where they belong: onto the contiguous end, or aside past a gap
    (bounded: bytes past MAX_HELLO and frames past MAX_PARTS are let go; the hello then never ends)."""
    if offset + len(data) > MAX_HELLO:
        return
    if offset > len(stream.data):
        if len(stream.parts) < MAX_PARTS:
            stream.parts.setdefault(offset, data)
        return
    stream.data += data[len(stream.data) - offset :]
    while stream.parts:  # frames held past the gap that now join
        joined = [k for k in stream.parts if k <= len(stream.data)]
        if not joined:
            break
        for k in sorted(joined):
            part = stream.parts.pop(k)
            stream.data += part[len(stream.data) - k :]
