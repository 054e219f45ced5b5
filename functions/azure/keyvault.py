"""The keyring's Key Vault secret, read by the function itself (azure-keyvault-secrets, the app's identity).

A Key Vault reference in the app settings is resolved by the platform when an instance starts and again
only within 24 hours or on a settings change: a warm instance kept the keyring of its start, and after a
rotation dead-lettered the new key's batches for up to a day. Read here, the secret is read again when a
batch names a key id the keyring lacks (shared/keyring_source.py), as AWS reads Secrets Manager."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from azure.core.exceptions import AzureError
from azure.keyvault.secrets import SecretClient

from kubesonar.shared.errors import ConfigError
from kubesonar.shared.ports import STORE_RETRY_S, store_request_timeout_s

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

# azure-core's RetryPolicy: the first retry at once, the n-th after 0.8 * 2**(n-1) s, 10 retries at most
_BACKOFF_S, _MAX_RETRIES = 0.8, 10


def client_options(retry_s: float = STORE_RETRY_S) -> dict[str, Any]:
    """SecretClient's keyword arguments that bound a call as the Blob client's are (functions/azure/store.py):
    as many retries as fit ``retry_s`` seconds of sleep, each request's timeouts a share of it, so a vault
    that cannot be reached fails within about twice it (azure-core's limit on the whole call). With its
    defaults (300 s timeouts, a read retried 3 times) a silent port held a call for over 90 s (4 x 300 s
    by its settings); bounded at 12 s (infra/azure's default) it gave up after 14.6 s, and after 4.8 s
    on a refused port."""
    retries, slept = 0, 0.0
    while retries < _MAX_RETRIES and slept + (sleep := _BACKOFF_S * 2 ** retries if retries else 0.0) <= retry_s:
        retries, slept = retries + 1, slept + sleep
    timeout = store_request_timeout_s(retry_s, attempts=retries + 1)
    return {"retry_total": retries, "retry_backoff_factor": _BACKOFF_S, "timeout": max(2 * retry_s, timeout),
            "connection_timeout": timeout, "read_timeout": timeout}


class KeyVaultSecrets:
    """Secrets of one vault (``KUBESONAR_KEYRING_VAULT_URL``), as ``keyring_from_env`` asks for them by name."""

    def __init__(self, vault_url: str | None, credential: TokenCredential, retry_s: float = STORE_RETRY_S):
        self.vault_url = vault_url
        self._client = SecretClient(vault_url, credential, **client_options(retry_s)) if vault_url else None

    def read(self, name: str) -> str:
        if self._client is None:
            raise ConfigError(f"KUBESONAR_KEYRING_SECRET names the Key Vault secret {name}: set "
                              "KUBESONAR_KEYRING_VAULT_URL to its vault (https://VAULT.vault.azure.net/)")
        try:
            value = self._client.get_secret(name).value
        except AzureError as exc:  # no value yet, no access, unreachable
            reason = str(exc.message or exc).splitlines()[0][:200]
            raise ConfigError(f"keyring secret {name}: Key Vault {self.vault_url} cannot give its value: "
                              f"{type(exc).__name__}: {reason}") from None
        if not value:
            raise ConfigError(f"keyring secret {name}: holds no text (put the keyring document in; "
                              "docs/hardening.md)")
        return value
