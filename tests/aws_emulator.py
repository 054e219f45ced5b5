"""moto in server mode on 127.0.0.1, started by the test run: S3, SQS and SNS over their real HTTP
APIs. Code under test reaches it through AWS_ENDPOINT_URL, as production reaches AWS: no patching."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# an SQS event as Lambda delivers it, and the context it passes (powertools reads these fields)
EVENT = json.loads((Path(__file__).resolve().parent / "fixtures" / "aws" / "sqs-event.json").read_text())


class LambdaContext:
    function_name = "kubesonar-scoring"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:kubesonar-scoring"
    aws_request_id = "52fdfc07-2182-154f-163f-5f0f9a621d72"


CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


# moto_server's own app, served one request at a time. moto checks a conditional PUT's If-Match and
# then stores the object in separate steps; served threaded (as `moto_server` does), two concurrent
# writers can both pass the check, which real S3 never allows. Serialising requests gives the
# emulator S3's atomic conditional writes, so the concurrency tests test our code, not moto's race.
_SERVE = """
import sys
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple
run_simple("127.0.0.1", int(sys.argv[1]), DomainDispatcherApplication(create_backend_app), threaded=False)
"""


@contextmanager
def moto_server() -> Iterator[str]:
    """moto in server mode on a free port of 127.0.0.1 until the block ends; yields its endpoint URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", _SERVE, str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def aws_endpoint():
    saved = {k: os.environ.get(k) for k in [*CREDENTIALS, "AWS_ENDPOINT_URL"]}
    with moto_server() as url:
        os.environ.update(CREDENTIALS, AWS_ENDPOINT_URL=url)
        yield url
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def client(service: str, endpoint: str):
    import boto3

    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")
