"""The S3 object store passes the same contract as every store, against S3's HTTP API (moto server)."""

from __future__ import annotations

import uuid

import pytest
from contract.object_store import ObjectStoreContract

from kubesonar.functions.aws.store import S3ObjectStore

from aws_emulator import aws_endpoint, client  # noqa: F401 - the fixture


class TestS3ObjectStore(ObjectStoreContract):
    @pytest.fixture
    def store(self, aws_endpoint):  # noqa: F811
        s3 = client("s3", aws_endpoint)
        bucket = f"kubesonar-state-{uuid.uuid4().hex[:12]}"
        s3.create_bucket(Bucket=bucket)
        return S3ObjectStore(s3, bucket)
