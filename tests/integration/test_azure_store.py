"""The Blob Storage object store passes the same contract as every store, against Azurite's HTTP API."""

from __future__ import annotations

import uuid

import pytest
from azure.core.exceptions import ServiceResponseError
from contract.object_store import (
    ObjectStoreContract,
    assert_calls_fail_within,
    assert_every_call_is_a_store_error,
    endpoint_that_cannot_be_reached,
    first_answer_lost_on,
    lineage_of,
    requests_sent,
    unreachable_port,
)

from kubesonar.functions.azure.store import BlobObjectStore
from kubesonar.shared.errors import StoreError
from kubesonar.shared.state import update_document
from kubesonar.shared.write_token import METADATA_KEY

from azure_emulator import azurite, new_container  # noqa: F401 - the fixture


class TestBlobObjectStore(ObjectStoreContract):
    @pytest.fixture
    def store(self, azurite):  # noqa: F811
        return BlobObjectStore(new_container(azurite, f"state-{uuid.uuid4().hex[:12]}"))

    @pytest.fixture
    def first_answer_lost(self, store):
        """azure-storage-blob's retry policy retries a PUT whose answer was lost (ServiceResponseError); its
        requests go through the pipeline's transport, under the storage SDK's wrapper."""
        return lambda meanwhile=None: first_answer_lost_on(
            store._container._pipeline._transport._transport, "send",
            ServiceResponseError("read timed out after the upload landed"), meanwhile)


def test_the_conditions_are_blob_storages_own(azurite):  # noqa: F811
    container = new_container(azurite, f"state-{uuid.uuid4().hex[:12]}")
    store = BlobObjectStore(container, prefix="p/")
    version = store.put("a.json", b"{}", create_only=True)
    assert container.get_blob_client("p/a.json").get_blob_properties().etag == version  # the ETag itself
    assert container.get_blob_client("p/a.json").get_blob_properties().content_settings.content_type == (
        "application/json")
    assert list(store.list("")) == ["a.json"]


def test_a_missing_container_is_a_store_error_not_a_traceback(azurite):  # noqa: F811
    from azure.storage.blob import BlobServiceClient

    store = BlobObjectStore(BlobServiceClient.from_connection_string(azurite).get_container_client("absent"))
    assert store.get("k") is None
    with pytest.raises(StoreError, match="Blob Storage could not write"):
        store.put("k", b"1")


def test_a_blob_storage_that_cannot_be_reached_is_a_store_error():
    """The port's contract, as the S3 and GCS stores': azure-core's ServiceRequestError (no connection) is
    an AzureError, which the store turns into StoreError. Its retries are cut to none here."""

    from azure.storage.blob import BlobServiceClient

    from azure_emulator import ACCOUNT, ACCOUNT_KEY

    port = unreachable_port()
    service = BlobServiceClient.from_connection_string(
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};", retry_total=0)
    store = BlobObjectStore(service.get_container_client("kubesonar-state"))
    assert_every_call_is_a_store_error(store, "Blob Storage could not", version='"0x1"')


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_a_blob_storage_that_cannot_be_reached_fails_within_the_retry_setting(monkeypatch, kind):
    """azure-storage-blob's own retries (15 + 3**n s, 3 retries) ran 82 s on a refused port, its timeouts
    (20 s to connect, 60 s a read) 122 s on a silent one, before the StoreError: too long for a CLI
    command or a function invocation. KUBESONAR_STORE_RETRY_S bounds both."""
    from kubesonar.stores import open_store

    from azure_emulator import ACCOUNT, ACCOUNT_KEY

    with endpoint_that_cannot_be_reached(kind) as port:
        monkeypatch.setenv("KUBESONAR_STORAGE_CONNECTION_STRING", (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"))
        monkeypatch.setenv("KUBESONAR_STORE_RETRY_S", "3")
        assert_calls_fail_within(open_store(f"az://{ACCOUNT}/kubesonar-state"), 2 * 3 + 2, "Blob Storage could not")


def test_retries_fit_the_setting_jitter_included():
    from kubesonar.functions.azure.store import retry_within

    for retry_s in (0, 1, 2, 6, 20, 60):
        policy = retry_within(retry_s)
        worst = [policy.initial_backoff + policy.increment_base ** n + policy.random_jitter_range
                 for n in range(1, policy.total_retries + 1)]
        assert sum(worst) <= retry_s
    assert [retry_within(s).total_retries for s in (0, 3, 20, 60)] == [0, 1, 3, 3]


def test_az_store_urls_open_blob_storage(azurite, monkeypatch):  # noqa: F811
    from kubesonar.stores import open_store

    container = new_container(azurite, f"state-{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("KUBESONAR_STORAGE_CONNECTION_STRING", azurite)
    store = open_store(f"az://devstoreaccount1/{container.container_name}/team-a")
    store.put("alerts/prod/1.json", b"{}", create_only=True)
    assert list(container.list_blob_names()) == ["team-a/alerts/prod/1.json"]
    assert list(store.list("alerts/")) == ["alerts/prod/1.json"]


def test_the_functions_blob_storage_honours_the_retry_setting_of_its_environment(monkeypatch):
    """The function app built its Blob client with the default 20 s whatever KUBESONAR_STORE_RETRY_S said,
    so the Terraform module's store_retry_s reached nothing: with 3 s, a read of a silent account took 30 s
    to fail."""
    import importlib

    from azure_emulator import ACCOUNT, ACCOUNT_KEY

    with endpoint_that_cannot_be_reached("silent") as port:
        for name, value in {"KUBESONAR_STORAGE_CONNECTION_STRING": (
                                f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
                                f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"),
                            "KUBESONAR_STATE_CONTAINER": "state", "KUBESONAR_ALERTS_CONTAINER": "alerts",
                            "KUBESONAR_DEADLETTER_CONTAINER": "deadletter",
                            "KUBESONAR_ALERTS_TOPIC_ENDPOINT": f"https://127.0.0.1:{unreachable_port()}/api/events",
                            "KUBESONAR_STORE_RETRY_S": "3"}.items():
            monkeypatch.setenv(name, value)
        from kubesonar.functions.azure import runtime

        runtime = importlib.reload(runtime)  # a cold start
        assert_calls_fail_within(runtime.deps.store, 2 * 3 + 2, "Blob Storage could not")


def test_a_replace_carries_the_lineage_of_what_it_read_at_no_request_more(azurite):  # noqa: F811
    """A replace is built on the version update_document read, and carries that version's token: the
    metadata came with download_blob, so Blob Storage sees the read and the write, nothing more."""
    from azure.storage.blob import BlobServiceClient

    container = new_container(azurite, f"state-{uuid.uuid4().hex[:12]}")
    update_document(BlobObjectStore(container), "doc.json", lambda doc: {"n": 1})
    first = container.get_blob_client("doc.json").get_blob_properties().metadata[METADATA_KEY]
    # as another process: it knows the blob only from its read
    another = BlobObjectStore(BlobServiceClient.from_connection_string(azurite).get_container_client(
        container.container_name))
    with requests_sent(another._container._pipeline._transport._transport, "send") as sent:
        update_document(another, "doc.json", lambda doc: {"n": doc["n"] + 1})
    assert sent == [206, 201]  # the download (a range, as the SDK asks), the upload
    assert lineage_of(container.get_blob_client("doc.json").get_blob_properties().metadata) == [first]
