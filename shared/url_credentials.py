"""URLs as they are shown: without the credentials some carry (``nats://USER:PASSWORD@HOST``,
``nats://TOKEN@HOST``), so start-up lines, errors and logs never hold a secret."""

from __future__ import annotations

import re

# the scheme, then the authority up to its last "@" (a password may hold one): the user information
_USER_INFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")


def without_credentials(url: str) -> str:
    """``url`` with its user information, if any, replaced by ``***``."""
    return _USER_INFO.sub(r"\1***@", url)
