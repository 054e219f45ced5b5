"""The kubesonar command as a user runs it."""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import subprocess

from conftest import PCAPS

REQUIRED = {"src_ip", "dst_ip", "src_port", "dst_port", "proto", "packets_out", "bytes_out", "packets_in",
            "bytes_in", "first_ts", "last_ts", "state"}


def _run(*args, env: dict[str, str] | None = None):
    return subprocess.run(["kubesonar", *args], capture_output=True, text=True, timeout=120,
                          env=None if env is None else {**os.environ, **env})


def test_flows_jsonl_has_the_documented_fields():
    result = _run("flows", "--format", "jsonl", str(PCAPS / "portscan/evilfingers_nmap_UDP_SCAN.pcap"))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 1030 and all(REQUIRED <= set(r) for r in rows)
    rejected = [r for r in rows if r["state"] == "rejected"]
    assert len(rejected) == 993 and all(r["src_ip"] == "192.168.1.10" for r in rejected)


def test_flows_csv_and_table():
    path = str(PCAPS / "benign/ndpi_ssh.pcap")
    rows = list(csv.DictReader(io.StringIO(_run("flows", "--format", "csv", path).stdout)))
    assert len(rows) == 3 and REQUIRED <= set(rows[0])
    table = _run("flows", path).stdout
    assert "172.16.238.168" in table and "established" in table


def test_a_missing_file_is_one_clear_line():
    result = _run("flows", "no-such.pcap")
    assert result.returncode == 1
    assert result.stderr.strip() == "kubesonar: error: cannot open capture 'no-such.pcap': No such file or directory"


