"""The ``kubesonar`` command. Every option is also an environment variable: KUBESONAR_<COMMAND>_<OPTION>."""

from __future__ import annotations

import gc

# what loading the command makes (modules, classes, functions) is never garbage, yet its thousands of
# objects set off collections that walked all of them again and again: 2-3 ms of every start. On again
# at the end of this module, as it was.
_COLLECTING = gc.isenabled()
gc.disable()

import json  # noqa: E402 - these imports, after the collector is paused
import os  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import click  # noqa: E402

from kubesonar.sensor.flow_table import FlowTimeouts  # noqa: E402
from kubesonar.shared.errors import ConfigError, KubeSonarError  # noqa: E402
from kubesonar.shared.flow import FlowRecords  # noqa: E402

if TYPE_CHECKING:
    from kubesonar.sensor.offline import CaptureStats

_TABLE_COLUMNS = ("first_ts", "src_ip", "src_port", "dst_ip", "dst_port", "proto", "packets_out",
                  "bytes_out", "packets_in", "bytes_in", "state")
_PROGRESS_MIN_BYTES = 16 << 20


def _cluster_name(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Refuse a name the backend would refuse (or file under another name): shared/names.py."""
    from kubesonar.shared.names import MAX_CLUSTER, MAX_NODE, name_fault

    if value is not None:
        fault = name_fault(param.name or "", value, MAX_CLUSTER if param.name == "cluster" else MAX_NODE)
        if fault:
            raise click.BadParameter(fault)
    return value


def _internal_networks(_ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
                       ) -> tuple[str, ...] | None:
    """--internal-network as analyze and backend take it: None when not given (the private ranges), ()
    for 'none' (every address outside), else the CIDRs, each checked here so a wrong one names the flag."""
    import ipaddress

    if not value:
        return None
    if value == ("none",):
        return ()
    for cidr in value:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise click.BadParameter(f"{cidr!r} is not a CIDR network", param=param) from None
    return value


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
    collecting = gc.isenabled()
    gc.disable()  # while its modules load, as this module's
    from kubesonar.allocator import keep_freed_blocks
    from kubesonar.sensor.offline import CaptureStats, flows_from_captures  # numba: not for the live sensor

    # what starting made (modules, classes, functions) is never garbage: the collections a long read
    # triggers need not walk it again (2% of a 1M-packet capture's CPU)
    gc.freeze()
    if collecting:
        gc.enable()
    keep_freed_blocks()
    stats = CaptureStats()
    timeouts = FlowTimeouts(active_s=active_timeout, idle_s=idle_timeout)
    with _progress(captures) as advance:
        stream = flows_from_captures(captures, timeouts=timeouts, stats=stats, progress=advance)
        _write_flows(stream, fmt)
    _end_with_capture_faults(stats)


@main.command()
@click.argument("captures", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--pods", type=click.Path(dir_okay=False), help="Output of 'kubectl get pods -A -o json'.")
@click.option("--learn", multiple=True, type=click.Path(dir_okay=False),
              help="Capture to learn from first (repeat for several); novelty detectors stay silent on it.")
@click.option("--state", "state_dir", type=click.Path(file_okay=False),
              help="Directory for baselines and alerts (kept between runs); default: a fresh temporary one.")
@click.option("--cluster", default="default", callback=_cluster_name, help="Cluster name alerts are filed under.")
@click.option("--allowlist", multiple=True, type=click.Path(dir_okay=False),
              help="YAML allowlist file (repeat for several); see docs/allowlists.md.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "ocsf"]), default="table",
              help="json: one alert per line; ocsf: one OCSF 1.3.0 Detection Finding per line.")
@click.option("--learning-period", type=click.FloatRange(min=0), default=None,
              help="Seconds of data time novelty detectors learn from the first flow [default: 86400]; 0: none.")
@click.option("--internal-network", "internal", multiple=True, callback=_internal_networks,
              help="A CIDR inside the cluster or VPC (repeat for several) [default: the private ranges, or "
                   "'none' when no flow leaves them]; 'none': every address is outside. See docs/detection.md.")
def analyze(captures: tuple[str, ...], pods: str | None, learn: tuple[str, ...], state_dir: str | None,
            cluster: str, allowlist: tuple[str, ...], fmt: str, learning_period: float | None,
            internal: tuple[str, ...] | None) -> None:
    """Run the offline sensor and the detection core on CAPTURES; print the alerts raised."""
    import logging

    from kubesonar.compose import analyze as run_analysis

    # a baseline started afresh comes back in result.errors, shown once below as a warning line
    logging.getLogger("kubesonar.shared.detectors").addHandler(logging.NullHandler())

    result = run_analysis(captures, learn=learn, pods=pods, state_dir=state_dir, cluster=cluster,
                          allowlists=allowlist, learning_period_s=learning_period, internal_networks=internal)
    if fmt in ("json", "ocsf"):
        from kubesonar import __version__
        from kubesonar.shared.ocsf import to_ocsf

        for alert in result.alerts:
            click.echo(json.dumps(to_ocsf(alert, __version__) if fmt == "ocsf" else alert, sort_keys=True))
    else:
        _alert_table(result.alerts)
    for fault in result.errors:  # the core went on without it: a broken list, a baseline started afresh
        click.echo(f"kubesonar: warning: {fault}", err=True)
    # beside a capture's fault too: the alerts read up to it were judged so
    if result.judged_all_outside and result.outside_flows:
        click.echo("kubesonar: note: no flow leaves the private ranges, so the captures were not taken at a "
                   "cluster's edge (a lab, an office LAN, a sandbox): every address was judged as outside the "
                   "cluster, as with --internal-network none; name the cluster's own ranges with "
                   "--internal-network CIDR, or its pods with --pods, to judge only traffic leaving them", err=True)
    if result.edge_from_state is not None and result.edge_from_state.networks is not None:
        click.echo(f"kubesonar: note: judged with the cluster's edge that the --state directory's earlier runs "
                   f"were judged with: {result.edge_from_state}; name --internal-network (or --pods) to judge "
                   "otherwise", err=True)
    if result.edge_before is not None:
        click.echo(f"kubesonar: warning: the --state directory's baselines were learned with another edge "
                   f"({result.edge_before}) than this run's ({result.edge}): destinations judged inside then were "
                   "never learned as outside; start a fresh --state to judge with this edge alone", err=True)
    all_inside = result.outside_with_no_internal_network and not result.outside_flows
    private_edge = result.edge_from_state is None or result.edge_from_state.networks is None
    if all_inside and internal is None and private_edge and not result.stats.errors:
        # a capture taken outside a cluster (a lab, an office LAN) is all private addresses: silence from
        # the outbound rules then says nothing about it, and the user should know (not beside a capture's
        # fault, which is the one line a failed run prints)
        click.echo("kubesonar: note: every flow's responder is inside the cluster's networks (by default the "
                   "private ranges), and beaconing, exfiltration, reverse shells and unusual destinations judge "
                   "only traffic leaving them; for a capture taken outside a cluster, pass --internal-network "
                   "none (or the cluster's own ranges)", err=True)
    _end_with_capture_faults(result.stats)


@main.command()
@click.argument("captures", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--queue", required=True,
              help="Where batches go: file://DIR, an SQS queue URL, pubsub://projects/P/topics/T, "
                   "eventgrid://TOPIC-HOSTNAME, nats://HOST:PORT/SUBJECT (docs/sensor.md).")
@click.option("--cluster", default="default", callback=_cluster_name, help="Cluster name the batches are filed under.")
@click.option("--node", default="replay", callback=_cluster_name, help="Node name the batches come from.")
@click.option("--pods", type=click.Path(dir_okay=False), help="Output of 'kubectl get pods -A -o json'.")
@click.option("--window", type=click.FloatRange(0.5, 3600), default=10.0,
              help="Seconds of capture time per batch, as the live sensor's window.")
@click.option("--key-file", type=click.Path(dir_okay=False),
              help="Keyring to sign batches with (docs/hardening.md); default: unsigned.")
def replay(captures: tuple[str, ...], queue: str, cluster: str, node: str, pods: str | None,
           window: float, key_file: str | None) -> None:
    """Publish CAPTURES to a queue as a sensor would have: real windows of real traffic, for driving any
    backend (tests, a new deployment)."""
    from kubesonar.compose import replay as run_replay
    from kubesonar.sensor.queues import open_publisher
    from kubesonar.shared.url_credentials import without_credentials

    def show(summary) -> None:
        if sys.stderr.isatty():
            click.echo(f"\r{summary.windows} windows, {summary.messages} messages", err=True, nl=False)

    summary = run_replay(captures, open_publisher(queue), cluster=cluster, node=node, pods=pods,
                         window_s=window, progress=show, signer=_signer(key_file, cluster))
    click.echo(f"published {summary.messages} messages ({summary.flows} flows, {summary.dns} DNS messages, "
               f"{summary.bytes} bytes) in {summary.windows} windows to {without_credentials(queue)}", err=True)
    _end_with_capture_faults(summary.stats)


@main.command()
@click.option("--workdir", type=click.Path(file_okay=False),
              help="Keep the generated captures, pod list and state here (default: a temporary directory).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              help="json: one alert per line, as analyze prints them.")
def demo(workdir: str | None, fmt: str) -> None:
    """Simulate a small cluster (learning, then a new workload and a port scan) and show the alerts."""
    import time

    from kubesonar.demo import run_demo

    started = time.perf_counter()
    result, truth = run_demo(workdir)
    if fmt == "json":
        for alert in result.alerts:
            click.echo(json.dumps(alert, sort_keys=True))
        return
    click.echo(f"demo cluster: {result.flows} flows scored after a learning day; planted: a port scan from "
               f"{truth['scanner']}; the new workload {truth['new_workload']}, which reads instance metadata, "
               "probes a kubelet, brute-forces the database, tunnels through DNS, beacons and reaches a "
               f"watchlisted host; {truth['crypto_mining']} mining; {truth['exfiltration']} uploading 80 MB "
               "and opening a new port")
    _alert_table(result.alerts)
    click.echo(f"({time.perf_counter() - started:.1f} s)")


def _capture_options(command: Callable) -> Callable:
    """Options shared by the live commands (each also KUBESONAR_<COMMAND>_<OPTION>)."""
    options = [
        click.option("--interface", "-i", "interface", multiple=True, required=True,
                     help="Interface to capture on, or a shell pattern such as 'veth*' matched every window "
                          "(repeat for several; in the environment, separate them with spaces)."),
        click.option("--window", type=click.FloatRange(0.5, 3600), default=10.0,
                     help="Seconds per window: flows are published (and a heartbeat sent) this often."),
        click.option("--filter", default="", help="tcpdump-style capture filter (needs libpcap)."),
        click.option("--cluster", default="default", callback=_cluster_name,
                     help="Cluster name batches and alerts are filed under."),
        click.option("--node", default=None, callback=_cluster_name,
                     help="Node name [default: NODE_NAME, else the host name]."),
        click.option("--max-flows", type=click.IntRange(1024), default=65_536,
                     help="Cap on the live flow table (with --workers, shared: each worker holds its share); past "
                          "it the least recently active flows are sent early."),
        click.option("--duration", type=click.FloatRange(min=0.1), default=None,
                     help="Stop after this many seconds (default: run until SIGTERM or Ctrl-C)."),
        click.option("--direction", type=click.Choice(["both", "in"]), default="both",
                     help="in: count each packet where it enters the node, so one crossing two captured "
                          "interfaces (pod to pod on a routed CNI) counts once; capture the uplink too "
                          "(docs/sensor.md)."),
        click.option("--ring", type=click.Choice(["auto", "v3", "v2"]), default="auto",
                     help="Capture ring: auto takes TPACKET_V3 and falls back to V2 where the kernel refuses it "
                          "(each interface's choice is logged)."),
        click.option("--workers", type=click.IntRange(1, 64), default=1,
                     help="Capture processes, each with its own rings (one PACKET_FANOUT group per interface, "
                          "hashed by flow) and flow table; about one per core the sensor may use."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _settings(interface, window, filter, cluster, node, max_flows, direction, ring, workers):  # noqa: A002 - the option's name
    import logging

    from kubesonar.sensor.af_packet import RingConfig
    from kubesonar.sensor.live import SensorSettings, default_node_name

    # which ring each interface got (TPACKET_V3, or V2 on an old kernel) and when the queue goes away and
    # comes back go to standard error
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("kubesonar: %(message)s"))
    for name in ("kubesonar.sensor.af_packet", "kubesonar.sensor.spool", "kubesonar.sensor.queues.refusals",
                 "kubesonar.sensor.kube"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    return SensorSettings(tuple(interface), window_s=window, capture_filter=filter, cluster=cluster,
                          node=node or default_node_name(), max_flows=max_flows, arrivals_only=direction == "in",
                          ring=RingConfig(version=ring), workers=workers)


def _run_until_signal(sensor, duration: float | None, terminated: Callable[[], None] | None = None) -> None:
    """Run until SIGTERM or SIGINT (or ``duration``); ``terminated`` is told of a SIGTERM, what a node being
    removed sends, before the last batch is published."""
    import signal
    import threading

    stop = threading.Event()

    def stopped(sig: int, _frame) -> None:
        if sig == signal.SIGTERM and terminated:
            terminated()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stopped)
    sensor.run(stop, duration_s=duration)


@main.command()
@_capture_options
@click.option("--queue", required=True,
              help="Where batches go: file://DIR, an SQS queue URL, pubsub://projects/P/topics/T, an Event "
                   "Grid topic endpoint or nats://HOST:PORT/SUBJECT (docs/sensor.md).")
@click.option("--spool", type=click.Path(file_okay=False), default="/var/lib/kubesonar/spool",
              help="Directory that holds batches while the queue cannot be reached.")
@click.option("--spool-max-bytes", type=click.IntRange(min=1 << 20), default=256 << 20,
              help="Bound of the spool; beyond it the oldest batches are dropped and counted.")
@click.option("--pods", type=click.Path(dir_okay=False),
              help="Static pod inventory ('kubectl get pods -A -o json') instead of watching the API.")
@click.option("--kubernetes/--no-kubernetes", default=False,
              help="Watch this node's pods through the Kubernetes API (in-cluster configuration).")
@click.option("--key-file", type=click.Path(dir_okay=False),
              help="Keyring (a mounted Kubernetes Secret) to sign batches with; docs/hardening.md.")
@click.option("--health-file", type=click.Path(dir_okay=False),
              help="File the sensor loop rewrites as it publishes, for a liveness probe: `python -m "
                   "kubesonar.sensor.liveness FILE` fails once it is 3 windows and 2 minutes stale "
                   "(docs/sensor.md). Off by default.")
def sensor(interface, window, filter, cluster, node, max_flows, duration, direction, ring, workers,  # noqa: A002
           queue, spool, spool_max_bytes, pods, kubernetes, key_file, health_file) -> None:
    """Capture live traffic and publish a batch of flows (and a heartbeat) every window."""
    from kubesonar.compose import build_sensor
    from kubesonar.shared.url_credentials import without_credentials

    settings = _settings(interface, window, filter, cluster, node, max_flows, direction, ring, workers)
    enrich, watcher = _enrichment(pods, kubernetes, settings.node)
    live = build_sensor(settings, queue, spool, spool_max_bytes, enrich, watcher, signer=_signer(key_file, cluster),
                        health_file=health_file)
    click.echo(f"kubesonar sensor {live.sensor_id}: capturing on {', '.join(interface)}, publishing to "
               f"{without_credentials(queue)}", err=True)
    try:
        _run_until_signal(live, duration, watcher.terminating if watcher else None)
    finally:
        if watcher:
            watcher.stop()
    for error in live.errors:
        click.echo(f"kubesonar: error: {error}", err=True)


@main.command()
@_capture_options
@click.option("--pods", type=click.Path(dir_okay=False), help="Output of 'kubectl get pods -A -o json'.")
@click.option("--state", "state_dir", type=click.Path(file_okay=False),
              help="Directory for baselines and alerts (kept between runs); default: a fresh temporary one.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              help="json: one alert per line, as analyze prints them.")
def watch(interface, window, filter, cluster, node, max_flows, duration, direction, ring, workers,  # noqa: A002
          pods, state_dir, fmt) -> None:
    """Capture live traffic and run the detection core in this process; print alerts as they happen."""
    import tempfile

    from kubesonar.compose import build_watch

    settings = _settings(interface, window, filter, cluster, node, max_flows, direction, ring, workers)
    enrich, _ = _enrichment(pods, False, settings.node)

    def show(alert: dict) -> None:
        if fmt == "json":
            click.echo(json.dumps(alert, sort_keys=True))
        else:
            _alert_table([alert])
        sys.stdout.flush()

    with tempfile.TemporaryDirectory(prefix="kubesonar-watch-") as tmp:
        live, backend = build_watch(settings, state_dir or tmp, enrich, show)
        click.echo(f"kubesonar watch: capturing on {', '.join(interface)}; alerts appear here", err=True)
        _run_until_signal(live, duration)
    for error in live.errors + backend.errors:
        click.echo(f"kubesonar: error: {error}", err=True)


def _signer(key_file: str | None, cluster: str) -> Callable[[bytes], bytes] | None:
    """The keyring's signing function, checked to speak for ``cluster``; None without a key file."""
    if not key_file:
        return None
    from kubesonar.shared.signing import Keyring

    keyring = Keyring.load(key_file)
    keyring.check_signs_for(cluster)
    return keyring.sign


@main.command()
@click.option("--queue", required=True,
              help="Where batches arrive: nats://HOST:PORT/SUBJECT (a replica of the shared consumer) or "
                   "file://DIR (the embedded default's queue directory). See docs/onprem.md.")
@click.option("--store", required=True,
              help="Baselines and alerts: nats://HOST:PORT/BUCKET (JetStream KV), a directory, s3://BUCKET, "
                   "gs://BUCKET, az://ACCOUNT/CONTAINER.")
@click.option("--notify", multiple=True,
              help="Where new alerts go, nats://HOST:PORT[/SUBJECT-PREFIX] (repeat for several) [default with a "
                   "NATS queue: its server, on kubesonar.alerts.<severity>.<type>].")
@click.option("--consumer", default="kubesonar-backend", help="Durable consumer the replicas share (NATS).")
@click.option("--batch", type=click.IntRange(1, 1000), default=64,
              help="Messages fetched and scored together in one step.")
@click.option("--max-deliveries", type=click.IntRange(1, 100), default=5,
              help="Deliveries of a failing message before it goes to the dead-letter stream.")
@click.option("--ack-wait", type=click.FloatRange(5, 3600), default=120.0,
              help="Seconds before a message fetched by a replica that went away is delivered again.")
@click.option("--listen", default="0.0.0.0:9100", help="HOST:PORT of /metrics, /healthz and /readyz.")
@click.option("--check-interval", type=click.FloatRange(min=1), default=60.0,
              help="Seconds between sensor-health checks (silent sensors).")
@click.option("--learning-period", type=click.FloatRange(min=0), default=24 * 3600.0,
              help="Seconds of data time novelty detectors learn from the first flow.")
@click.option("--sensor-silent-after", type=click.FloatRange(min=1), default=60.0,
              help="Seconds without a heartbeat after which a sensor is silent.")
@click.option("--internal-network", "internal", multiple=True, callback=_internal_networks,
              help="A CIDR inside the cluster (repeat for several) [default: the private ranges]; 'none': every "
                   "address is outside.")
@click.option("--duration", type=click.FloatRange(min=0.1), default=None,
              help="Stop after this many seconds (default: run until SIGTERM).")
def backend(queue, store, notify, consumer, batch, max_deliveries, ack_wait, listen, check_interval,
            learning_period, sensor_silent_after, internal, duration) -> None:
    """Run the backend as a long-running process: batches from a queue, scored into a store."""
    import logging

    try:
        from kubesonar.backend_runner import BackendSettings, run_backend
    except ModuleNotFoundError as exc:  # prometheus-client serves /metrics, on the embedded default too
        raise ConfigError(f"kubesonar backend needs a package this installation lacks: {exc.name}; install "
                          "kubesonar[nats] (the backend's extra)") from None
    from kubesonar.shared.netzones import PRIVATE_NETWORKS

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_backend(BackendSettings(queue, store, tuple(notify), consumer, batch, max_deliveries, ack_wait, listen,
                                check_interval, learning_period, sensor_silent_after,
                                PRIVATE_NETWORKS if internal is None else internal, duration))


def _enrichment(pods: str | None, use_kube: bool, node: str):
    """(enrich function or None, Kubernetes watcher or None) for a live command."""
    if pods and use_kube:
        raise click.UsageError("--pods and --kubernetes are alternatives; choose one")
    if pods:
        from kubesonar.shared.inventory import PodInventory

        return PodInventory.load(pods).enrich, None
    if use_kube:
        watcher = _in_cluster_watcher(node)
        watcher.start()
        return watcher.enrich, watcher
    return None, None


def _in_cluster_watcher(node: str):
    """The pod watch, or a ConfigError saying why there is none: run outside a pod (or without the sensor
    extra), the Kubernetes client's own exception was a traceback that named neither the flag nor the way out."""
    try:
        from kubernetes.config import ConfigException

        from kubesonar.sensor.kube import KubeWatcher
    except ImportError as exc:
        raise ConfigError(f"--kubernetes needs the Kubernetes client ({exc.name} is not installed): "
                          "pip install 'kubesonar[sensor]'") from None
    try:
        return KubeWatcher.in_cluster(node)
    except ConfigException as exc:
        raise ConfigError(f"--kubernetes needs the in-cluster configuration of a pod ({exc}); outside a cluster, "
                          "name the pods with --pods FILE ('kubectl get pods -A -o json')") from None


def _alert_table(alerts: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    from kubesonar.shared.alerts import alert_rule

    out = click.get_text_stream("stdout")
    console = Console(width=None if out.isatty() else 160)
    if not alerts:
        console.print("no alerts")
        return
    table = Table("severity", "type", "source", "first seen", "count", "evidence", box=None)
    for a in alerts:
        source = a["source"].get("workload") or a["source"].get("ip")
        rule = alert_rule(a)  # the type column stays the type alone: scripts read it
        shown = ({"rule": rule} if rule != a["type"] else {}) | a["evidence"]
        evidence = ", ".join(f"{k}={v}" for k, v in shown.items() if not isinstance(v, list))
        table.add_row(a["severity"], a["type"], source, a["first_seen"], str(a["count"]), evidence)
    console.print(table)


def _write_flows(stream: Iterator[FlowRecords], fmt: str) -> None:
    out = click.get_text_stream("stdout")
    if fmt == "jsonl":
        from kubesonar.flow_text import write_jsonl_bytes

        out.flush()  # the lines go under it, as bytes
        write_jsonl_bytes(stream, click.get_binary_stream("stdout"))
    elif fmt == "csv":
        from kubesonar.flow_text import write_csv

        write_csv(stream, out)
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
        from datetime import UTC, datetime

        return datetime.fromtimestamp(float(value), tz=UTC).strftime("%H:%M:%S.%f")
    return str(value)


def _end_with_capture_faults(stats: CaptureStats) -> None:
    """A capture's faults on stderr and exit 1; without one, its notes (a capture holding no IP packet):
    a fault is the one line a failed run prints."""
    if not stats.errors:
        for note in stats.notes:
            click.echo(f"kubesonar: note: {note}", err=True)
    for error in stats.errors:
        click.echo(f"kubesonar: error: {error}", err=True)
    if stats.errors:
        sys.exit(1)


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


__import__("kubesonar.cli_alerts").cli_alerts.register(main)  # triage: alerts, allowlist, watchlist


def _name_environment_after_flags(group: click.Group, prefix: str = "KUBESONAR") -> None:
    """Make KUBESONAR_<COMMAND>_<OPTION> hold for every option, <OPTION> being its flag: click's automatic
    name follows the parameter's name instead, so ``--format`` (stored as ``fmt``) read only
    KUBESONAR_FLOWS_FMT and the documented KUBESONAR_FLOWS_FORMAT was silently ignored. The automatic name
    and any explicit one still work."""
    for name, command in group.commands.items():
        command_prefix = f"{prefix}_{name.upper().replace('-', '_')}"
        for param in command.params:
            flags = [o for o in param.opts if o.startswith("--")] if isinstance(param, click.Option) else []
            if not flags or param.name is None:
                continue
            documented = f"{command_prefix}_{flags[0][2:].upper().replace('-', '_')}"
            given = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or ())
            if documented != f"{command_prefix}_{param.name.upper()}" and documented not in given:
                param.envvar = [*given, documented]
        if isinstance(command, click.Group):
            _name_environment_after_flags(command, command_prefix)


_name_environment_after_flags(main)
# frozen, not walked: enabled as it stood, the collector would at once walk every object made while it
# was paused (far past its threshold), 4-5 ms of every start, to find none of them garbage
gc.freeze()
if _COLLECTING:
    gc.enable()


def run() -> None:
    try:
        main()
    except KubeSonarError as exc:
        click.echo(f"kubesonar: error: {exc}", err=True)
        sys.exit(1)
