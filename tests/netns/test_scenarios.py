"""The evaluation's attack scenarios, each with real tools in a lab node (scans, brute force, mining,
metadata theft, beacons over HTTP and TLS, iodine, dns2tcp, a tunnel over DNS/TCP to dnsmasq, ptunnel-ng,
ncat and socat reverse shells (one from a worker that serves nothing), a RAT protocol on port 80,
cleartext HTTP on 443, an ELF fetched by curl over HTTP and one sent by an ncat listener, a multi-stage
infection from `curl | sh` to a reverse shell, an HTTP implant's few POSTs to its server by name),
scored cold as `kubesonar analyze` scores a capture: the attacker is named by an alert of the type (or
rule) the scenario expects, and no pod that did nothing wrong is named by any rule."""

from __future__ import annotations

import pytest

from lab.scenarios import SCENARIOS, run_scenario
from netns.node import require_lab

from conftest import require_tool

pytestmark = pytest.mark.slow  # real tools and timers: tens of seconds each

# Scenarios the rules do not catch yet (issue 17 is open on them), with what was measured; they must still
# name no bystander.
KNOWN_MISSES: dict[str, str] = {
    "HTTP check-in, a few POSTs": (
        "no alert (measured 2026-12-02): 5 POSTs to port 80 give 4 intervals between connections, under "
        "beaconing's 6 (and +-30% jitter, MAD / median about 0.15, passes for a clock only from about 24, "
        "where the Poisson floor reaches it); the channel names its host (Host: telemetry.c2-lab.example), "
        "so beaconing and unusual_destination judge it only against the workload's past, silent cold; HTTP "
        "on 80 by name is the port's own protocol (no protocol_mismatch); 0.4 kB up a connection is no "
        "upload; nothing executable came back"),
}


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario_names_the_attacker_and_nobody_else(scenario, tmp_path):
    require_lab()
    for tool in ("tcpdump", *scenario.needs):
        require_tool(tool)  # a name on the PATH or an absolute path (the daemons in /usr/sbin)
    result = run_scenario(scenario, tmp_path)
    assert not result.error, result.error
    assert result.false_alarms == [], result.alerts
    if scenario.name in KNOWN_MISSES and result.verdict != "detected":
        pytest.xfail(KNOWN_MISSES[scenario.name])
    assert result.verdict == "detected", result.alerts
