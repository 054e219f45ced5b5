"""The web console in a real headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium): sign in, load the list, filter it, open an alert, acknowledge and assign it through the
page, then find the change in the store and in ``kubesonar alerts show``. Also: auth and CSRF."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from demo_store import KUBESONAR, build_demo_store, copy_store

from conftest import require_tool
from helpers import assert_idle_connection_closed

TOKEN = "console-test-token"
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo_store(tmp_path_factory.mktemp("demo"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def console(demo, tmp_path):
    store = copy_store(demo[0], tmp_path / "store")
    port = _free_port()
    args = [KUBESONAR, "console", "--store", store, "--listen", f"127.0.0.1:{port}"]
    proc = subprocess.Popen([*args, "--token", TOKEN], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("the console did not start listening")
    yield f"http://127.0.0.1:{port}", store
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = require_tool("chromium")
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(require_tool("chromedriver")), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _shot(driver, name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000  # a page was drawn
    keep = os.environ.get("KUBESONAR_SCREENSHOTS")  # docs/console.md's images: set to docs/images
    if keep:
        shutil.copy(path, Path(keep) / f"console-{name}.png")


def _rows(driver) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#alerts tbody tr")


def test_triage_through_the_page_lands_in_the_store_and_the_cli(console, browser, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    base, store = console
    # each action reloads the page: an element found just before the reload is gone when its text is read,
    # which Chromium reports as a stale element or as an inspector error ("Node with given id does not
    # belong to the document"); the wait looks again until its condition holds, or fails at 20 s
    wait = WebDriverWait(browser, 20, ignored_exceptions=(StaleElementReferenceException, WebDriverException))
    browser.get(f"{base}/alerts")
    assert browser.current_url.endswith("/login")  # not signed in
    browser.find_element(By.ID, "login-user").send_keys("ana")
    browser.find_element(By.ID, "login-token").send_keys(TOKEN)
    browser.find_element(By.ID, "login-submit").click()
    wait.until(ec.presence_of_element_located((By.ID, "alerts")))
    every = len(_rows(browser))
    assert every >= 10 and "signed in as ana" in browser.page_source
    _shot(browser, "list", tmp_path)

    Select(browser.find_element(By.ID, "filter-namespace")).select_by_visible_text("default")  # submits itself
    wait.until(lambda d: "namespace=default" in d.current_url)
    rows = _rows(browser)
    assert 0 < len(rows) < every
    assert all(r.find_elements(By.TAG_NAME, "td")[5].text == "default" for r in rows)
    assert browser.find_element(By.ID, "alert-count").text == f"{len(rows)} of {every}"

    link = next(a for a in browser.find_elements(By.CSS_SELECTOR, "a.alert-link") if a.text == "brute_force")
    link.click()
    wait.until(ec.presence_of_element_located((By.ID, "evidence")))
    alert_id = browser.current_url.rsplit("/", 1)[1]
    assert browser.find_element(By.ID, "mitre-link").get_attribute("href").startswith("https://attack.mitre.org/")
    browser.find_element(By.ID, "action-acknowledged").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "alert-status"), "acknowledged"))
    assert browser.find_element(By.ID, "flash").text == "Saved: acknowledged."  # the console's own note, signed
    browser.find_element(By.ID, "assignee-input").send_keys("team-sec")
    browser.find_element(By.ID, "action-assign").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "alert-assignee"), "team-sec"))
    browser.find_element(By.ID, "comment-input").send_keys("the intruder's guesses; db creds rotated")
    browser.find_element(By.ID, "action-comment").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "comments"), "db creds rotated"))
    _shot(browser, "detail", tmp_path)

    (key,) = [p for p in Path(store, "alerts").rglob(f"{alert_id}.json")]
    stored = json.loads(key.read_text())
    assert (stored["status"], stored["assignee"]) == ("acknowledged", "team-sec")
    assert [h["by"] for h in stored["history"]][-3:] == ["ana", "ana", "ana"]
    shown = subprocess.run([KUBESONAR, "alerts", "show", alert_id, "--store", store], capture_output=True,
                           text=True, timeout=60, check=True).stdout
    assert "status: acknowledged   assignee: team-sec" in shown
    assert "ana: the intruder's guesses; db creds rotated" in shown

    browser.get(f"{base}/map")
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "svg.servicemap")))
    nodes = {g.get_attribute("data-node"): g.get_attribute("class")
             for g in browser.find_elements(By.CSS_SELECTOR, "svg.servicemap g.node")}
    assert nodes["default/Deployment/debug-tools"] == "node alerted"
    assert nodes["shop/Deployment/cart"] == "node"
    _shot(browser, "map", tmp_path)


def _request(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, str]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, data=data, headers=headers or {}), timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_actions_need_the_token_and_a_csrf_token(console):
    base, store = console
    (first,) = json.loads(subprocess.run([KUBESONAR, "alerts", "list", "--store", store, "--format", "json",
                                          "--type", "port_scan"], capture_output=True, text=True, check=True,
                                         timeout=60).stdout.splitlines()[0]),
    before = sorted((p.name, p.read_bytes()) for p in Path(store, "alerts").rglob("*.json"))
    assert _request(f"{base}/alerts")[0] == 303  # to the sign-in page
    assert _request(f"{base}/alerts", headers={"Authorization": "Bearer wrong"})[0] == 303
    status, page = _request(f"{base}/alerts", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and first["id"] in page
    form = b"action=resolved"
    assert _request(f"{base}/alerts/{first['id']}", form, {"Authorization": f"Bearer {TOKEN}"})[0] == 403
    assert _request(f"{base}/alerts/{first['id']}", form + b"&csrf=forged",
                    {"Authorization": f"Bearer {TOKEN}"})[0] == 403
    assert _request(f"{base}/login", b"user=eve&token=guess")[0] == 403
    assert sorted((p.name, p.read_bytes()) for p in Path(store, "alerts").rglob("*.json")) == before
    # the same post with the page's CSRF token: a false positive with its allowlist entry, shown
    auth = {"Authorization": f"Bearer {TOKEN}", "X-KubeSonar-User": "bo"}
    page = _request(f"{base}/alerts/{first['id']}", headers=auth)[1]
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
    status, _ = _request(f"{base}/alerts/{first['id']}", f"action=false_positive&allowlist=1&csrf={csrf}".encode(),
                         auth)
    assert status == 303
    page = _request(f"{base}/alerts/{first['id']}?done=Call+us+at+555-0100", headers=auth)[1]
    assert '<span class="status" id="alert-status">false_positive</span>' in page
    assert 'id="flash"' not in page  # a note the console did not write (a link made elsewhere) is not shown
    entry = Path(store, "allowlists", "console.yaml").read_text()
    assert "rule: port_scan" in entry and "workload: Deployment/frontend" in entry and "false positive (bo)" in entry
    status, page = _request(f"{base}/alerts/{first['id']}", f"action=snooze&snooze=soon&csrf={csrf}".encode(), auth)
    assert status == 400 and "duration 'soon' is not a number" in page
    assert _request(f"{base}/static/console.css")[0] == 200  # packaged assets need no sign-in
    assert _request(f"{base}/static/../../etc/passwd")[0] == 404


def test_two_people_marking_one_false_positive_add_one_allowlist_entry(console):
    base, store = console
    (first,) = json.loads(subprocess.run([KUBESONAR, "alerts", "list", "--store", store, "--format", "json",
                                          "--type", "port_scan"], capture_output=True, text=True, check=True,
                                         timeout=60).stdout.splitlines()[0]),
    for user in ("bo", "cy"):
        auth = {"Authorization": f"Bearer {TOKEN}", "X-KubeSonar-User": user}
        page = _request(f"{base}/alerts/{first['id']}", headers=auth)[1]
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
        status, _ = _request(f"{base}/alerts/{first['id']}",
                             f"action=false_positive&allowlist=1&csrf={csrf}".encode(), auth)
        assert status == 303
    listed = subprocess.run([KUBESONAR, "allowlist", "list", "--store", store], capture_output=True, text=True,
                            check=True, timeout=60).stdout.splitlines()
    assert len(listed) == 1 and "port_scan" in listed[0] and "false positive (bo)" in listed[0]


def test_a_trusted_header_names_the_user(demo, tmp_path):
    import threading

    from kubesonar.console.auth import ConsoleAuth
    from kubesonar.console.server import serve
    from kubesonar.functions.local.store import LocalObjectStore

    store = copy_store(demo[0], tmp_path / "store")
    server = serve(LocalObjectStore(store), "127.0.0.1", 0, ConsoleAuth(None, "X-Forwarded-User"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert _request(f"{base}/alerts")[0] == 401
        status, page = _request(f"{base}/alerts", headers={"X-Forwarded-User": "bo@example.org"})
        assert status == 200 and "signed in as bo@example.org" in page
        assert _request(f"{base}/alerts", headers={"Authorization": "Bearer anything"})[0] == 401
        # two copies (the client's own and the proxy's, where the proxy appends): refused, not the last taken
        assert _raw(base, "GET /alerts HTTP/1.0\r\nX-Forwarded-User: admin\r\nX-Forwarded-User: bo@example.org") \
            == "HTTP/1.0 401 Unauthorized"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def served(demo, tmp_path):
    """The console on a copy of the demo's store, in this process (token mode): its URL and store."""
    import threading

    from kubesonar.console.auth import ConsoleAuth
    from kubesonar.console.server import serve
    from kubesonar.functions.local.store import LocalObjectStore

    store = copy_store(demo[0], tmp_path / "store")
    server = serve(LocalObjectStore(store), "127.0.0.1", 0, ConsoleAuth(TOKEN))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", store
    server.shutdown()
    server.server_close()


