"""Notifications through an outbox, not fire-and-forget.

Before an invocation writes its alerts it records their ids in ``outbox/<cluster>.json`` (one write
per invocation that has findings). An alert that deserves a notification (new, escalated, reopened:
:func:`kubesonar.shared.triage.on_detection`) carries ``notify.pending`` in the same compare-and-swap
write that changes it. Delivery then claims the alert (a lease in the alert, so two invocations never
both send), sends to each destination that wants it and has not confirmed it, and records the
confirmed ones. A destination that fails is retried with backoff by later invocations or the
schedule; an id whose alert has nothing pending leaves the outbox. An invocation that died after
writing an alert leaves its id in the outbox: the next invocation or the schedule's tick, once the
id is older than :data:`GRACE_S`, delivers it, once.

A snoozed alert keeps its notification pending until the snooze ends; a resolved or false-positive
alert drops it. Delivery errors are returned as messages, never raised: scoring never waits on them
beyond the short HTTP timeout and :data:`QUICK_TRIES`.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any

from kubesonar.shared.alerts import type_and_rule, with_rule
from kubesonar.shared.errors import DeliveryFailed, KubeSonarError
from kubesonar.shared.notify import ratelimit, slack, teams, webhook
from kubesonar.shared.notify.http import post
from kubesonar.shared.notify.routing import ROUTING, Destination, Routing
from kubesonar.shared.state import read_document, update_document
from kubesonar.shared.triage import CLOSED, is_snoozed, iso, parse_iso_ns, record

if TYPE_CHECKING:
    from kubesonar.shared.pipeline import Dependencies

SECOND = 1_000_000_000
GRACE_S = 30.0  # an id younger than this belongs to an invocation that may still be delivering it
LEASE_S = 60.0  # how long a claim on an alert's delivery holds
MAX_ATTEMPTS = 12  # then the alert's history says which destinations never confirmed
QUICK_TRIES = 2  # attempts within the invocation, 0.2 s apart
TOPIC = "topic"  # the cloud's own topic (deps.notifier): every notification goes there
_OUTPUTS = {"slack": slack, "teams": teams, "webhook": webhook}


def outbox_key(cluster: str) -> str:
    return f"outbox/{cluster}.json"


def alert_key(cluster: str, alert_id: str) -> str:
    return f"alerts/{cluster}/{alert_id}.json"


def intend(deps: Dependencies, cluster: str, ids: list[str]) -> None:
    """Record that these alerts are about to be written (before writing them)."""
    if not ids:
        return
    now = deps.clock.now_ns()

    def add(doc: dict | None) -> dict:
        pending = dict((doc or {}).get("pending", {}))
        if all(i in pending for i in ids) and doc is not None:
            return doc
        for i in ids:
            pending.setdefault(i, now)
        return {"pending": pending}

    update_document(deps.store, outbox_key(cluster), add)


def new_claim() -> str:
    """What names one invocation's claim on the deliveries it is about to make."""
    return secrets.token_hex(8)


def mark_pending(alert: dict[str, Any], reason: str, now_ns: int, claim: str) -> dict[str, Any]:
    """The alert owing a notification for ``reason``, claimed for delivery by this invocation, all in the
    detector's own write (no separate write to claim it)."""
    notify = dict(alert.get("notify") or {})
    notify["seq"] = int(notify.get("seq", 0)) + 1
    notify["pending"] = {"reason": reason, "at": iso(now_ns)}
    notify.update(attempts=0, next_try_ns=0, lease_ns=now_ns + int(LEASE_S * SECOND), lease_by=claim)
    return {**alert, "notify": notify}


def settle(deps: Dependencies, cluster: str, fresh: list[str], claim: str = "") -> list[str]:
    """Deliver what this invocation owes (``fresh``) and what dead invocations left in the outbox;
    returns error messages (never raises)."""
    errors: list[str] = []
    try:
        routing, routing_errors = ROUTING.load(deps.store)
        errors += routing_errors
        now = deps.clock.now_ns()
        doc, _ = read_document(deps.store, outbox_key(cluster))
        waiting = (doc or {}).get("pending", {})
        old = [i for i, at in waiting.items() if now - at >= GRACE_S * SECOND]
        done = []
        for alert_id in dict.fromkeys([*fresh, *old]):
            finished, why = _deliver(deps, cluster, alert_id, routing, now, claim)
            errors += why
            if finished:
                done.append(alert_id)
        errors += _flush_digests(deps, cluster, routing, now)
        if any(i in waiting for i in done):
            update_document(deps.store, outbox_key(cluster),
                            lambda d: {"pending": {i: t for i, t in (d or {}).get("pending", {}).items()
                                                   if i not in done}})
    except KubeSonarError as exc:
        errors.append(f"notifications deferred: {exc}")
    return errors


def _claim(deps: Dependencies, cluster: str, alert_id: str, now: int, claim: str) -> tuple[str, dict | None]:
    state: list[Any] = ["done", None]
    if read_document(deps.store, alert_key(cluster, alert_id))[0] is None:
        return "gone", None  # the invocation died before writing it: nothing to tell

    def change(alert: dict | None) -> dict | None:
        state[:] = ["done", None]
        if alert is None:
            state[0] = "gone"
            return alert
        notify = alert.get("notify") or {}
        if not notify.get("pending"):
            return alert
        if alert.get("status") in CLOSED:
            return {**alert, "notify": {**notify, "pending": None}}
        if is_snoozed(alert, now):
            state[0] = "later"
            until = parse_iso_ns(alert["snoozed_until"])
            if notify.get("next_try_ns") == until:
                return alert
            return {**alert, "notify": {**notify, "next_try_ns": until}}
        if claim and notify.get("lease_by") == claim and notify.get("lease_ns", 0) > now:
            state[:] = ["claimed", alert]  # claimed in the detector's write: nothing to write
            return alert
        if notify.get("next_try_ns", 0) > now or notify.get("lease_ns", 0) > now:
            state[0] = "later"
            return alert
        state[:] = ["claimed", alert]
        return {**alert, "notify": {**notify, "lease_ns": now + int(LEASE_S * SECOND), "lease_by": claim}}

    update_document(deps.store, alert_key(cluster, alert_id), change)
    return state[0], state[1]