def test_a_truncated_capture_gives_the_flows_read_so_far_and_an_error(tmp_path):
    whole = (PCAPS / "benign/chrissanders_http_espn.pcapng").read_bytes()
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(whole[: len(whole) // 2])
    result = _run("flows", "--format", "jsonl", str(cut))
    assert result.returncode == 1
    assert "truncated record" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stdout.splitlines()) > 5


def test_settings_come_from_the_environment_too(tmp_path):
    path = str(PCAPS / "benign/ndpi_ssh.pcap")
    env_run = subprocess.run(["kubesonar", "flows", "--format", "jsonl", path], capture_output=True, text=True,
                             env={**__import__("os").environ, "KUBESONAR_FLOWS_IDLE_TIMEOUT": "1000000"})
    flag_run = _run("flows", "--format", "jsonl", "--idle-timeout", "1000000", path)
    default_run = _run("flows", "--format", "jsonl", path)
    assert env_run.stdout == flag_run.stdout != default_run.stdout


def test_analyze_learns_from_learn_captures_and_names_workloads_from_the_pods_file(tmp_path):
    assert _run("demo", "--workdir", str(tmp_path), "--format", "json").returncode == 0
    detection, learning, pods = (str(tmp_path / n) for n in ("detection.pcap", "learning.pcap", "pods.json"))
    learned = _run("analyze", detection, "--learn", learning, "--pods", pods, "--format", "json")
    assert learned.returncode == 0, learned.stderr
    alerts = {a["type"]: a for a in map(json.loads, learned.stdout.splitlines())}
    # every rule but watchlist_hit: the demo's watchlist lives in the demo's state, not in this fresh one
    assert sorted(alerts) == ["api_server_access", "beaconing", "brute_force", "crypto_mining", "dns_tunneling",
                              "exfiltration", "metadata_access", "new_workload", "port_scan", "unusual_destination"]
    assert alerts["new_workload"]["source"]["workload"] == "default/Deployment/debug-tools"
    assert alerts["port_scan"]["source"]["workload"] == "shop/Deployment/frontend"
    # without --learn the detection capture is the start of the (24 h) learning period: no new workload,
    # the database pair and the upload are learned, not judged; behaviour that needs no baseline (the
    # beacon, the scan, the tunnel, the mining, control-plane access) is judged cold
    unlearned = _run("analyze", detection, "--pods", pods, "--format", "json")
    assert sorted(json.loads(line)["type"] for line in unlearned.stdout.splitlines()) == [
        "api_server_access", "beaconing", "crypto_mining", "dns_tunneling", "metadata_access", "port_scan"]
    # without --pods endpoints are addresses
    anonymous = [json.loads(line) for line in _run("analyze", detection, "--format", "json").stdout.splitlines()]
    assert sorted((a["type"], a["source"]["workload"]) for a in anonymous) == [
        ("beaconing", ""), ("crypto_mining", ""), ("dns_tunneling", ""), ("metadata_access", ""),
        ("port_scan", "")]  # a kubelet probe is judged only from a known pod


def test_analyze_rejects_a_bad_pods_file_in_one_line(tmp_path):
    bad = tmp_path / "pods.json"
    bad.write_text('{"items": [')
    result = _run("analyze", str(PCAPS / "benign/ndpi_ssh.pcap"), "--pods", str(bad))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("kubesonar: error:") and "pods.json" in result.stderr


def test_live_commands_fail_in_one_line_on_bad_settings(tmp_path):
    cases = [
        (["sensor", "-i", "lo", "--queue", "kafka://x"], "is not one of: file://DIR"),
        (["sensor", "-i", "no-such-if0", "--queue", f"file://{tmp_path}/q", "--spool", str(tmp_path / "s"),
          "--duration", "1"], "no interface matches no-such-if0"),
        (["watch", "-i", "lo", "--filter", "tcp port", "--duration", "1"], "bad capture filter 'tcp port'"),
        (["sensor", "-i", "lo", "--queue", "pubsub://projects/my-project/topics/flows"], "no Google credentials"),
        # README's `kubesonar sensor ... --kubernetes` run outside a pod: a traceback of the client's
        (["sensor", "-i", "lo", "--queue", f"file://{tmp_path}/q", "--spool", str(tmp_path / "s"), "--kubernetes",
          "--duration", "1"], "--kubernetes needs the in-cluster configuration"),
    ]
    # no credentials anywhere, and the metadata server is not even asked (no traffic leaves the machine)
    no_google = {"NO_GCE_CHECK": "True", "GOOGLE_APPLICATION_CREDENTIALS": "", "PUBSUB_EMULATOR_HOST": "",
                 "CLOUDSDK_CONFIG": str(tmp_path / "no-gcloud"), "KUBERNETES_SERVICE_HOST": ""}  # nor in a pod
    for args, message in cases:
        result = _run(*args, env=no_google)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert message in result.stderr, result.stderr


def test_analyze_takes_the_learning_period_and_internal_networks():
    rat = str(PCAPS / "c2_beacon/chrissanders_ratinfected.pcapng")
    judged = _run("analyze", rat, "--learning-period", "0", "--internal-network", "none", "--format", "json")
    assert [(json.loads(x)["type"], json.loads(x)["rule"]) for x in judged.stdout.splitlines()] == [("beaconing", "beaconing")]
    note = "every flow's responder is inside the cluster's networks"
    lab_note = "no flow leaves the private ranges"
    assert note not in judged.stderr and lab_note not in judged.stderr
    # by default, a capture in which nothing leaves the private ranges (a lab: both ends in 172.16/12) is
    # judged as with 'none', and the user is told so
    default = _run("analyze", rat, "--learning-period", "0", "--format", "json")
    def found(run):
        return [(a["type"], a["source"]["ip"], a["destination"]) for a in map(json.loads, run.stdout.splitlines())]

    assert default.returncode == 0 and found(default) == found(judged)
    assert lab_note in default.stderr and note not in default.stderr
    inside = _run("analyze", rat, "--learning-period", "0", "--internal-network", "172.16.0.0/12", "--format", "json")
    assert inside.returncode == 0 and inside.stdout == ""  # the cluster's range named: nothing leaves it
    public = str(PCAPS / "mining/nesfit_xmr-eu1.nanopool.org.pcapng")
    plain = _run("analyze", public, "--format", "json").stderr
    assert note not in plain and lab_note not in plain
    # the edge is known once any capture crosses it, a learned one too; then the note speaks of the
    # captures scored, all inside
    learned_public = _run("analyze", rat, "--learn", public, "--learning-period", "0", "--format", "json")
    assert "172.16.0.111" not in {a[2]["ip"] for a in found(learned_public) if a[2]}  # rat's server: inside
    assert note in learned_public.stderr and lab_note not in learned_public.stderr
    bad = _run("analyze", rat, "--internal-network", "10.0.0.0/33")
    assert bad.returncode == 2 and "is not a CIDR network" in bad.stderr and "Traceback" not in bad.stderr


def test_analyze_says_nothing_of_networks_when_no_flow_would_leave_them(tmp_path):
    """Multicast and loopback flows are inside whatever the internal networks: no note."""
    from scapy.all import IP, UDP, Ether, Raw, wrpcap

    packets = [Ether() / IP(src="192.168.1.5", dst="224.0.0.251") / UDP(sport=5353, dport=5353) / Raw(b"q" * 20),
               Ether() / IP(src="127.0.0.1", dst="127.0.0.1") / UDP(sport=40000, dport=8080) / Raw(b"x")]
    for i, p in enumerate(packets):
        p.time = 1_700_000_000 + i
    wrpcap(str(tmp_path / "local.pcap"), packets)
    done = _run("analyze", str(tmp_path / "local.pcap"), "--format", "json")
    assert done.returncode == 0 and "cluster's networks" not in done.stderr


def _handshake_capture(path, src, dst) -> str:
    """One TCP handshake from src to dst's SSH port."""
    from scapy.all import IP, TCP, Ether, wrpcap

    packets = [Ether() / IP(src=src, dst=dst) / TCP(sport=40000, dport=22, flags="S"),
               Ether() / IP(src=dst, dst=src) / TCP(sport=22, dport=40000, flags="SA")]
    for i, p in enumerate(packets):
        p.time = 1_700_000_000 + i
    wrpcap(str(path), packets)
    return str(path)


def test_the_private_ranges_are_the_edge_when_any_flow_crosses_them_either_way(tmp_path):
    """A public host knocking on a private one crosses the edge as much as a private host reaching out:
    the private ranges stay the cluster's edge, and the note says only that nothing left them."""
    from kubesonar.compose import analyze

    inbound = _handshake_capture(tmp_path / "inbound.pcap", "198.51.100.9", "192.168.1.5")
    lab = _handshake_capture(tmp_path / "lab.pcap", "192.168.1.7", "192.168.1.5")
    assert not analyze([inbound]).judged_all_outside and analyze([lab]).judged_all_outside
    assert not analyze([lab], learn=[inbound]).judged_all_outside  # a learned capture shows the edge too
    assert not analyze([lab], internal_networks=("192.168.1.0/24",)).judged_all_outside  # named: no guess
    done = _run("analyze", inbound, "--format", "json")
    assert done.returncode == 0 and "every flow's responder is inside" in done.stderr
    assert "no flow leaves the private ranges" not in done.stderr


def test_a_kept_state_is_judged_with_one_edge_across_runs(tmp_path):
    """Baselines kept in --state were learned with one edge. A later run that names none took its own
    guess (a capture crossing the private ranges after a lab's that did not), mixing baselines learned
    with every address outside and with the private ranges: it now takes the recorded edge, and says so.
    One that names another edge is warned, and its edge is the one kept from then on."""
    from kubesonar.compose import EDGE_KEY, Edge, analyze

    state = tmp_path / "state"
    inbound = _handshake_capture(tmp_path / "inbound.pcap", "198.51.100.9", "192.168.1.5")
    lab = _handshake_capture(tmp_path / "lab.pcap", "192.168.1.7", "192.168.1.5")
    assert analyze([str(tmp_path / "missing.pcap")], state_dir=str(state)).stats.errors
    first = analyze([lab], state_dir=str(state))  # a run that read nothing recorded no edge before it
    assert first.judged_all_outside and first.edge == Edge(()) and first.edge_from_state is None
    later = _run("analyze", inbound, "--state", str(state), "--format", "json")
    assert later.returncode == 0 and "every address outside" in later.stderr
    assert "no flow leaves the private ranges" not in later.stderr
    assert analyze([inbound], state_dir=str(state)).edge_from_state == Edge(())
    assert analyze([inbound]).edge == Edge(None)  # without the state: the private ranges, as guessed
    named = _run("analyze", inbound, "--state", str(state), "--internal-network", "192.168.1.0/24")
    assert named.returncode == 0 and "learned with another edge (every address outside" in named.stderr
    kept = analyze([lab], state_dir=str(state))
    assert kept.edge_from_state == Edge(("192.168.1.0/24",)) and kept.edge_before is None
    pods_state = tmp_path / "pods-state"  # a run with --pods keeps the private ranges for the next ones
    pods = tmp_path / "pods.json"
    pods.write_text('{"kind": "List", "apiVersion": "v1", "items": []}')
    assert _run("analyze", lab, "--state", str(pods_state), "--pods", str(pods)).returncode == 0
    unnamed = _run("analyze", lab, "--state", str(pods_state))
    assert unnamed.returncode == 0 and "every flow's responder is inside" in unnamed.stderr  # not silent
    (state / EDGE_KEY.format(cluster="default")).write_text("{not json")
    broken = analyze([lab], state_dir=str(state))
    assert broken.judged_all_outside and any("unreadable" in e for e in broken.errors)
    assert analyze([lab], state_dir=str(state)).edge_from_state == Edge(())  # recorded again


def test_a_corrupt_capture_among_good_ones_costs_only_its_own_flows(tmp_path):
    """The edge read ahead and the scoring read both go on past a capture that is cut, empty or missing:
    a flow beyond the private ranges after it still shows the edge, and every good capture's flows count."""
    from scapy.all import IP, TCP, Ether, wrpcap

    from kubesonar.compose import analyze

    def capture(name, dst, port):
        packets = [Ether() / IP(src="192.168.1.5", dst=dst) / TCP(sport=40000 + i, dport=port, flags="S")
                   for i in range(4)]
        for i, p in enumerate(packets):
            p.time = 1_700_000_000 + i
        wrpcap(str(tmp_path / name), packets)
        return str(tmp_path / name)

    lab, public = capture("lab.pcap", "192.168.1.7", 22), capture("public.pcap", "198.51.100.9", 443)
    cut = tmp_path / "cut.pcap"
    cut.write_bytes((tmp_path / "lab.pcap").read_bytes()[:-9])
    (tmp_path / "empty.pcap").write_bytes(b"")
    faulty = [str(cut), str(tmp_path / "empty.pcap"), str(tmp_path / "missing.pcap")]
    result = analyze([lab, *faulty, public])
    assert (result.flows, result.stats.capture_errors, result.judged_all_outside) == (8, 3, False)
    assert result.outside_flows == 4  # the public capture's, judged with the private ranges as the edge


def test_the_same_networks_named_in_another_order_are_the_same_edge(tmp_path):
    """A user's script naming the cluster's ranges in another order (or a CIDR with host bits) names the
    edge the state was learned with: no warning to start a fresh --state, which would discard its
    baselines for nothing."""
    state = tmp_path / "state"
    inbound = _handshake_capture(tmp_path / "inbound.pcap", "198.51.100.9", "192.168.1.5")
    first = _run("analyze", inbound, "--state", str(state), "--internal-network", "10.0.0.0/8",
                 "--internal-network", "192.168.1.0/24")
    again = _run("analyze", inbound, "--state", str(state), "--internal-network", "192.168.1.7/24",
                 "--internal-network", "10.0.0.0/8")
    assert first.returncode == again.returncode == 0, again.stderr
    assert "learned with another edge" not in again.stderr


def test_a_recorded_edge_naming_no_network_is_found_anew(tmp_path):
    """A state's edge record whose networks do not parse (edited by hand, written half) is unreadable as a
    broken JSON one is: the run says so and guesses the edge, instead of stopping with an error that
    blames --internal-network, which the user never passed."""
    from kubesonar.compose import EDGE_KEY

    state = tmp_path / "state"
    (state / EDGE_KEY.format(cluster="default")).parent.mkdir(parents=True)
    (state / EDGE_KEY.format(cluster="default")).write_text('{"internal_networks": ["10.0.0.0/33"]}')
    lab = _handshake_capture(tmp_path / "lab.pcap", "192.168.1.7", "192.168.1.5")
    done = _run("analyze", lab, "--state", str(state), "--format", "json")
    assert done.returncode == 0, done.stderr
    assert "unreadable" in done.stderr and "is not a CIDR network" not in done.stderr
    assert json.loads((state / EDGE_KEY.format(cluster="default")).read_text()) == {"internal_networks": []}


def test_the_lab_note_is_given_beside_a_capture_fault(tmp_path):
    """A capture cut short (tcpdump killed) is scored up to the cut, judged with every address outside as
    the whole one is: the alerts on private addresses that judgement raised need the note that explains
    it, fault or not; the fault stays the last line."""
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes((PCAPS / "c2_beacon/chrissanders_ratinfected.pcapng").read_bytes()[:300_000])
    done = _run("analyze", str(cut), "--learning-period", "0", "--format", "json")
    assert done.returncode == 1 and [json.loads(x)["destination"]["ip"] for x in done.stdout.splitlines()] == [
        "172.16.0.111"]
    lines = done.stderr.splitlines()
    assert "no flow leaves the private ranges" in lines[0] and "truncated record" in lines[-1]


def test_a_capture_without_one_ip_packet_says_so(tmp_path):
    """ARP alone, or IP behind a header that names the wrong link type (Ethernet frames filed as raw IP):
    no flow, and 'no alerts' with nothing else said looked like traffic judged clean. A note names the
    capture and both readings (or the snap length that cut every IP header); not beside a fault, which
    stays the one line of a failed run."""
    from scapy.all import ARP, IP, TCP, Ether, wrpcap

    arp = tmp_path / "arp.pcap"
    wrpcap(str(arp), [Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst=f"10.0.0.{i}") for i in range(5)])
    mislabelled = tmp_path / "raw.pcap"
    wrpcap(str(mislabelled), [Ether() / IP(dst="198.51.100.7") / TCP(dport=443, flags="S") for _ in range(3)],
           linktype=101)
    flows = _run("flows", "--format", "jsonl", str(arp))
    assert flows.returncode == 0 and flows.stdout == ""
    assert flows.stderr.splitlines() == [f"kubesonar: note: {arp}: none of its 5 packets is IPv4 or IPv6 (link type "
                                         "1), so no flow came from it; if it holds IP traffic, its header names the "
                                         "wrong link type"]
    analyzed = _run("analyze", str(mislabelled))
    assert analyzed.returncode == 0 and f"{mislabelled}: none of its 3 packets is IPv4 or IPv6 (link type 101)" in \
        analyzed.stderr
    snapped = tmp_path / "snapped.pcap"  # tcpdump -s 20: each packet cut inside its IP header
    records = [struct.pack("<IIII", 1_700_000_000, i, 20, 54) + bytes(Ether() / IP() / TCP())[:20] for i in range(4)]
    snapped.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 20, 1) + b"".join(records))
    assert "each of its 4 packets was cut before the end of its IP header" in _run("flows", str(snapped)).stderr
    faulty = tmp_path / "cut.pcap"
    faulty.write_bytes(arp.read_bytes()[:-5])
    failed = _run("flows", str(faulty))
    assert failed.returncode == 1 and len(failed.stderr.splitlines()) == 1 and "truncated record" in failed.stderr


