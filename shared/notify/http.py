"""One HTTP POST of a JSON body, with a short timeout: a slow receiver must not hold scoring up."""

from __future__ import annotations

import urllib.error
import urllib.request

from kubesonar.shared.errors import DeliveryFailed

TIMEOUT_S = 5.0


def post(url: str, data: bytes, headers: dict[str, str], timeout_s: float = TIMEOUT_S) -> None:
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "kubesonar",
                                              **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            if not 200 <= response.status < 300:
                raise DeliveryFailed(f"{response.status} from the destination")
    except urllib.error.HTTPError as exc:
        raise DeliveryFailed(f"HTTP {exc.code} from the destination") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise DeliveryFailed(f"cannot reach the destination: {getattr(exc, 'reason', exc)}") from None
