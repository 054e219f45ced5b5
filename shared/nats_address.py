"""How both sides read a ``nats://`` URL: the server, the subject or bucket, and how to authenticate.

``nats://[USER:PASSWORD@|TOKEN@]HOST[:PORT]/NAME[?creds=FILE&nkey=FILE&ca=FILE&cert=FILE&key=FILE&tls=true&replicas=N]``.
Each query option falls back to an environment variable, so a Secret mounted as files configures every
process alike: KUBESONAR_NATS_CREDS (a .creds file: JWT and NKey seed), KUBESONAR_NATS_NKEY (an NKey
seed file), KUBESONAR_NATS_CA, KUBESONAR_NATS_CERT, KUBESONAR_NATS_KEY (TLS, client certificate for
mutual TLS), KUBESONAR_NATS_TLS=true (TLS with the system's roots), KUBESONAR_NATS_REPLICAS (copies of
the streams and buckets a backend creates; 3 on a 3-server cluster). Standard library only: the SDK is
imported by the adapters that connect.
"""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlparse

from kubesonar.shared.errors import ConfigError
from kubesonar.shared.url_credentials import without_credentials

_OPTIONS = ("creds", "nkey", "ca", "cert", "key", "tls", "replicas")
_NAME = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


@dataclass(frozen=True)
class NatsAddress:
    server: str  # nats://[credentials@]host:port, as the client takes it
    name: str  # the subject (a queue) or the bucket (a store); may be empty where none is needed
    creds: str | None = None
    nkey: str | None = None
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    tls: bool = False
    replicas: int = 1  # copies of the streams and buckets this process creates (3 in a 3-server cluster)

    @property
    def shown(self) -> str:
        """The server as logs and errors name it: without credentials."""
        return without_credentials(self.server)

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` (the server list, TLS context, credentials)."""
        options: dict[str, Any] = {"servers": [self.server]}
        if self.tls or self.ca or self.cert:
            context = ssl.create_default_context(cafile=self.ca)
            if self.cert:
                context.load_cert_chain(self.cert, self.key)
            options["tls"] = context
        if self.creds:
            options["user_credentials"] = self.creds
        if self.nkey:
            options["nkeys_seed"] = self.nkey
        return options


def parse_nats_url(url: str, what: str = "subject") -> NatsAddress:
    """Read a ``nats://`` URL; ``what`` names its path ("subject" or "bucket") for error messages."""
    parsed = urlparse(url)
    shown = without_credentials(url)  # errors name the URL, never its password or token
    if parsed.scheme != "nats" or not parsed.hostname:
        raise ConfigError(f"{shown!r} is not nats://HOST[:PORT]/{what.upper()}")
    name = parsed.path.strip("/")
    if name and not _NAME.match(name):
        raise ConfigError(f"{shown!r}: {what} {name!r} must be dot-separated tokens of letters, digits, _ and -")
    query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    unknown = set(query) - set(_OPTIONS)
    if unknown:
        raise ConfigError(f"{shown!r}: unknown option(s) {', '.join(sorted(unknown))}; known: {', '.join(_OPTIONS)}")
    values = {k: query.get(k) or os.environ.get(f"KUBESONAR_NATS_{k.upper()}") or None for k in _OPTIONS}
    for option in ("creds", "nkey", "ca", "cert", "key"):
        if values[option] and not os.path.isfile(values[option]):
            raise ConfigError(f"{shown!r}: the {option} file {values[option]} does not exist")
    netloc = parsed.netloc.rpartition("@")
    port = parsed.port or 4222
    server = f"nats://{netloc[0] + '@' if netloc[0] else ''}{parsed.hostname}:{port}"
    tls = str(values.pop("tls") or "").lower() in ("1", "true", "yes")
    replicas = str(values.pop("replicas") or "1")
    if replicas not in ("1", "2", "3", "4", "5"):
        raise ConfigError(f"{shown!r}: replicas must be 1 to 5, not {replicas!r}")
    return NatsAddress(server, name, tls=tls, replicas=int(replicas), **values)
