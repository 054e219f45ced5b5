"""A store as a cluster would have it: the demo's alerts, and the edge summary of its detection
capture (built with shared/edges.py from the real flows, as the pipeline does once per invocation)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

KUBESONAR = str(Path(sys.executable).with_name("kubesonar"))


def build_demo_store(work: Path) -> tuple[Path, list[dict]]:
    from kubesonar.functions.local.store import LocalObjectStore
    from kubesonar.sensor.offline import read_captures
    from kubesonar.shared.edges import update_edge_summary
    from kubesonar.shared.inventory import PodInventory

    out = subprocess.run([KUBESONAR, "demo", "--workdir", str(work), "--format", "json"], capture_output=True,
                         text=True, timeout=300, check=True)
    inventory = PodInventory.load(str(work / "pods.json"))
    flows = [inventory.enrich(o.flows) for o in read_captures([str(work / "detection.pcap")])]
    update_edge_summary(LocalObjectStore(work / "state"), "default", flows)
    return work / "state", [json.loads(line) for line in out.stdout.splitlines()]


def copy_store(source: Path, target: Path) -> str:
    shutil.copytree(source, target)
    return str(target)
