"""The Cloud Storage object store passes the contract every store passes, against fake-gcs-server's JSON
API; and the emulator is shown to enforce the generation preconditions the store relies on."""

from __future__ import annotations

import uuid

import pytest
import requests
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
from gcp_emulator import gcp_emulators, storage_client  # noqa: F401 - the fixture
from google.api_core.exceptions import PreconditionFailed

from kubesonar.functions.gcp.store import GcsObjectStore
from kubesonar.shared.state import update_document
from kubesonar.shared.write_token import METADATA_KEY


@pytest.fixture
def bucket(gcp_emulators):  # noqa: F811
    client = storage_client()
    return client, client.create_bucket(f"kubesonar-state-{uuid.uuid4().hex[:12]}").name


class TestGcsObjectStore(ObjectStoreContract):
    @pytest.fixture
    def store(self, bucket):
        return GcsObjectStore(*bucket)

    @pytest.fixture
    def first_answer_lost(self, bucket):
        """google-cloud-storage retries a write with a precondition: its requests go through client._http."""
        return lambda meanwhile=None: first_answer_lost_on(
            bucket[0]._http, "request", requests.ReadTimeout("read timed out after the upload landed"), meanwhile)


def test_the_emulator_answers_412_on_the_upload_path_the_client_takes(bucket):
    client, name = bucket
    blob = client.bucket(name).blob("doc.json")
    blob.upload_from_string(b"1", if_generation_match=0)  # multipart upload: ?uploadType=multipart
    with pytest.raises(PreconditionFailed):
        client.bucket(name).blob("doc.json").upload_from_string(b"2", if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        client.bucket(name).blob("doc.json").upload_from_string(b"3", if_generation_match=blob.generation + 1)
    assert client.bucket(name).blob("doc.json").download_as_bytes() == b"1"


def test_the_emulator_ignores_the_precondition_on_resumable_uploads(bucket):
    """Objects over 8 MiB go resumable, where fake-gcs-server 1.54 does not check ifGenerationMatch (real
    GCS does): no state document comes near that size, so the tests above cover the path in use."""
    client, name = bucket
    big = b"x" * (8 * 1024 * 1024 + 1)
    client.bucket(name).blob("big").upload_from_string(big, if_generation_match=0)
    client.bucket(name).blob("big").upload_from_string(big, if_generation_match=0)  # no 412 here


def test_a_gs_url_opens_the_bucket_under_its_prefix(bucket):
    from kubesonar.stores import open_store

    client, name = bucket
    store = open_store(f"gs://{name}/team-a")
    store.put("state/c/doc.json", b"{}", create_only=True)
    assert [b.name for b in client.list_blobs(name)] == ["team-a/state/c/doc.json"]
    assert list(store.list("state/")) == ["state/c/doc.json"]


def test_a_gcs_that_cannot_be_reached_is_a_store_error():
    """The port's contract, as the S3 store's: the core tells a failed store (StoreError) from a bug.
    google-cloud-storage 2.x (which the >=2.16 requirement allows) raises requests' own ConnectionError once
    its retries are spent, on a read as on a write; 3.x wraps it in RetryError. The store's retries are
    cut to 1 s here."""

    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    url = f"http://127.0.0.1:{unreachable_port()}"
    client = storage.Client(project="kubesonar-test", credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": url})
    store = GcsObjectStore(client, "kubesonar-state", retry_s=1)
    assert_every_call_is_a_store_error(store, "GCS could not", version="7")


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_a_gcs_that_cannot_be_reached_fails_within_the_retry_setting(monkeypatch, kind):
    """The library's own retries ran 75-116 s (to its 120 s timeout) on a refused port, and one request
    waited 60 s on a silent one, before the StoreError: too long for a CLI command or a function
    invocation. KUBESONAR_STORE_RETRY_S bounds both."""
    from kubesonar.stores import open_store

    with endpoint_that_cannot_be_reached(kind) as port:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "kubesonar-test")
        monkeypatch.setenv("KUBESONAR_STORE_RETRY_S", "3")
        assert_calls_fail_within(open_store("gs://kubesonar-state"), 2 * 3 + 2, "GCS could not")


def test_the_functions_cloud_storage_honours_the_retry_setting_of_its_environment(monkeypatch):
    """The function built its stores with the default 20 s whatever KUBESONAR_STORE_RETRY_S said, so the
    Terraform module's store_retry_s reached nothing: with 3 s, a read of a silent bucket took 20 s to fail."""
    import importlib
    import sys

    with endpoint_that_cannot_be_reached("silent") as port:
        for name, value in {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}",
                            "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{unreachable_port()}",
                            "GOOGLE_CLOUD_PROJECT": "kubesonar-test", "KUBESONAR_STATE_BUCKET": "ks-state",
                            "KUBESONAR_ALERTS_BUCKET": "ks-alerts",
                            "KUBESONAR_ALERTS_TOPIC": "projects/kubesonar-test/topics/ks-alerts",
                            "KUBESONAR_STORE_RETRY_S": "3"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delitem(sys.modules, "kubesonar.functions.gcp.main", raising=False)
        try:
            main = importlib.import_module("kubesonar.functions.gcp.main")  # a cold start
            assert_calls_fail_within(main.deps.store, 2 * 3 + 2, "GCS could not")
        finally:
            sys.modules.pop("kubesonar.functions.gcp.main", None)  # built for a port that is gone


def test_a_replace_carries_the_lineage_of_what_it_read_at_one_request_more(bucket):
    """A replace is built on the version update_document read, and carries that version's token. A
    download does not return the metadata: it costs a metadata read, unless this store wrote that version."""
    client, name = bucket
    writer = GcsObjectStore(client, name)
    update_document(writer, "doc.json", lambda doc: {"n": 1})
    first = client.bucket(name).get_blob("doc.json").metadata[METADATA_KEY]
    another = GcsObjectStore(storage_client(), name)  # as another process: it knows only its read
    with requests_sent(another._bucket.client._http, "request") as sent:
        update_document(another, "doc.json", lambda doc: {"n": doc["n"] + 1})
    assert sent == [200, 200, 200]  # the download, the metadata, the upload
    second = client.bucket(name).get_blob("doc.json").metadata
    assert lineage_of(second) == [first]
    with requests_sent(another._bucket.client._http, "request") as sent:
        update_document(another, "doc.json", lambda doc: {"n": doc["n"] + 1})
    assert sent == [200, 200]  # it wrote the version it replaces: it knows its metadata
    assert lineage_of(client.bucket(name).get_blob("doc.json").metadata) == [second[METADATA_KEY], first]
