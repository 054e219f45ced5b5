"""QUIC client Initial packets made for tests: frames sealed as RFC 9001 5 says, with the sensor's key
derivation (itself checked against tshark's decryption of real captures in tests/unit/test_quic_initial.py)."""

from __future__ import annotations


def seal_initial(dcid: bytes, frames: bytes, pn: int = 0) -> bytes:
    """A version 1 client Initial carrying ``frames``, PADDING frames added to pass 1,200 bytes."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from kubesonar.sensor.quic_initial import V1, _client_keys

    key, iv, hp = _client_keys(V1, dcid)
    frames += bytes(max(0, 1200 - len(frames)))
    length = 2 + len(frames) + 16  # a 2-byte packet number, the frames, the tag
    header = bytes((0xC1,)) + V1.to_bytes(4, "big") + bytes((len(dcid),)) + dcid + b"\x00\x00" + (
        0x4000 | length).to_bytes(2, "big") + pn.to_bytes(2, "big")
    nonce = (int.from_bytes(iv, "big") ^ pn).to_bytes(12, "big")
    sealed = AESGCM(key).encrypt(nonce, frames, header)
    mask = Cipher(algorithms.AES(hp), modes.ECB()).encryptor().update(sealed[2:18])  # noqa: S305 (RFC 9001 5.4.3)
    protected = bytearray(header)
    protected[0] ^= mask[0] & 0x0F
    protected[-2] ^= mask[1]
    protected[-1] ^= mask[2]
    return bytes(protected) + sealed


def crypto_frame(offset: int, data: bytes) -> bytes:
    """A CRYPTO frame (RFC 9000 19.6) with 4-byte variable-length integers."""
    return b"\x06" + (0x8000_0000 | offset).to_bytes(4, "big") + (0x8000_0000 | len(data)).to_bytes(4, "big") + data
