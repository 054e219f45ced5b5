"""The ``kubesonar`` command. Every option is also an environment variable: KUBESONAR_<COMMAND>_<OPTION>."""

from __future__ import annotations

import csv
import json
import os
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

import click

from kubesonar.sensor.flow_table import FlowTimeouts
from kubesonar.sensor.offline import CaptureStats, flows_from_captures
from kubesonar.shared.errors import KubeSonarError
from kubesonar.shared.flow import FlowRecords

_TABLE_COLUMNS = ("first_ts", "src_ip", "src_port", "dst_ip", "dst_port", "proto", "packets_out",
                  "bytes_out", "packets_in", "bytes_in", "state")
_PROGRESS_MIN_BYTES = 16 << 20


@click.group(context_settings={"auto_envvar_prefix": "KUBESONAR", "show_default": True})
@click.version_option(package_name="kubesonar")
def main() -> None:
    """KubeSonar: network threat detection for Kubernetes."""


@main.command()
@click.argument("captures", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "table"]), default="table",
              help="jsonl: one JSON object per flow; csv: one row per flow; table: for people.")
@click.option("--active-timeout", type=click.FloatRange(min=0.001), default=FlowTimeouts.active_s,
              help="Seconds after which a long flow gets an interim record.")
@click.option("--idle-timeout", type=click.FloatRange(min=0.001), default=FlowTimeouts.idle_s,
              help="Seconds of silence that end a flow.")
def flows(captures: tuple[str, ...], fmt: str, active_timeout: float, idle_timeout: float) -> None:
    """Print the bidirectional flows of pcap/pcapng CAPTURES (read in order, as one stream)."""
    stats = CaptureStats()
    timeouts = FlowTimeouts(active_s=active_timeout, idle_s=idle_timeout)
    with _progress(captures) as advance:
        stream = flows_from_captures(captures, timeouts=timeouts, stats=stats, progress=advance)
        _write_flows(stream, fmt)
    for error in stats.errors:
        click.echo(f"kubesonar: error: {error}", err=True)
    if stats.errors:
        sys.exit(1)


@main.command()
@click.argument("captures", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--pods", type=click.Path(dir_okay=False), help="Output of 'kubectl get pods -A -o json'.")
@click.option("--learn", multiple=True, type=click.Path(dir_okay=False),
              help="Capture to learn from first (repeat for several); novelty detectors stay silent on it.")
@click.option("--state", "state_dir", type=click.Path(file_okay=False),
              help="Directory for baselines and alerts (kept between runs); default: a fresh temporary one.")
@click.option("--cluster", default="default", help="Cluster name alerts are filed under.")
@click.option("--allowlist", multiple=True, type=click.Path(dir_okay=False),
              help="YAML allowlist file (repeat for several); see docs/allowlists.md.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "ocsf"]), default="table",
              help="json: one alert per line; ocsf: one OCSF 1.3.0 Detection Finding per line.")
def analyze(captures: tuple[str, ...], pods: str | None, learn: tuple[str, ...], state_dir: str | None,
            cluster: str, allowlist: tuple[str, ...], fmt: str) -> None:
    """Run the offline sensor and the detection core on CAPTURES; print the alerts raised."""
    from kubesonar.functions.local.runtime import analyze as run_analysis

    result = run_analysis(captures, learn=learn, pods=pods, state_dir=state_dir, cluster=cluster,
                          allowlists=allowlist)
    if fmt in ("json", "ocsf"):
        from kubesonar.shared.ocsf import to_ocsf

        for alert in result.alerts:
            click.echo(json.dumps(to_ocsf(alert) if fmt == "ocsf" else alert, sort_keys=True))
    else:
        _alert_table(result.alerts)
    for error in result.stats.errors:
        click.echo(f"kubesonar: error: {error}", err=True)
    if result.stats.errors:
        sys.exit(1)


@main.command()
@click.option("--workdir", type=click.Path(file_okay=False),
              help="Keep the generated captures, pod list and state here (default: a temporary directory).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def demo(workdir: str | None, fmt: str) -> None:
    """Simulate a small cluster (learning, then a new workload and a port scan) and show the alerts."""
    import time

    from kubesonar.functions.local.demo import run_demo

    started = time.perf_counter()
    result, truth = run_demo(workdir)
    if fmt == "json":
        for alert in result.alerts:
            click.echo(json.dumps(alert, sort_keys=True))
        return
    click.echo(f"demo cluster: {result.flows} flows scored after a learning phase; "
               f"planted: a port scan from {truth['scanner']} and the new workload {truth['new_workload']}")
    _alert_table(result.alerts)
    click.echo(f"({time.perf_counter() - started:.1f} s)")


def _alert_table(alerts: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    out = click.get_text_stream("stdout")
    console = Console(width=None if out.isatty() else 160)
    if not alerts:
        console.print("no alerts")
        return
    table = Table("severity", "type", "source", "first seen", "count", "evidence", box=None)
    for a in alerts:
        source = a["source"].get("workload") or a["source"].get("ip")
        evidence = ", ".join(f"{k}={v}" for k, v in a["evidence"].items() if not isinstance(v, list))
        table.add_row(a["severity"], a["type"], source, a["first_seen"], str(a["count"]), evidence)
    console.print(table)


def _write_flows(stream: Iterator[FlowRecords], fmt: str) -> None:
    out = click.get_text_stream("stdout")
    if fmt == "jsonl":
        for records in stream:
            out.writelines(json.dumps(row) + "\n" for row in records.iter_dicts())
    elif fmt == "csv":
        writer = None
        for records in stream:
            for row in records.iter_dicts():
                if writer is None:
                    writer = csv.DictWriter(out, fieldnames=list(row))
                    writer.writeheader()
                writer.writerow(row)
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(*_TABLE_COLUMNS, box=None)
        rows = sorted((row for records in stream for row in records.iter_dicts()), key=lambda r: r["first_ts"])
        for row in rows:
            table.add_row(*(_cell(name, row[name]) for name in _TABLE_COLUMNS))
        if table.row_count:
            Console(width=None if out.isatty() else 160).print(table)


def _cell(name: str, value: object) -> str:
    if name == "first_ts":
        from datetime import datetime, timezone

        return datetime.fromtimestamp(float(value), tz=timezone.utc).strftime("%H:%M:%S.%f")
    return str(value)


@contextmanager
def _progress(captures: tuple[str, ...]) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on stderr when it is a terminal and the captures are large."""
    sizes = [os.path.getsize(p) if os.path.isfile(p) else 0 for p in captures]
    if not sys.stderr.isatty() or sum(sizes) < _PROGRESS_MIN_BYTES:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    done_before = {"files": 0, "bytes": 0, "last": 0}
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), transient=True,
                  console=Console(stderr=True)) as bar:
        task = bar.add_task("reading captures", total=sum(sizes))

        def advance(consumed_in_file: int) -> None:
            if consumed_in_file < done_before["last"]:  # the next file began
                done_before["bytes"] += done_before["last"]
            done_before["last"] = consumed_in_file
            bar.update(task, completed=done_before["bytes"] + consumed_in_file)

        yield advance


def run() -> None:
    try:
        main()
    except KubeSonarError as exc:
        click.echo(f"kubesonar: error: {exc}", err=True)
        sys.exit(1)