def _deliver(deps: Dependencies, cluster: str, alert_id: str, routing: Routing, now: int, claim: str
             ) -> tuple[bool, list[str]]:
    """(whether the id may leave the outbox, error messages)."""
    state, alert = _claim(deps, cluster, alert_id, now, claim)
    if state in ("done", "gone"):
        return True, []
    if state == "later":
        return False, []
    assert alert is not None
    alert = with_rule(alert)  # pending since before alerts named their rule: routed and told as one of now
    notify = alert["notify"]
    seq, reason = notify["seq"], notify["pending"]["reason"]
    confirmed = {n: s for n, s in (notify.get("confirmed") or {}).items()}
    targets: list[Destination | None] = [None, *(d for d in routing.destinations if d.wants(alert))]
    errors: list[str] = []
    for dest in targets:
        name = TOPIC if dest is None else dest.name
        if confirmed.get(name) == seq:
            continue
        try:
            _send(deps, cluster, alert, reason, dest, routing.console_url, now)
            confirmed[name] = seq
        except (DeliveryFailed, KubeSonarError) as exc:
            errors.append(f"notification of {alert_id} to {name} failed: {exc}")
        except Exception as exc:  # a notifier SDK may raise anything; retried later
            errors.append(f"notification of {alert_id} to {name} failed: {type(exc).__name__}: {exc}")
    missing = [TOPIC if d is None else d.name for d in targets if confirmed.get(TOPIC if d is None else d.name) != seq]
    _record(deps, cluster, alert_id, seq, confirmed, missing, errors, now)
    return not missing or notify.get("attempts", 0) + 1 >= MAX_ATTEMPTS, errors


def _send(deps: Dependencies, cluster: str, alert: dict[str, Any], reason: str, dest: Destination | None,
          console_url: str, now: int) -> None:
    if dest is None:
        deps.notifier.notify(alert)
        return
    if dest.rate_limit:
        admitted, held = ratelimit.admit(deps.store, cluster, dest, type_and_rule(alert), now)
        if held:
            try:
                _post(dest, _OUTPUTS[dest.kind].digest(dest.name, held, dest.window_s), now)
            except DeliveryFailed:
                ratelimit.give_back(deps.store, cluster, dest, held)  # told in a later digest, not lost
                raise
        if not admitted:
            return  # counted in the next digest: that is this destination's confirmation
    _post(dest, _OUTPUTS[dest.kind].payload(_public(alert), reason, console_url), now)


def _post(dest: Destination, message: dict[str, Any], now: int) -> None:
    data = webhook.body(message)
    headers = webhook.sign(dest.secret, now // SECOND, data) if dest.kind == "webhook" else {}
    for attempt in range(QUICK_TRIES):
        try:
            post(dest.url, data, headers)
            return
        except DeliveryFailed:
            if attempt + 1 == QUICK_TRIES:
                raise
            time.sleep(0.2 * 2**attempt)


def _public(alert: dict[str, Any]) -> dict[str, Any]:
    """The alert as receivers see it: without the core's bookkeeping."""
    return {k: v for k, v in alert.items() if k not in ("batches", "notify", "updated_at_ns")}


def _record(deps: Dependencies, cluster: str, alert_id: str, seq: int, confirmed: dict[str, int],
            missing: list[str], errors: list[str], now: int) -> None:
    def change(alert: dict | None) -> dict | None:
        if alert is None:
            return alert
        notify = dict(alert.get("notify") or {})
        notify["confirmed"] = {**(notify.get("confirmed") or {}), **confirmed}
        notify.update(lease_ns=0, lease_by=None)
        if notify.get("seq") != seq:  # a newer reason arrived meanwhile: it stays pending
            return {**alert, "notify": notify}
        if not missing:
            notify.update(pending=None, attempts=0, next_try_ns=0, last_error=None)
            return {**alert, "notify": notify}
        attempts = int(notify.get("attempts", 0)) + 1
        notify.update(attempts=attempts, last_error=errors[-1] if errors else None,
                      next_try_ns=now + int(min(3600.0, 30.0 * 2 ** (attempts - 1)) * SECOND))
        if attempts >= MAX_ATTEMPTS:
            notify["pending"] = None
            return record({**alert, "notify": notify}, "kubesonar", now,
                          {"notification": [None, f"gave up after {attempts} attempts: {', '.join(missing)}"]})
        return {**alert, "notify": notify}

    update_document(deps.store, alert_key(cluster, alert_id), change)


def _flush_digests(deps: Dependencies, cluster: str, routing: Routing, now: int) -> list[str]:
    limited = [d for d in routing.destinations if d.rate_limit]
    if not limited:
        return []
    errors = []
    for dest, held in ratelimit.due_digests(deps.store, cluster, limited, now):
        try:
            _post(dest, _OUTPUTS[dest.kind].digest(dest.name, held, dest.window_s), now)
        except DeliveryFailed as exc:
            ratelimit.give_back(deps.store, cluster, dest, held)  # told in a later digest, not lost
            errors.append(f"digest to {dest.name} failed: {exc}")
    return errors
