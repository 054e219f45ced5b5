"""``kubesonar alerts|allowlist|watchlist`` as a user runs them, on the demo's store: list and filter,
show, triage, and bad input as one line with no change."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

KUBESONAR = str(Path(sys.executable).with_name("kubesonar"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, list[dict]]:
    work = tmp_path_factory.mktemp("demo")
    out = subprocess.run([KUBESONAR, "demo", "--workdir", str(work), "--format", "json"], capture_output=True,
                         text=True, timeout=300, check=True)
    return work / "state", [json.loads(line) for line in out.stdout.splitlines()]


@pytest.fixture
def store(demo, tmp_path) -> str:
    copy = tmp_path / "store"
    shutil.copytree(demo[0], copy)
    return str(copy)


def ks(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([KUBESONAR, *args], check=False, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "USER": "tester", **(env or {})})
    if check:
        assert done.returncode == 0, done.stderr
    return done


def _lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def _digest(root: str) -> str:
    files = sorted(p for p in Path(root).rglob("*") if p.is_file() and ".locks" not in p.parts)
    return hashlib.sha256(b"".join(str(p).encode() + p.read_bytes() for p in files)).hexdigest()


def test_list_json_prints_the_objects_analyze_prints(demo, store):
    listed = {a["id"]: a for a in _lines(ks("alerts", "list", "--store", store, "--format", "json").stdout)}
    printed = {a["id"]: a for a in demo[1]}
    assert listed.keys() == printed.keys() and len(listed) >= 10
    volatile = {"notify", "updated_at_ns"}  # delivery bookkeeping, settled after analyze's objects were made
    for alert_id, alert in listed.items():
        assert {k: v for k, v in alert.items() if k not in volatile} == \
               {k: v for k, v in printed[alert_id].items() if k not in volatile}
        assert alert["status"] == "open" and alert["history"][0]["changes"] == {"status": [None, "open"]}
    ocsf = _lines(ks("alerts", "list", "--store", store, "--format", "ocsf").stdout)
    assert len(ocsf) == len(listed) and {f["class_uid"] for f in ocsf} == {2004}


def test_filters(store):
    def ids(*flags: str) -> set[str]:
        return {a["type"] for a in _lines(ks("alerts", "list", "--store", store, "--format", "json", *flags).stdout)}

    assert ids("--namespace", "default", "--severity", "medium") == {"new_workload"}
    assert ids("--type", "port_scan", "--type", "crypto_mining") == {"port_scan", "crypto_mining"}
    assert ids("--namespace", "ml") == {"crypto_mining"}
    assert ids("--since", "1h") == set()  # the demo's traffic is of 2026-01-02
    assert len(ids("--since", "520w")) >= 10
    assert ids("--status", "acknowledged") == set()
    table = ks("alerts", "list", "--store", store, "--type", "port_scan").stdout
    assert "port_scan" in table and "shop/Deployment/frontend" in table and "crypto_mining" not in table


def test_update_then_show_and_filter_by_triage_state(store):
    (scan,) = _lines(ks("alerts", "list", "--store", store, "--type", "port_scan", "--format", "json").stdout)
    short = scan["id"][:10]
    out = ks("alerts", "update", short, "--store", store, "--status", "acknowledged", "--assign", "team-sec",
             "--tag", "scan", "--tag", "frontend", "--comment", "frontend pod scanning its neighbours",
             "--snooze", "4h", "--by", "ana").stdout
    assert out.strip() == f"{scan['id']}: acknowledged, assignee team-sec, tags scan,frontend"
    ks("alerts", "update", short, "--store", store, "--untag", "frontend")
    shown = ks("alerts", "show", short, "--store", store).stdout
    assert "status: acknowledged   assignee: team-sec   tags: scan" in shown
    assert "ana: frontend pod scanning its neighbours" in shown
    (entry,) = [line for line in shown.splitlines() if " ana: assignee" in line]  # fields in name order
    assert 'assignee: null -> "team-sec"' in entry and 'status: "open" -> "acknowledged"' in entry
    assert 'tester: tags: ["scan", "frontend"] -> ["scan"]' in shown
    assert "evidence:" in shown and "T1046" in shown
    alert = json.loads(ks("alerts", "show", short, "--store", store, "--format", "json").stdout)
    assert alert["snoozed_until"] and [h["by"] for h in alert["history"]] == ["kubesonar", "ana", "tester"]
    found = _lines(ks("alerts", "list", "--store", store, "--format", "json", "--assignee", "team-sec",
                      "--tag", "scan", "--status", "acknowledged").stdout)
    assert [a["id"] for a in found] == [scan["id"]]


@pytest.mark.parametrize("args, message", [
    (["alerts", "show", "ffffffffffff"], "kubesonar: error: no alert has id 'ffffffffffff' in this store"),
    (["alerts", "update", "ffffffffffff", "--status", "resolved"], "no alert has id 'ffffffffffff'"),
    (["alerts", "update", "{first}", "--status", "closed"], "'closed' is not one of"),
    (["alerts", "update", "{first}", "--snooze", "soon"], "kubesonar: error: duration 'soon' is not a number"),
    (["alerts", "update", "{first}", "--snooze", "99999999w"], "kubesonar: error: duration '99999999w' is longer than"),
    (["alerts", "update", "{first}"], "kubesonar: error: nothing to change"),
    (["alerts", "update", "{first}", "--allowlist", "x", "--status", "resolved"], "--allowlist goes with"),
    (["allowlist", "add", "--rule", "no_such_rule", "--reason", "r", "--namespace", "a"],
     "kubesonar: error: allowlists/default.yaml line 1: unknown rule 'no_such_rule'"),
    (["allowlist", "add", "--rule", "port_scan", "--reason", "r"], "needs a 'match' with at least one field"),
    (["watchlist", "add", "not a/domain"], "is neither an IP, a network nor a domain"),
    (["allowlist", "remove", "3"], "there is no allowlist 'default'"),
])
def test_bad_input_is_one_line_and_changes_nothing(store, args, message):
    first = _lines(ks("alerts", "list", "--store", store, "--format", "json").stdout)[0]["id"]
    before = _digest(store)
    done = ks(*[a.replace("{first}", first) for a in args], "--store", store, check=False)
    assert done.returncode != 0 and message in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith(("Error:", "kubesonar: error:"))]
    assert len(errors) == 1 and len([x for x in done.stderr.splitlines() if x]) <= 3  # click adds usage, hint
    assert "Traceback" not in done.stderr
    assert _digest(store) == before


def test_an_unreachable_store_is_one_line(tmp_path):
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1"}
    done = ks("alerts", "list", "--store", "s3://kubesonar-nowhere", check=False, env=env)
    assert done.returncode == 1 and done.stderr.startswith("kubesonar: error: ") and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    blocked = tmp_path / "file"
    blocked.write_text("")
    done = ks("alerts", "list", "--store", str(blocked / "store"), check=False)
    assert done.returncode == 1 and "cannot use" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_fault_that_is_not_the_store_is_not_blamed_on_the_store(store):
    """A document the command cannot work with was reported as "store ... could not be reached": a user
    would look at the network, not at the alert. Only failures of the store's own calls say that."""
    key = next(Path(store, "alerts").rglob("*.json"))
    alert = json.loads(key.read_text())
    key.write_text(json.dumps({**alert, "last_seen": "yesterday"}))  # a string, as the shape check wants
    done = ks("alerts", "list", "--store", store, "--since", "1h", check=False)
    assert done.returncode == 1 and "could not be reached" not in done.stderr, done.stderr
    assert done.stderr.startswith("kubesonar: error: unexpected ValueError: ") and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    done = ks("alerts", "show", alert["id"][:4], "--store", store, check=False)  # a KubeSonarError keeps its words
    assert done.returncode == 1 and done.stderr.startswith("kubesonar: error: alert id '") and \
        "could not be reached" not in done.stderr, done.stderr