def _raw(base: str, head: str, body: bytes = b"") -> str:
    """Send a request as written, close our side, and read the status line (empty: no answer). A server
    that answers before taking the whole body closes with it unread, which resets the connection: our
    sending or closing may then fail, and what was answered before the reset is still read."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        try:
            s.sendall(head.encode("latin-1") + b"\r\n\r\n" + body)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer.split(b"\r\n", 1)[0].decode("latin-1")


def test_a_post_whose_length_is_not_a_byte_count_is_refused_unread(served):
    """``Content-Length: -1`` passed the size check and read(-1) took the body until the client closed,
    unbounded and before sign-in; a length that is not a number left the request unanswered."""
    base, _ = served
    body = b"user=eve&token=guess&pad=" + b"x" * (1 << 20)  # far over the 16 KiB a form may have
    assert _raw(base, "POST /login HTTP/1.0\r\nContent-Length: -1", body) == "HTTP/1.0 400 Bad Request"
    assert _raw(base, "POST /login HTTP/1.0\r\nContent-Length: many", body) == "HTTP/1.0 400 Bad Request"
    assert _raw(base, "POST /login HTTP/1.0\r\nContent-Length: 20", b"user=eve&token=guess") == \
        "HTTP/1.0 403 Forbidden"


def test_a_token_or_csrf_token_with_a_non_ascii_letter_is_refused_not_left_unanswered(served):
    """hmac.compare_digest raises TypeError for a str with a non-ASCII character: a guessed token or CSRF
    token with one (a form is UTF-8, a header latin-1) ended the request with no answer, not a 403."""
    base, store = served
    assert _request(f"{base}/login", "user=eve&token=jalapeño".encode())[0] == 403
    assert _request(f"{base}/alerts", headers={"Authorization": "Bearer jalapeño".encode().decode("latin-1")})[0] \
        == 303
    assert _raw(base, "GET /alerts HTTP/1.0\r\nCookie: kubesonar_session=eve|\xe9") == "HTTP/1.0 303 See Other"
    (first,) = json.loads(subprocess.run([KUBESONAR, "alerts", "list", "--store", store, "--format", "json"],
                                         capture_output=True, text=True, check=True,
                                         timeout=60).stdout.splitlines()[0]),
    status, _ = _request(f"{base}/alerts/{first['id']}", "action=resolved&csrf=jalapeño".encode(),
                         {"Authorization": f"Bearer {TOKEN}"})
    assert status == 403


def test_a_name_with_a_space_or_any_letter_stays_signed_in(served, browser):
    """The sign-in accepts names with spaces and any letter, but the cookie carried the name as it was:
    SimpleCookie could not read 'Ana Lima|...' back (each page went back to the sign-in), and a name
    outside latin-1 could not be a header at all (the sign-in went unanswered)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    base, _ = served
    browser.get(f"{base}/login")
    browser.find_element(By.ID, "login-user").send_keys("Łucja Ana Lima")
    browser.find_element(By.ID, "login-token").send_keys(TOKEN)
    browser.find_element(By.ID, "login-submit").click()
    WebDriverWait(browser, 20).until(ec.presence_of_element_located((By.ID, "alerts")))
    browser.get(f"{base}/map")
    assert "signed in as Łucja Ana Lima" in browser.page_source and browser.current_url.endswith("/map")


