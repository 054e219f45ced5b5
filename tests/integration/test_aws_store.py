"""The S3 object store passes the same contract as every store, against S3's HTTP API (moto server)."""

from __future__ import annotations

import uuid

import pytest
from botocore.exceptions import ReadTimeoutError
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

from kubesonar.functions.aws.store import S3ObjectStore
from kubesonar.shared.state import update_document
from kubesonar.shared.write_token import METADATA_KEY

from aws_emulator import aws_endpoint, client  # noqa: F401 - the fixture


class TestS3ObjectStore(ObjectStoreContract):
    @pytest.fixture
    def store(self, aws_endpoint):  # noqa: F811
        s3 = client("s3", aws_endpoint)
        bucket = f"kubesonar-state-{uuid.uuid4().hex[:12]}"
        s3.create_bucket(Bucket=bucket)
        return S3ObjectStore(s3, bucket)

    @pytest.fixture
    def first_answer_lost(self, store):
        """botocore retries a PUT that timed out (standard and legacy modes alike); its requests go through
        the endpoint's http_session."""
        return lambda meanwhile=None: first_answer_lost_on(
            store._s3._endpoint.http_session, "send", ReadTimeoutError(endpoint_url="after the upload landed"),
            meanwhile)


def test_an_s3_that_cannot_be_reached_is_a_store_error():
    """The port's contract: the core tells a failed store (StoreError) from a bug, so botocore's own
    errors (no connection, a cut answer) must not pass through as they are."""
    import boto3
    import botocore.config


    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{unreachable_port()}", region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing", config=botocore.config.Config(retries={"max_attempts": 1}))
    store = S3ObjectStore(s3, "kubesonar-state")
    assert_every_call_is_a_store_error(store, "S3 could not")


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_an_s3_that_cannot_be_reached_fails_within_the_retry_setting(monkeypatch, kind):
    """botocore bounds its own retries (standard mode: 3 attempts, sleeps under 1 s then 2 s; 0.1 s on a
    refused port, 9 s in legacy mode's 5 attempts), but each request waited 60 s on a silent port (180 s
    in all). The client's timeouts share KUBESONAR_STORE_RETRY_S among its 3 attempts."""
    from kubesonar.stores import open_store

    with endpoint_that_cannot_be_reached(kind) as port:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_DEFAULT_REGION": "us-east-1", "KUBESONAR_STORE_RETRY_S": "3"}.items():
            monkeypatch.setenv(name, value)
        assert_calls_fail_within(open_store("s3://kubesonar-state"), 2 * 3 + 2, "S3 could not")


def test_the_functions_s3_honours_the_retry_setting_of_its_environment(monkeypatch):
    """The Lambda built its S3 client with the default 20 s whatever KUBESONAR_STORE_RETRY_S said, so the
    Terraform module's store_retry_s reached nothing: with 3 s, a read of a silent S3 took 20 s to fail."""
    import importlib

    with endpoint_that_cannot_be_reached("silent") as port:
        for name, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                            "KUBESONAR_STATE_BUCKET": "ks-state", "KUBESONAR_ALERTS_BUCKET": "ks-alerts",
                            "KUBESONAR_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:ks-alerts",
                            "KUBESONAR_STORE_RETRY_S": "3"}.items():
            monkeypatch.setenv(name, value)
        import kubesonar.functions.aws.handler as handler

        handler = importlib.reload(handler)  # a cold start
        assert_calls_fail_within(handler.deps.store, 2 * 3 + 2, "S3 could not")


def test_a_replace_carries_the_lineage_of_what_it_read_at_no_request_more(aws_endpoint):  # noqa: F811
    """A replace is built on the version update_document read, and carries that version's token: the
    metadata came with get_object, so S3 sees the read and the write, nothing more."""
    s3, bucket = client("s3", aws_endpoint), f"kubesonar-state-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    update_document(S3ObjectStore(s3, bucket), "doc.json", lambda doc: {"n": 1})
    first = s3.head_object(Bucket=bucket, Key="doc.json")["Metadata"][METADATA_KEY]
    another = S3ObjectStore(client("s3", aws_endpoint), bucket)  # as another process: it knows only its read
    with requests_sent(another._s3._endpoint.http_session, "send") as sent:
        update_document(another, "doc.json", lambda doc: {"n": doc["n"] + 1})
    assert sent == [200, 200]
    assert lineage_of(s3.head_object(Bucket=bucket, Key="doc.json")["Metadata"]) == [first]