def test_a_capture_from_a_pipe_or_a_fifo_is_read_once(tmp_path):
    """`tcpdump -w - | kubesonar analyze -`: a stream cannot be read twice, so it is not read ahead for the
    cluster's edge (that read took all of standard input, and the scoring read found it empty, exit 1; a
    FIFO's second open waited for a writer forever). The private ranges stay the edge, as before."""
    import threading

    def alerts(run):
        return sorted((a["type"], a["source"]["ip"]) for a in map(json.loads, run.stdout.splitlines()))

    public = PCAPS / "mining/nesfit_xmr-eu1.nanopool.org.pcapng"
    with public.open("rb") as stdin:
        piped = subprocess.run(["kubesonar", "analyze", "-", "--format", "json"], stdin=stdin, capture_output=True,
                               text=True, timeout=120)
    assert piped.returncode == 0, piped.stderr
    assert alerts(piped) == alerts(_run("analyze", str(public), "--format", "json")) != []
    lab = PCAPS / "c2_beacon/chrissanders_ratinfected.pcapng"  # nothing beyond the private ranges
    fifo = tmp_path / "capture"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(lab.read_bytes()), daemon=True)
    writer.start()
    try:
        done = subprocess.run(["kubesonar", "analyze", str(fifo), "--learning-period", "0", "--format", "json"],
                              capture_output=True, text=True, timeout=60)
    finally:
        if writer.is_alive():  # the command never opened it: let the writer go
            with open(fifo, "rb") as unblock:
                unblock.read()
    assert done.returncode == 0 and done.stdout == "", done.stderr
    assert "every flow's responder is inside" in done.stderr  # and --internal-network none is suggested