def test_a_second_false_positive_of_the_same_alert_adds_no_second_allowlist_entry(store):
    """Two people marking one alert as a false positive, allowlist asked for, wrote two identical entries."""
    (mining,) = _lines(ks("alerts", "list", "--store", store, "--type", "crypto_mining", "--format", "json").stdout)
    for who in ("ana", "bo"):
        out = ks("alerts", "update", mining["id"], "--store", store, "--status", "false_positive", "--allowlist",
                 "triage", "--by", who).stdout
    assert "already has an entry for this rule and subject: none added" in out
    listed = ks("allowlist", "list", "--store", store).stdout.splitlines()
    assert [x for x in listed if x.startswith("triage ")] == [listed[0]] and "false positive (ana)" in listed[0]
    again = ks("allowlist", "add", "--store", store, "--name", "triage", "--rule", "crypto_mining", "--reason", "r",
               "--namespace", "ml", "--workload", "Deployment/trainer").stdout
    assert "none added" in again and len(ks("allowlist", "list", "--store", store).stdout.splitlines()) == 1
    alert = json.loads(ks("alerts", "show", mining["id"], "--store", store, "--format", "json").stdout)
    assert [h["by"] for h in alert["history"] if "allowlist" in h["changes"]] == ["ana"]  # bo's added none


