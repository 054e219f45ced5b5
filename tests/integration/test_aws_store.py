"""The S3 object store passes the same contract as every store, against S3's HTTP API (moto server)."""

from __future__ import annotations

import time
import uuid

import pytest
from botocore.exceptions import ReadTimeoutError
from contract.object_store import (
    ObjectStoreContract,
    assert_every_call_is_a_store_error,
    first_answer_lost_on,
    unreachable_port,
)

from kubesonar.functions.aws.store import S3ObjectStore
from kubesonar.shared.errors import StoreError
from kubesonar.shared.ports import STORE_RETRY_S

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
        return lambda: first_answer_lost_on(store._s3._endpoint.http_session, "send",
                                            ReadTimeoutError(endpoint_url="after the upload landed"))


def test_an_s3_that_cannot_be_reached_is_a_store_error():
    """The port's contract: the core tells a failed store (StoreError) from a bug, so botocore's own
    errors (no connection, a cut answer) must not pass through as they are."""
    import boto3
    import botocore.config


    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{unreachable_port()}", region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing", config=botocore.config.Config(retries={"max_attempts": 1}))
    store = S3ObjectStore(s3, "kubesonar-state")
    assert_every_call_is_a_store_error(store, "S3 could not")


def test_an_s3_that_cannot_be_reached_fails_within_botocores_attempts():
    """botocore bounds its own retries, so the S3 store needs no KUBESONAR_STORE_RETRY_S of its own: on a
    refused port a default client fails in 0.1 s (standard mode: 3 attempts, backoff under 1 s then 2 s) and
    in 9 s with AWS_RETRY_MODE=legacy (5 attempts, backoff under 1, 2, 4, 8 s): both within the budget the
    other stores get."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{unreachable_port()}", region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    started = time.monotonic()
    with pytest.raises(StoreError, match="S3 could not"):
        S3ObjectStore(s3, "kubesonar-state").put("state/c/doc.json", b"{}", create_only=True)
    assert time.monotonic() - started < STORE_RETRY_S