def test_another_applications_cookie_does_not_sign_one_out(served):
    """Cookies are not kept per port: one that SimpleCookie cannot parse (a JSON value, set by another
    application on the same host) made it ignore the whole header, our session with it."""
    import http.client

    base, _ = served
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("POST", "/login", "user=ana&token=" + TOKEN,
                       {"Content-Type": "application/x-www-form-urlencoded"})
    session = connection.getresponse().getheader("Set-Cookie").split(";")[0]
    connection.close()
    status, page = _request(f"{base}/alerts", headers={"Cookie": f'prefs={{"theme": "dark"}}; {session}'})
    assert status == 200 and "signed in as ana" in page


def test_error_pages_escape_what_they_repeat(served):
    """The 404 and 400 pages put the error's text into the page as it was, and it repeats the id asked
    for and the tag posted: markup there was markup on the page."""
    base, store = served
    auth = {"Authorization": f"Bearer {TOKEN}"}
    host, port = base.removeprefix("http://").split(":")
    import http.client

    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("GET", "/alerts/<svg/onload=alert(1)>", headers=auth)  # as written, not %-encoded
    answer = connection.getresponse()
    page = answer.read().decode()
    connection.close()
    assert answer.status == 404 and "<svg" not in page and "&lt;svg/onload=alert(1)&gt;" in page
    (first,) = json.loads(subprocess.run([KUBESONAR, "alerts", "list", "--store", store, "--format", "json"],
                                         capture_output=True, text=True, check=True,
                                         timeout=60).stdout.splitlines()[0]),
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', _request(f"{base}/alerts/{first['id']}", headers=auth)[1])
    tag = "<b id=injected>" + "x" * 64
    status, page = _request(f"{base}/alerts/{first['id']}",
                            urllib.parse.urlencode({"action": "tag", "tag": tag, "csrf": csrf.group(1)}).encode(), auth)
    assert status == 400 and "must be 1 to 64 characters" in page and "<b id=injected>" not in page