def test_false_positive_adds_the_allowlist_entry_it_was_asked_for_and_shows_it(store):
    (mining,) = _lines(ks("alerts", "list", "--store", store, "--type", "crypto_mining", "--format", "json").stdout)
    out = ks("alerts", "update", mining["id"], "--store", store, "--status", "false_positive", "--allowlist",
             "triage", "--comment", "the trainer's own pool", "--by", "ana").stdout
    assert "added to allowlist triage:" in out and "rule: crypto_mining" in out
    assert "namespace: ml" in out and "workload: Deployment/trainer" in out
    listed = ks("allowlist", "list", "--store", store).stdout
    assert listed.startswith("triage 1: crypto_mining namespace=ml workload=Deployment/trainer")
    alert = json.loads(ks("alerts", "show", mining["id"], "--store", store, "--format", "json").stdout)
    assert alert["status"] == "false_positive"
    assert alert["history"][-1]["changes"]["allowlist"][1].startswith("triage: ")
    ks("allowlist", "remove", "--name", "triage", "1", "--store", store)
    assert "triage 1" not in ks("allowlist", "list", "--store", store).stdout


def test_allowlist_list_shows_a_port_as_the_file_writes_it(store):
    """It printed the parsed range, ports=(9100, 9110), a Python tuple beside the file's port: 9100-9110."""
    for port in ("9100-9110", "5432"):
        ks("allowlist", "add", "--store", store, "--rule", "port_scan", "--reason", "r", "--namespace", "mon",
           "--port", port)
    listed = ks("allowlist", "list", "--store", store).stdout.splitlines()
    assert listed == ["default 1: port_scan namespace=mon port=9100-9110  # r",
                      "default 2: port_scan namespace=mon port=5432  # r"], listed


_ANNOTATED = """\
# Allowlists of the platform team; ask #sec before adding.

# ticket 123: the backup job walks every pod
- rule: port_scan
  reason: backup job
  match:
    namespace: backup   # not the workload: it is renamed each release
# ticket 456
- rule: [brute_force, port_scan]
  reason: load test
  match:
    namespace: perf
    # until the load test moves
- rule: crypto_mining
  reason: the trainer's pool
  match: {namespace: ml}

# keep this list short
"""