def test_a_command_whose_extra_is_not_installed_says_which_package_in_one_line(tmp_path):
    """`pip install -e .` (the README's quick start) brings no extra: `kubesonar backend`, even on the embedded
    default's file:// queue, ended in prometheus_client's ModuleNotFoundError traceback, and an s3:// store
    without boto3 was reported as a store that "could not be reached". Each package is hidden here by a
    module on PYTHONPATH that fails to import as a missing one does."""
    blocked = tmp_path / "blocked"
    for package in ("prometheus_client", "boto3"):
        (blocked / package).mkdir(parents=True)
        (blocked / package / "__init__.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{package}'\", name={package!r})\n")
    env = {"PYTHONPATH": str(blocked)}
    (tmp_path / "queue").mkdir()
    backend = _run("backend", "--queue", f"file://{tmp_path}/queue", "--store", str(tmp_path / "state"),
                   "--duration", "1", env=env)
    assert backend.returncode == 1 and "Traceback" not in backend.stderr, backend.stderr
    assert "lacks: prometheus_client; install kubesonar[nats]" in backend.stderr
    s3 = _run("alerts", "list", "--store", "s3://my-kubesonar-alerts", env=env)
    assert s3.returncode == 1 and "needs a package this installation lacks: boto3" in s3.stderr, s3.stderr
