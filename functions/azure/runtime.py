"""What the function app builds once per instance (a cold start), from its app settings:

KUBESONAR_STORAGE_ACCOUNT_URL (https://ACCOUNT.blob.core.windows.net, reached with the app's managed
identity) or KUBESONAR_STORAGE_CONNECTION_STRING (a connection string; Azurite in tests),
KUBESONAR_STATE_CONTAINER, KUBESONAR_ALERTS_CONTAINER, KUBESONAR_DEADLETTER_CONTAINER,
KUBESONAR_ALERTS_TOPIC_ENDPOINT (https://TOPIC-HOST/api/events), KUBESONAR_LEARNING_PERIOD_S,
KUBESONAR_SENSOR_SILENT_AFTER_S, KUBESONAR_INTERNAL_NETWORKS (comma-separated CIDRs; docs/detection.md),
KUBESONAR_STORE_RETRY_S (how long one Blob Storage or Key Vault call may keep retrying: twice it under the 30 s
Event Grid waits for an answer; 12 when unset, as infra/azure sets it),
KUBESONAR_KEYRING_VAULT_URL and KUBESONAR_KEYRING_SECRET (the vault and the name of the secret holding the
keyring, infra/azure; read at start and again when a batch names a key id it lacks, once a minute at most;
or KUBESONAR_KEYRING with the document itself, fixed for the instance's life): batches must then be signed
(docs/hardening.md).
Credentials are DefaultAzureCredential's: the app's system-assigned managed identity in Azure.
"""

from __future__ import annotations

import os

from azure.eventgrid import EventGridPublisherClient
from azure.identity import DefaultAzureCredential
from azure.storage.blob import BlobServiceClient

from kubesonar.functions.azure.keyvault import KeyVaultSecrets
from kubesonar.functions.azure.notifier import EventGridNotifier
from kubesonar.functions.azure.store import FUNCTION_STORE_RETRY_S, BlobObjectStore, client_options
from kubesonar.shared.env_numbers import seconds_setting
from kubesonar.shared.errors import ConfigError
from kubesonar.shared.frozen_start import freeze_what_loading_made
from kubesonar.shared.keyring_source import keyring_from_env
from kubesonar.shared.netzones import PRIVATE_NETWORKS
from kubesonar.shared.pipeline import CoreConfig, Dependencies
from kubesonar.shared.ports import RoutedObjectStore, SystemClock


def _blob_service(credential: DefaultAzureCredential, retry_s: float) -> BlobServiceClient:
    options = client_options(retry_s)
    connection_string = os.environ.get("KUBESONAR_STORAGE_CONNECTION_STRING")
    if connection_string:
        return BlobServiceClient.from_connection_string(connection_string, **options)
    return BlobServiceClient(os.environ["KUBESONAR_STORAGE_ACCOUNT_URL"], credential=credential, **options)


def _keyring_vault(credential: DefaultAzureCredential, retry_s: float) -> KeyVaultSecrets:
    vault_url = os.environ.get("KUBESONAR_KEYRING_VAULT_URL")
    if vault_url and not os.environ.get("KUBESONAR_KEYRING_SECRET"):  # else no keyring: unsigned batches taken
        raise ConfigError("KUBESONAR_KEYRING_VAULT_URL is set without KUBESONAR_KEYRING_SECRET, the name of the "
                          "keyring's secret in that vault (infra/azure sets keyring)")
    return KeyVaultSecrets(vault_url, credential, retry_s)


_retry_s = seconds_setting(os.environ, "KUBESONAR_STORE_RETRY_S", FUNCTION_STORE_RETRY_S)
_credential = DefaultAzureCredential()
_blobs = _blob_service(_credential, _retry_s)
deadletter = BlobObjectStore(_blobs.get_container_client(os.environ["KUBESONAR_DEADLETTER_CONTAINER"]))
deps = Dependencies(
    store=RoutedObjectStore(BlobObjectStore(_blobs.get_container_client(os.environ["KUBESONAR_STATE_CONTAINER"])),
                            {"alerts/": BlobObjectStore(_blobs.get_container_client(
                                os.environ["KUBESONAR_ALERTS_CONTAINER"]))}),
    notifier=EventGridNotifier(EventGridPublisherClient(os.environ["KUBESONAR_ALERTS_TOPIC_ENDPOINT"], _credential)),
    clock=SystemClock(),
    config=CoreConfig(learning_period_s=seconds_setting(os.environ, "KUBESONAR_LEARNING_PERIOD_S", 86400),
                      sensor_silent_after_s=seconds_setting(os.environ, "KUBESONAR_SENSOR_SILENT_AFTER_S", 60),
                      internal_networks=tuple(filter(None, os.environ.get(
                          "KUBESONAR_INTERNAL_NETWORKS", ",".join(PRIVATE_NETWORKS)).split(",")))),
    keyring=keyring_from_env(os.environ, _keyring_vault(_credential, _retry_s).read),
)


freeze_what_loading_made()  # the instance's lasting objects, skipped by every collection (shared/frozen_start.py)