def test_allowlist_remove_takes_only_the_entrys_lines(store):
    """Remove rewrote the file from its parsed entries: every comment and blank line the user wrote went.
    Now only the entry's own lines go, its note just above it included."""
    path = Path(store, "allowlists", "team.yaml")
    path.parent.mkdir(exist_ok=True)
    path.write_text(_ANNOTATED)
    out = ks("allowlist", "remove", "--name", "team", "2", "--store", store).stdout
    assert json.loads(out.removeprefix("removed: ")) == {"rule": ["brute_force", "port_scan"], "reason": "load test",
                                                         "match": {"namespace": "perf"}}
    assert path.read_text() == _ANNOTATED.replace(_ANNOTATED[_ANNOTATED.index("# ticket 456"):
                                                              _ANNOTATED.index("- rule: crypto_mining")], "")
    ks("allowlist", "remove", "--name", "team", "2", "--store", store)
    ks("allowlist", "remove", "--name", "team", "1", "--store", store)
    assert path.read_text() == "# Allowlists of the platform team; ask #sec before adding.\n\n\n# keep this list short\n"
    assert "team" not in ks("allowlist", "list", "--store", store).stdout
    ks("allowlist", "add", "--name", "team", "--rule", "port_scan", "--reason", "r", "--namespace", "a", "--store", store)
    assert path.read_text().startswith("# Allowlists of the platform team; ask #sec before adding.\n\n\n"
                                       "# keep this list short\n- rule: port_scan\n")


def test_allowlist_add_keeps_the_comments_of_an_empty_list(store):
    path = Path(store, "allowlists", "team.yaml")
    path.parent.mkdir(exist_ok=True)
    path.write_text("# ticket 9: nothing allowed yet\n[]\n")
    ks("allowlist", "add", "--name", "team", "--rule", "port_scan", "--reason", "r", "--namespace", "a", "--store", store)
    assert path.read_text() == "# ticket 9: nothing allowed yet\n- rule: port_scan\n  reason: r\n  match:\n    namespace: a\n"


@pytest.mark.parametrize("text, number, message", [
    ("- rule: port_scan\n  match: {namespace: a\n", "1", "kubesonar: error: allowlists/team.yaml line 3: not valid YAML"),
    ("# ticket 1\n- rule: port_scan\n  match: {namespace: a}\n", "2",
     "kubesonar: error: allowlist 'team' has 1 entries; there is no entry 2"),
])
def test_allowlist_remove_of_bad_input_is_one_line_and_changes_nothing(store, text, number, message):
    path = Path(store, "allowlists", "team.yaml")
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    done = ks("allowlist", "remove", "--name", "team", number, "--store", store, check=False)
    assert done.returncode == 1 and done.stderr.startswith(message) and len(done.stderr.splitlines()) == 1, done.stderr
    assert path.read_text() == text


def test_watchlist_commands(store):
    ks("watchlist", "add", "--name", "feed", "198.51.100.0/24", "--reason", "vendor", "--store", store)
    assert "feed: 198.51.100.0/24 (network) vendor" in ks("watchlist", "list", "--store", store).stdout
    ks("watchlist", "remove", "--name", "feed", "198.51.100.0/24", "--store", store)
    assert "198.51.100.0/24" not in ks("watchlist", "list", "--store", store).stdout


def test_type_filters_take_type_slash_rule_and_refuse_a_name_no_alert_has(store):
    def types(*flags: str) -> list[str]:
        return sorted(a["type"] for a in _lines(ks("alerts", "list", "--store", store, "--format", "json",
                                                   *flags).stdout))

    assert types("--type", "port_scan/port_scan") == types("--type", "port_scan") == ["port_scan"]
    for wrong in ("port-scan", "beaconing/reverse_shell"):  # a typo; a rule that reports as another type
        done = ks("alerts", "list", "--store", store, "--type", wrong, check=False)
        assert done.returncode == 2 and f"unknown type or rule '{wrong}'" in done.stderr and not done.stdout
