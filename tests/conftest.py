from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("KUBESONAR_DATA", REPO.parent / "shared" / "data"))
PCAPS = DATA / "pcaps"


def require_tool(name: str) -> str:
    """The path of an external tool; CI installs them all, so there a missing tool is a failure."""
    path = shutil.which(name)
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{name} is not installed; .ci/run should have installed it")
    pytest.skip(f"{name} is not installed (run .ci/run or apt-get install it)")


@contextmanager
def one_source_build_at_a_time() -> Iterator[None]:
    """The function builds make kubesonar's wheel inside the checkout (pip builds in tree: build/,
    kubesonar.egg-info/), where two at once (tests in parallel workers) can remove each other's staging
    files; across processes, one at a time."""
    tag = hashlib.sha256(str(REPO).encode()).hexdigest()[:12]
    with open(Path(tempfile.gettempdir()) / f"kubesonar-source-build-{tag}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def shared_captures() -> list[Path]:
    return sorted(p for p in PCAPS.glob("*/*") if p.suffix in (".pcap", ".pcapng", ".cap"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests first, the rest in their order: scripts/test.sh's workers take tests one at a time
    from the front, so the long ones start early, in parallel, and none is left running alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="module", autouse=True)
def _emulators_of_this_module(request):
    """A session fixture imported into a module is that module's own: each AWS or GCP test module starts
    its own moto (tests/aws_emulator.py) or emulators (tests/gcp_emulator.py) and points the environment
    at them once, when it starts. Spread over xdist workers, tests of several such modules interleave on
    one worker, and the code under test then read another module's server from the variables
    (NoSuchBucket). Each time one of them (re)starts, the variables point at its own."""
    if hasattr(request.module, "aws_endpoint"):
        os.environ["AWS_ENDPOINT_URL"] = request.getfixturevalue("aws_endpoint")
    if hasattr(request.module, "gcp_emulators"):
        servers = request.getfixturevalue("gcp_emulators")
        os.environ.update(PUBSUB_EMULATOR_HOST=servers["pubsub"], STORAGE_EMULATOR_HOST=servers["gcs"])
    yield
