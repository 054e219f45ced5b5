"""Build the Cloud Run function's source archive for infra/gcp (var.source_archive_path): the core and
the GCP adapter as a package, a `main.py` that re-exports the entry points, and a requirements.txt that
Cloud Build installs for the runtime (python312).

    python functions/gcp/build.py [--out build/kubesonar-gcp.zip]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNTIME = "python312"  # infra/gcp/main.tf: build_config.runtime
# What the function imports: the core (numpy, zstandard, pyyaml, publicsuffixlist) and the adapter.
REQUIREMENTS = ["numpy>=1.26", "zstandard>=0.22", "pyyaml>=6", "publicsuffixlist>=1.0", "click>=8.1",
                "google-cloud-pubsub>=2.20", "google-cloud-storage>=2.16", "functions-framework>=3.5"]
MAIN = '"""Cloud Run functions loads main.py from the source root."""\n\n' \
       "from kubesonar.functions.gcp.main import on_message, on_tick  # noqa: F401\n"


def build(out: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="kubesonar-gcp-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", tmp, str(REPO)],
                       check=True)
        (wheel,) = Path(tmp).glob("kubesonar-*.whl")
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
            for name in src.namelist():
                if name.startswith("kubesonar/") and not name.startswith("kubesonar/sensor/"):
                    zf.writestr(name, src.read(name))
            zf.writestr("main.py", MAIN)
            zf.writestr("requirements.txt", "\n".join(REQUIREMENTS) + "\n")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "build" / "kubesonar-gcp.zip")
    print(build(parser.parse_args().out))
