"""Who is asking, and whether a form post is theirs.

Two modes: a bearer token (``--token``; a browser signs in once and keeps a signed, HttpOnly,
SameSite=Strict cookie naming the user) or a trusted header set by an authenticating proxy in front
(``--trusted-header X-Forwarded-User``; then every request must carry it). Every action is a POST that
carries a CSRF token bound to the user (HMAC with a per-process secret), checked in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from urllib.parse import quote, unquote

COOKIE = "kubesonar_session"
_USER = re.compile(r"^[\w .@+-]{1,64}$")


class ConsoleAuth:
    def __init__(self, token: str | None, trusted_header: str | None = None):
        self.trusted_header = trusted_header
        self.token = token or ("" if trusted_header else secrets.token_urlsafe(24))
        self._secret = secrets.token_bytes(32)

    def _sign(self, text: str) -> str:
        return hmac.new(self._secret + self.token.encode(), text.encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def _same(given: str, expected: str) -> bool:
        # bytes: compare_digest refuses str with a non-ASCII character (TypeError, a request left unanswered)
        return hmac.compare_digest(given.encode(), expected.encode())

    def user(self, headers: Mapping[str, str]) -> str | None:
        """The signed-in user, or None. ``headers`` as received, each copy of a repeated header in it (an
        http.server request's ``headers``)."""
        if self.trusted_header:
            # exactly one copy: a proxy that adds its header to what the client sent leaves two, one the client's
            given = [v.strip() for k, v in headers.items() if k.lower() == self.trusted_header.lower()]
            return given[0] if len(given) == 1 and _USER.match(given[0]) else None
        lowered = {k.lower(): v for k, v in headers.items()}
        bearer = lowered.get("authorization", "")
        if bearer.startswith("Bearer ") and self._same(bearer[7:].strip(), self.token):
            return lowered.get("x-kubesonar-user", "token") if _USER.match(lowered.get("x-kubesonar-user", "token")) \
                else None
        # read by hand: SimpleCookie drops the whole header for one cookie it cannot parse (another
        # application's on the same host), and the name is percent-encoded (a space, any letter)
        for part in lowered.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            quoted, _, signature = value.rpartition("|")
            user = unquote(quoted)
            if name == COOKIE and user and self._same(signature, self._sign("session|" + user)):
                return user
        return None

    def sign_in(self, token: str, user: str) -> str | None:
        """A Set-Cookie value when the token is right and the name acceptable, else None."""
        if self.trusted_header or not self._same(token.strip(), self.token) or not _USER.match(user.strip()):
            return None
        user = user.strip()
        return f"{COOKIE}={quote(user)}|{self._sign('session|' + user)}; Path=/; HttpOnly; SameSite=Strict"

    def csrf(self, user: str) -> str:
        return self._sign("csrf|" + user)

    def note_signature(self, user: str, note: str) -> str:
        """What vouches for a note the console itself put in a redirect (the "Saved" banner): a link
        made elsewhere cannot make the page say something."""
        return self._sign(f"note|{user}|{note}")

    def note_ok(self, user: str, note: str, given: str) -> bool:
        return self._same(given or "", self.note_signature(user, note))

    def csrf_ok(self, user: str, given: str) -> bool:
        return self._same(given or "", self.csrf(user))
