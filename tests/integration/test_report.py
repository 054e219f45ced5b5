"""``kubesonar report``: one self-contained HTML file with the summary, open alerts, talkers and map."""

from __future__ import annotations

import re
import subprocess
from html.parser import HTMLParser

from demo_store import KUBESONAR, build_demo_store


class _Refs(HTMLParser):
    """Everything the page would fetch: src/href attributes and url(...) in styles."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.refs += [v for k, v in attrs if k in ("src", "href") and v and not v.startswith("#")
                      and tag in ("script", "link", "img", "iframe")]


def test_the_report_is_one_self_contained_file(tmp_path):
    store, alerts = build_demo_store(tmp_path / "demo")
    subprocess.run([KUBESONAR, "alerts", "update", alerts[0]["id"], "--store", str(store), "--assign", "team-sec",
                    "--comment", "on it"], check=True, capture_output=True, timeout=60)
    out = tmp_path / "report.html"
    done = subprocess.run([KUBESONAR, "report", "--store", str(store), "--out", str(out)], check=True,
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith(f"wrote {out}")
    html = out.read_text()
    refs = _Refs()
    refs.feed(html)
    assert refs.refs == [] and "script" not in refs.tags and not re.search(r"url\((?!#)", html)
    assert f"<h1>{len(alerts)} alerts, {len(alerts)} open or acknowledged</h1>" in html
    assert html.count('aria-label="alerts per day"') == 1 and 'aria-label="service map"' in html
    assert "team-sec" in html and "on it" in html
    talkers = re.search(r'<table id="talkers">(.*?)</table>', html, re.S).group(1)
    assert "payments/Deployment/api" in talkers  # the 80 MB upload
    assert 'data-node="default/Deployment/debug-tools"' in html and 'class="node alerted"' in html


def test_the_report_is_written_as_utf_8_whatever_the_locale(tmp_path):
    """The file was written in the locale's encoding: under an ASCII locale (LC_ALL=C without UTF-8 mode)
    the map's arrows raised UnicodeEncodeError, and under latin-1 the page would contradict its
    <meta charset="utf-8">."""
    import os

    store, _ = build_demo_store(tmp_path / "demo")
    out = tmp_path / "report.html"
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    done = subprocess.run([KUBESONAR, "report", "--store", str(store), "--out", str(out)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert '<meta charset="utf-8">' in out.read_text(encoding="utf-8") and "→" in out.read_text(encoding="utf-8")
