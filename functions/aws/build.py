"""Build the Lambda deployment package: the core, the AWS adapter and their dependencies for the
function's runtime (Python 3.12 on arm64), as one zip for infra/aws (var.lambda_zip_path).

    python functions/aws/build.py [--out build/kubesonar-lambda.zip]

Dependencies are the manylinux wheels pip picks for that platform; boto3 is bundled (pinned by pip's
choice) rather than taken from the runtime, whose copy may predate S3's conditional writes.
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
RUNTIME_PYTHON = "3.12"  # infra/aws/main.tf: runtime = "python3.12"
PLATFORM = "manylinux2014_aarch64"  # infra/aws/main.tf: architectures = ["arm64"]
# What the function imports: the core (numpy, zstandard, pyyaml, publicsuffixlist) and the adapter (boto3,
# powertools).
REQUIREMENTS = ["numpy>=1.26", "zstandard>=0.22", "pyyaml>=6", "publicsuffixlist>=1.0", "boto3>=1.35",
                "aws-lambda-powertools>=3"]
MAX_UNZIPPED = 250 * 1024 * 1024  # Lambda's limit for a function's code


def build(out: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="kubesonar-lambda-") as tmp:
        target, wheels = Path(tmp) / "package", Path(tmp) / "wheels"
        _pip("install", "--target", str(target), "--platform", PLATFORM, "--implementation", "cp",
             "--python-version", RUNTIME_PYTHON, "--only-binary=:all:", *REQUIREMENTS)
        print(f"building the kubesonar wheel from {REPO}", file=sys.stderr)
        _pip("wheel", "--no-deps", "--wheel-dir", str(wheels), str(REPO))
        _pip("install", "--target", str(target), "--no-deps", *map(str, wheels.glob("kubesonar-*.whl")))
        total = 0
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
            for path in sorted(target.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts and not path.name.endswith(".pyc"):
                    total += path.stat().st_size
                    zf.write(path, path.relative_to(target).as_posix())
    if total > MAX_UNZIPPED:
        raise SystemExit(f"package is {total / 2**20:.0f} MiB unzipped, over Lambda's 250 MiB")
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB zipped, {total / 2**20:.1f} MiB unzipped", file=sys.stderr)
    return out


def _pip(*args: str) -> None:
    print("pip " + " ".join(args[:2]) + " ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True,
                   env={**os.environ, "PIP_NO_INPUT": "1"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "build" / "kubesonar-lambda.zip")
    build(parser.parse_args().out)


if __name__ == "__main__":
    main()
