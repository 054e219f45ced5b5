"""The function app's package: built from this repository for the app's runtime (Python 3.12, Linux
x86_64), the host's files at the root, what the app imports and nothing the function does not run."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO, one_source_build_at_a_time


@pytest.mark.slow
def test_the_build_script_packages_the_app_for_python_3_12_on_linux(tmp_path):
    out = tmp_path / "kubesonar-azure.zip"
    with one_source_build_at_a_time():
        done = subprocess.run([sys.executable, str(REPO / "functions" / "azure" / "build.py"), "--out", str(out)],
                              timeout=600, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    site = ".python_packages/lib/site-packages/"
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        entry = zf.read("function_app.py").decode()
        host = json.loads(zf.read("host.json"))
    assert "Microsoft.Azure.Functions.ExtensionBundle" == host["extensionBundle"]["id"]  # the Event Grid trigger
    (imported,) = [n for n in ast.parse(entry).body if isinstance(n, ast.ImportFrom)]
    assert (imported.module, [a.name for a in imported.names]) == ("kubesonar.functions.azure.function_app", ["app"])
    assert f"{site}kubesonar/functions/azure/function_app.py" in names and f"{site}kubesonar/shared/rules.json" in names
    assert any(n.startswith(f"{site}numpy/") and "cpython-312-x86_64-linux-gnu.so" in n for n in names)
    for package in ("azure/functions/", "azure/storage/blob/", "azure/eventgrid/", "azure/identity/",
                    "azure/keyvault/secrets/", "zstandard/"):
        assert any(n.startswith(site + package) for n in names), package
    assert not any(n.startswith(tuple(site + p for p in ("numba/", "llvmlite/", "scapy/", "kubernetes/", "boto3/")))
                   for n in names)
