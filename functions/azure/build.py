"""Build the function app's deployment package: the core, the Azure adapter and their dependencies for
the app's runtime (Python 3.12, Linux x86_64), as one zip to deploy to infra/azure's Flex Consumption app.

    python functions/azure/build.py [--out build/kubesonar-azure.zip]
    az functionapp deployment source config-zip -g RESOURCE_GROUP -n FUNCTION_APP --src build/kubesonar-azure.zip

Dependencies are pre-installed under .python_packages (no remote build): the manylinux wheels pip picks
for that platform. At the root: host.json and a function_app.py that exposes the adapter's ``app``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RUNTIME_PYTHON = "3.12"  # infra/azure/main.tf: runtime_version = "3.12"
PLATFORM = "manylinux2014_x86_64"  # Flex Consumption runs Linux on x86_64
REQUIREMENTS = ["numpy>=1.26", "zstandard>=0.22", "pyyaml>=6", "publicsuffixlist>=1.0", "azure-functions>=1.20",
                "azure-storage-blob>=12.19", "azure-eventgrid>=4.20", "azure-identity>=1.16",
                "azure-keyvault-secrets>=4.8"]
# The worker indexes function_app.py at the package root and looks for the FunctionApp named app.
ENTRY = '"""Entry point for the Functions host: the app lives in the kubesonar package."""\n' \
        "from kubesonar.functions.azure.function_app import app  # noqa: F401\n"


def build(out: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="kubesonar-azure-") as tmp:
        site, wheels = Path(tmp) / ".python_packages" / "lib" / "site-packages", Path(tmp) / "wheels"
        _pip("install", "--target", str(site), "--platform", PLATFORM, "--implementation", "cp",
             "--python-version", RUNTIME_PYTHON, "--only-binary=:all:", *REQUIREMENTS)
        _pip("wheel", "--no-deps", "--wheel-dir", str(wheels), str(REPO))
        _pip("install", "--target", str(site), "--no-deps", *map(str, wheels.glob("kubesonar-*.whl")))
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
            zf.writestr("function_app.py", ENTRY)
            zf.write(HERE / "host.json", "host.json")
            for path in sorted(site.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts and not path.name.endswith(".pyc"):
                    zf.write(path, path.relative_to(Path(tmp)).as_posix())
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB", file=sys.stderr)
    return out


def _pip(*args: str) -> None:
    print("pip " + " ".join(args[:2]) + " ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True,
                   env={**os.environ, "PIP_NO_INPUT": "1"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "build" / "kubesonar-azure.zip")
    build(parser.parse_args().out)


if __name__ == "__main__":
    main()
