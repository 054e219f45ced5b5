"""Per-destination rate limit with a digest: past ``rate_limit`` messages in a window, alerts are
held and counted by type, with the rule when another rule reports as that type (a held reverse shell
is ``unusual_destination/reverse_shell``, never one more unusual destination), and the next message
after the window (or the schedule's tick) is a digest: "N more alerts of type T in the last 10
minutes". State: ``notify/<cluster>/rate.json``."""

from __future__ import annotations

from typing import Any

from kubesonar.shared.notify.routing import Destination
from kubesonar.shared.ports import ObjectStore
from kubesonar.shared.state import read_document, update_document

SECOND = 1_000_000_000


def _key(cluster: str) -> str:
    return f"notify/{cluster}/rate.json"


def admit(store: ObjectStore, cluster: str, dest: Destination, alert_type: str, now_ns: int
          ) -> tuple[bool, dict[str, int] | None]:
    """(send this alert?, the held counts of a window that just ended, to send as a digest first)."""
    outcome: list[Any] = [True, None]

    def change(doc: dict | None) -> dict:
        doc = dict(doc or {})
        window = dict(doc.get(dest.name) or {"start_ns": now_ns, "sent": 0, "held": {}})
        outcome[:] = [True, None]
        if now_ns - window["start_ns"] >= dest.window_s * SECOND:
            outcome[1] = window["held"] or None
            window = {"start_ns": now_ns, "sent": 0, "held": {}}
        if window["sent"] < dest.rate_limit:
            window["sent"] += 1
        else:
            outcome[0] = False
            window["held"] = {**window["held"], alert_type: window["held"].get(alert_type, 0) + 1}
        doc[dest.name] = window
        return doc

    update_document(store, _key(cluster), change)
    return outcome[0], outcome[1]


def due_digests(store: ObjectStore, cluster: str, dests: list[Destination], now_ns: int
                ) -> list[tuple[Destination, dict[str, int]]]:
    """Held counts of windows that have ended, taken (each digest is handed out once)."""
    doc, _ = read_document(store, _key(cluster))
    names = {d.name: d for d in dests}
    if not doc or not any(n in names and w["held"] and now_ns - w["start_ns"] >= names[n].window_s * SECOND
                          for n, w in doc.items()):
        return []
    taken: list[tuple[Destination, dict[str, int]]] = []

    def change(current: dict | None) -> dict:
        taken.clear()
        current = dict(current or {})
        for name, window in list(current.items()):
            dest = names.get(name)
            if dest and window["held"] and now_ns - window["start_ns"] >= dest.window_s * SECOND:
                taken.append((dest, window["held"]))
                current[name] = {"start_ns": now_ns, "sent": 0, "held": {}}
        return current

    update_document(store, _key(cluster), change)
    return taken


def give_back(store: ObjectStore, cluster: str, dest: Destination, held: dict[str, int]) -> None:
    """Held counts whose digest could not be sent: counted again, so the next digest tells them."""

    def change(doc: dict | None) -> dict:
        doc = dict(doc or {})
        window = dict(doc.get(dest.name) or {"start_ns": 0, "sent": 0, "held": {}})
        window["held"] = {t: window["held"].get(t, 0) + held.get(t, 0) for t in sorted({*window["held"], *held})}
        doc[dest.name] = window
        return doc

    update_document(store, _key(cluster), change)