def test_a_snooze_past_any_date_is_a_400_not_an_unanswered_request(served):
    """A snooze whose end is past year 9999 raised ValueError deep in the change: no answer, a traceback."""
    base, store = served
    auth = {"Authorization": f"Bearer {TOKEN}"}
    (first,) = json.loads(subprocess.run([KUBESONAR, "alerts", "list", "--store", store, "--format", "json"],
                                         capture_output=True, text=True, check=True,
                                         timeout=60).stdout.splitlines()[0]),
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', _request(f"{base}/alerts/{first['id']}", headers=auth)[1])
    status, page = _request(f"{base}/alerts/{first['id']}", f"action=snooze&snooze=99999999w&csrf={csrf.group(1)}"
                            .encode(), auth)
    assert status == 400 and "longer than 100 years" in page


def test_a_store_fault_is_a_503_not_a_404_or_a_400(served):
    """Every KubeSonarError was 'Not found' (404) on a page and the poster's fault (400) on an action,
    a store that failed included: a monitor or a script read a broken store as a missing page."""
    base, store = served
    auth = {"Authorization": f"Bearer {TOKEN}"}
    first = next(Path(store, "alerts").rglob("*.json"))
    alert_id = first.stem
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', _request(f"{base}/alerts/{alert_id}", headers=auth)[1])
    assert _request(f"{base}/alerts/ffffffffffff", headers=auth)[0] == 404
    first.write_text("not json")
    status, page = _request(f"{base}/alerts", headers=auth)
    assert status == 503 and "is not a JSON document" in page
    assert _request(f"{base}/alerts/{alert_id}", headers=auth)[0] == 503
    assert _request(f"{base}/alerts/{alert_id}", f"action=resolved&csrf={csrf.group(1)}".encode(), auth)[0] == 503
    assert _request(f"{base}/alerts/{alert_id}", f"action=snooze&snooze=soon&csrf={csrf.group(1)}".encode(),
                    auth)[0] == 400


def test_a_connection_that_sends_nothing_is_closed(demo, tmp_path, monkeypatch):
    """The handler had no timeout: every connection that sent nothing (or half a request) held a thread
    for good, before any sign-in, so anyone who could reach the port could pile them up."""
    import threading

    from kubesonar.console import server as console_server
    from kubesonar.console.auth import ConsoleAuth
    from kubesonar.functions.local.store import LocalObjectStore

    monkeypatch.setattr(console_server, "_IDLE_S", 1.0, raising=False)
    server = console_server.serve(LocalObjectStore(copy_store(demo[0], tmp_path / "store")), "127.0.0.1", 0,
                                  ConsoleAuth(TOKEN))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert_idle_connection_closed(server.server_address[1], b"GET /alerts HTTP/1.0\r\n")  # and nothing more
    finally:
        server.shutdown()
        server.server_close()
