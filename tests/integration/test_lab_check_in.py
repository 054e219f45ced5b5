"""The HTTP check-in scenario's implant script (lab/scenarios.py check_in_script), run by sh with curl on
127.0.0.1: no namespace, no name server. A POST that never left must fail the script, or the scenario's
known miss would be reported from a capture that holds no check-in at all."""

from __future__ import annotations

import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from lab.scenarios import check_in_script


class _Gate(BaseHTTPRequestHandler):
    posts: list[bytes] = []

    def do_POST(self) -> None:
        _Gate.posts.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Length", "6")
        self.end_headers()
        self.wfile.write(b"sleep\n")

    def log_message(self, *args) -> None:
        pass


def test_every_check_in_is_posted_to_the_gate():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gate)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        done = subprocess.run(["sh", "-c", check_in_script(f"127.0.0.1:{server.server_port}", [0.1, 0.1])],
                              capture_output=True, timeout=30)
    finally:
        server.shutdown()
    assert done.returncode == 0
    assert [p.split(b"&seq=")[1] for p in _Gate.posts] == [b"0", b"1", b"2"]


def test_a_check_in_that_never_left_fails_the_script():
    """Nothing listens (a name the pod's resolver did not answer ends the same way): the script must not
    sleep on and exit 0 as if the implant had checked in."""
    with socket.socket() as closed:  # bound, never listening: a connection to it is refused
        closed.bind(("127.0.0.1", 0))
        done = subprocess.run(["sh", "-c", check_in_script(f"127.0.0.1:{closed.getsockname()[1]}", [0.1, 0.1])],
                              capture_output=True, timeout=30)
    assert done.returncode != 0
