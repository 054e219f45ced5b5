"""The Lambda package: built from this repository for the function's runtime (Python 3.12, arm64),
with what the handler imports and nothing the function does not run."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from conftest import REPO, one_source_build_at_a_time


@pytest.mark.slow
def test_the_build_script_packages_the_handler_for_arm64_python_3_12(tmp_path):
    out = tmp_path / "kubesonar-lambda.zip"
    with one_source_build_at_a_time():
        done = subprocess.run([sys.executable, str(REPO / "functions" / "aws" / "build.py"), "--out", str(out)],
                              timeout=600, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        unzipped = sum(i.file_size for i in zf.infolist())
    assert "kubesonar/functions/aws/handler.py" in names and "kubesonar/shared/rules.json" in names
    assert any(n.startswith("numpy/") and "cpython-312-aarch64-linux-gnu.so" in n for n in names)
    for package in ("boto3/", "botocore/", "aws_lambda_powertools/", "zstandard/", "yaml/"):
        assert any(n.startswith(package) for n in names), package
    assert not any(n.startswith(("numba/", "llvmlite/", "scapy/", "kubernetes/")) for n in names)
    # the lab (evaluation, attack tools, simulators) ships in no package
    assert not any(n.startswith("lab/") or "lab_tools" in n or n.endswith(("evaluate.py", "scenarios.py", "benign.py"))
                   for n in names)
    assert unzipped < 250 * 2**20  # Lambda's limit
