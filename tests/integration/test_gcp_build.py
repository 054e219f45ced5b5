"""functions/gcp/build.py makes the source archive infra/gcp deploys: main.py at its root re-exporting the
entry points the module names, requirements.txt for Cloud Build, the package without the sensor."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from kubesonar.functions.gcp.build import REQUIREMENTS, build

from conftest import one_source_build_at_a_time


@pytest.mark.slow
def test_the_archive_holds_main_requirements_and_the_package(tmp_path):
    with one_source_build_at_a_time():
        archive = build(tmp_path / "kubesonar-gcp.zip")
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        assert zf.read("requirements.txt").decode().split() == REQUIREMENTS
        zf.extractall(tmp_path / "source")
    assert {"main.py", "kubesonar/functions/gcp/main.py", "kubesonar/shared/pipeline.py"} <= names
    assert not [n for n in names if n.startswith("kubesonar/sensor/")]
    # Cloud Run functions imports main.py from the source root; so does this, in a clean interpreter
    probe = ("import sys; sys.path.insert(0, '.'); import main, kubesonar; "
             "print(main.on_tick.__module__, main.on_message.__module__, kubesonar.__file__)")
    env = {"KUBESONAR_STATE_BUCKET": "s", "KUBESONAR_ALERTS_BUCKET": "a",
           "KUBESONAR_ALERTS_TOPIC": "projects/p/topics/a",
           "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9", "PUBSUB_EMULATOR_HOST": "127.0.0.1:9", "NO_GCE_CHECK": "True",
           "GOOGLE_CLOUD_PROJECT": "p", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-I", "-c", probe], cwd=tmp_path / "source", env=env, capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    on_tick, on_message, package = out.stdout.split()
    assert on_tick == on_message == "kubesonar.functions.gcp.main"
    assert package.startswith(str(tmp_path / "source"))  # the archive's package, not the installed one
