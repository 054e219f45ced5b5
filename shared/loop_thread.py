"""An asyncio event loop in a daemon thread, for sync code that must drive an asyncio client.

The sensor and the core are synchronous; NATS's Python client is asyncio. One loop per process keeps the
connection (and its reconnects, pings and acks) alive between calls, where ``asyncio.run`` per call would
connect anew each time (measured in docs/onprem.md). Coroutines are handed over with
``run_coroutine_threadsafe`` and waited for with a bound. Standard library only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str = "asyncio-loop"):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the loop and wait for it; TimeoutError (the coroutine cancelled) after ``timeout``."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("LoopThread.run called from its own loop: it would wait on itself")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no answer within {timeout:g} s") from None
        finally:
            del future  # it holds the coroutine's error, whose traceback holds this frame: no cycle

    def close(self, timeout: float = 5.0) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()
