"""A stand-in for a Key Vault's secrets, on 127.0.0.1 over HTTPS: no Key Vault emulator exists. It is ours,
written from Key Vault's documented REST API (secrets: Get Secret, Set Secret; "Authentication, requests
and responses"; the REST error codes page) and checks only what it says:

- ``GET /secrets/{name}`` and ``GET /secrets/{name}/{version}``, ``PUT /secrets/{name}`` with
  ``{"value": ...}`` (a new version), each with an ``api-version`` query parameter that azure-keyvault-secrets
  knows (400 ``BadParameter`` otherwise); a secret is answered as Key Vault answers it,
  ``{"value", "id": "{vault}/secrets/{name}/{version}", "attributes": {"enabled", "created", "updated",
  "recoveryLevel", "recoverableDays"}}``; an unknown secret or version 404 ``SecretNotFound``.
- authentication: a request without ``Authorization: Bearer`` is answered 401 with Key Vault's challenge,
  ``WWW-Authenticate: Bearer authorization="https://login.windows.net/{tenant}", resource="..."`` and the
  body ``{"error": {"code": "Unauthorized", "message": "Request is missing a Bearer or PoP token."}}``,
  which azure-keyvault-secrets' challenge policy sends first to learn what token to get; a token not
  issued for that resource (by the Event Grid stand-in's identity endpoint, tests/eventgrid_standin.py)
  is answered 401 with the same challenge. Key Vault names ``https://vault.azure.net`` for a vault at
  ``https://NAME.vault.azure.net``: the vault's host without its first label, which the SDK checks the
  vault's URL against (its host must end with "." and the resource's). The stand-in names the same for
  its own address: ``https://0.0.1:PORT`` for ``https://127.0.0.1:PORT``.

For failures, :meth:`KeyVaultStandIn.close` refuses connections and :meth:`KeyVaultStandIn.stall` takes
requests without answering them.

It does not model RBAC (any token for the resource reads and writes), secret attributes beyond those
above (expiry, content type, tags), soft delete, throttling, or Key Vault's network rules.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from eventgrid_standin import https_server, token_audience

# azure-keyvault-secrets' ApiVersion values: the data plane's versions for secrets
API_VERSIONS = {"2016-10-01", "7.0", "7.1", "7.2", "7.3", "7.4", "7.5", "7.6", "2025-07-01", "2026-04-01"}
TENANT = "72f988bf-0000-0000-0000-000000000000"
_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")  # Key Vault's rule for object names
_PATH = re.compile(r"^/secrets/([^/]+)/?([^/]*)$")


class KeyVaultStandIn:
    def __init__(self, ca: Any, tls_dir: Path):
        self.secrets: dict[str, list[dict]] = {}  # name -> its versions, oldest first
        self.reads = 0  # secret values given out
        self.answered: dict[int, int] = {}  # HTTP status -> requests
        self._lock = threading.Lock()
        self._stalled, self._closed = threading.Event(), threading.Event()
        self._server = https_server(ca, _handler(self))
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/"

    @property
    def resource(self) -> str:
        return f"https://0.0.1:{self.port}"

    def close(self) -> None:
        """Stop answering: the port refuses connections from now on, as an unreachable vault does."""
        self._closed.set()
        self._server.shutdown()
        self._server.server_close()

    def stall(self) -> None:
        """Take requests and never answer them (until closed), as a vault behind a black hole does."""
        self._stalled.set()

    def set(self, name: str, value: str) -> dict:
        """A new version of a secret (what Set Secret does)."""
        now = int(time.time())
        version = uuid.uuid4().hex
        bundle = {"value": value, "id": f"{self.url}secrets/{name}/{version}",
                  "attributes": {"enabled": True, "created": now, "updated": now,
                                 "recoveryLevel": "Recoverable", "recoverableDays": 7}}
        with self._lock:
            self.secrets.setdefault(name, []).append(bundle)
        return bundle

    def answer(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, dict, dict[str, str]]:
        """Status, JSON body and extra headers for one request."""
        url = urlsplit(path)
        version = parse_qs(url.query).get("api-version", [""])[0]
        if version not in API_VERSIONS:
            return _error(400, "BadParameter", f"The specified version ({version}) is not recognized. Consider "
                                               f"using the latest supported version ({max(API_VERSIONS)}).")
        authorization = headers.get("Authorization", "")
        if not authorization.startswith("Bearer "):
            return self._challenge("Request is missing a Bearer or PoP token.")
        if token_audience(authorization.removeprefix("Bearer ")) != self.resource:
            return self._challenge("AKV10022: Invalid audience.")
        match = _PATH.match(url.path)
        if not match or not _NAME.match(match[1]):
            return _error(400, "BadParameter", f"{url.path}: not a secret's path, or a name Key Vault refuses")
        name, wanted = match[1], match[2]
        if method == "PUT" and not wanted:
            try:
                value = json.loads(body)["value"]
            except (ValueError, KeyError, TypeError):
                return _error(400, "BadParameter", "The request body must be JSON with a string 'value'.")
            if not isinstance(value, str):
                return _error(400, "BadParameter", "The request body must be JSON with a string 'value'.")
            return 200, self.set(name, value), {}
        if method != "GET":
            return _error(405, "MethodNotAllowed", f"{method} {url.path} is not an operation of this stand-in")
        with self._lock:
            versions = self.secrets.get(name, [])
            found = [b for b in versions if b["id"].endswith("/" + wanted)] if wanted else versions[-1:]
            if found:
                self.reads += 1
        if not found:
            nameid = f"{name}/{wanted}" if wanted else name
            return _error(404, "SecretNotFound", f"A secret with (name/id) {nameid} was not found in this key "
                                                 "vault. If you recently deleted this secret you may be able to "
                                                 "recover it using the correct recovery command.")
        return 200, found[0], {}

    def _challenge(self, message: str) -> tuple[int, dict, dict[str, str]]:
        status, body, _ = _error(401, "Unauthorized", message)
        return status, body, {"WWW-Authenticate": f'Bearer authorization="https://login.windows.net/{TENANT}", '
                                                  f'resource="{self.resource}"'}


def _error(status: int, code: str, message: str) -> tuple[int, dict, dict[str, str]]:
    return status, {"error": {"code": code, "message": message}}, {}


def _handler(standin: KeyVaultStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            self._serve("GET")

        def do_PUT(self) -> None:
            self._serve("PUT")

        def _serve(self, method: str) -> None:
            if standin._stalled.is_set():
                standin._closed.wait(120)
                return
            length = int(self.headers.get("Content-Length") or 0)
            status, body, headers = standin.answer(method, self.path, self.headers,
                                                   self.rfile.read(length) if length <= 1 << 20 else b"")
            with standin._lock:
                standin.answered[status] = standin.answered.get(status, 0) + 1
            data = json.dumps(body).encode()
            self.send_response(status)
            for name, value in {"Content-Type": "application/json; charset=utf-8", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
