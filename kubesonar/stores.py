"""Store URLs: where a backend keeps baselines and alerts, named once for every command.

Each kind is one entry of :data:`STORE_KINDS`: its URL form and the function that opens it, imported
only when used. A plain path or ``file://DIR`` is the embedded default (a local directory);
``s3://BUCKET[/PREFIX]`` is S3, ``az://ACCOUNT/CONTAINER[/PREFIX]`` Blob Storage, ``gs://BUCKET[/PREFIX]``
Cloud Storage, and each new backend (``nats://``) adds one entry.
Credentials come from each SDK's default chain. KUBESONAR_STORE_RETRY_S (seconds, default
:data:`~kubesonar.shared.ports.STORE_RETRY_S`) bounds how long a Cloud Storage or Blob Storage call keeps
retrying before it fails, and each request's connect and read timeouts (S3 keeps botocore's own bounded
attempts).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from urllib.parse import urlparse

from kubesonar.shared.errors import ConfigError
from kubesonar.shared.ports import ObjectStore
from kubesonar.shared.url_credentials import without_credentials


@dataclass(frozen=True)
class StoreKind:
    name: str
    pattern: re.Pattern[str]
    opener: str  # "module:callable": callable(url) -> ObjectStore
    form: str


STORE_KINDS: tuple[StoreKind, ...] = (
    StoreKind("s3", re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"),
              "kubesonar.stores:_open_s3", "s3://BUCKET[/PREFIX]"),
    StoreKind("az", re.compile(r"^az://[a-z0-9]{3,24}/[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9](/.*)?$"),
              "kubesonar.stores:_open_blob", "az://ACCOUNT/CONTAINER[/PREFIX]"),
    StoreKind("gs", re.compile(r"^gs://[a-z0-9][a-z0-9._-]{1,61}[a-z0-9](/.*)?$"),
              "kubesonar.stores:_open_gcs", "gs://BUCKET[/PREFIX]"),
    StoreKind("nats", re.compile(r"^nats://"), "kubesonar.functions.nats.store:open_nats_store",
              "nats://HOST:PORT/BUCKET (JetStream KV)"),
    StoreKind("directory", re.compile(r"^(file://)?[^:]+$"), "kubesonar.stores:_open_directory",
              "a directory path or file://DIR"),
)


def open_store(url: str) -> ObjectStore:
    """The object store a URL names; a URL of no known form, or a store that cannot be opened, is a
    ConfigError saying which."""
    shown = without_credentials(url)
    for kind in STORE_KINDS:
        if kind.pattern.match(url):
            module, _, name = kind.opener.partition(":")
            try:  # the openers import their SDK when called: a missing one is this same line, not "unreachable"
                return getattr(importlib.import_module(module), name)(url)
            except ModuleNotFoundError as exc:
                raise ConfigError(f"store {shown!r} needs a package this installation lacks: {exc.name}") from None
    raise ConfigError(f"store URL {shown!r} is not one of: " + ", ".join(k.form for k in STORE_KINDS))


def _retry_s() -> float:
    import os

    from kubesonar.shared.env_numbers import seconds_setting
    from kubesonar.shared.ports import STORE_RETRY_S

    return seconds_setting(os.environ, "KUBESONAR_STORE_RETRY_S", STORE_RETRY_S)


def _open_directory(url: str) -> ObjectStore:
    from pathlib import Path

    from kubesonar.functions.local.store import LocalObjectStore

    path = Path(urlparse(url).path if url.startswith("file://") else url)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot use {path} as a store: {exc.strerror}") from None
    return LocalObjectStore(path)


def _open_s3(url: str) -> ObjectStore:
    import boto3

    from kubesonar.functions.aws.store import S3ObjectStore, client_config

    parsed = urlparse(url)
    prefix = parsed.path.strip("/")
    return S3ObjectStore(boto3.client("s3", config=client_config(_retry_s())), parsed.netloc,
                         prefix + "/" if prefix else "")


def _open_blob(url: str) -> ObjectStore:
    """Blob Storage with DefaultAzureCredential; KUBESONAR_STORAGE_CONNECTION_STRING, when set, is used
    instead (Azurite, or an account that still allows shared keys)."""
    import os

    from azure.storage.blob import BlobServiceClient

    from kubesonar.functions.azure.store import BlobObjectStore, client_options

    parsed = urlparse(url)
    container, _, prefix = parsed.path.strip("/").partition("/")
    connection_string = os.environ.get("KUBESONAR_STORAGE_CONNECTION_STRING")
    options = client_options(_retry_s())
    if connection_string:
        service = BlobServiceClient.from_connection_string(connection_string, **options)
    else:
        from azure.identity import DefaultAzureCredential

        service = BlobServiceClient(f"https://{parsed.netloc}.blob.core.windows.net",
                                    credential=DefaultAzureCredential(), **options)
    prefix = prefix.strip("/")
    return BlobObjectStore(service.get_container_client(container), prefix + "/" if prefix else "")


def _open_gcs(url: str) -> ObjectStore:
    from google.cloud import storage

    from kubesonar.functions.gcp.store import GcsObjectStore

    parsed = urlparse(url)
    prefix = parsed.path.strip("/")
    return GcsObjectStore(storage.Client(), parsed.netloc, prefix + "/" if prefix else "", retry_s=_retry_s())
