"""Command-and-control flows built column by column, with flow schema 4's TLS and gap columns filled the
way the sensor fills them (shared/flow.py, SCHEMA_4_COLUMNS), for the rules that read those columns.

Until the sensor fills schema 4, no capture carries them, so these are the rules' test input: each row
says what the sensor would have measured of a real session (a heartbeat every 5 s, a person typing into
a shell, a ClientHello with no SNI).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kubesonar.shared.flow import ConnState, FlowRecords, Opening, address_bytes

S = 1_000_000_000
KNOWN_JA4 = "t13d1516h2_8daaf6152771_02713d6af862"  # a workload's usual client
IMPLANT_JA4 = "t12d190800_d83cc789557e_7af1ed941c26"
IMPLANT_JA3 = "72a589da586844d7f0818ce684948eea"  # Cobalt Strike's, per The DFIR Report (docs/detection.md)


def c2_flows(rows: list[dict[str, Any]]) -> FlowRecords:
    """Flow records from dicts: src, dst, t (ns), and optionally dport, sport, held (s: the connection
    began that long before ``t``), dur (s), out/in (bytes), flags_in, tls (ja3, ja4, sni, alpn), gaps
    (out, in: (count, mean s, cv)), beats (out, in: (beats, bursts between, period s)), http_host (schema 5: a plain-HTTP request's Host), executable (schema 7's flags), opening (flow
    schema 5's Opening; default: TLS with a ClientHello, HTTP with an http_host, else unknown), src_workload, dst_workload (namespace, kind, name)."""
    rec = FlowRecords.empty(len(rows))
    c = rec.columns
    for i, r in enumerate(rows):
        c["src_addr"][i] = np.void(address_bytes(r["src"]))
        c["dst_addr"][i] = np.void(address_bytes(r["dst"]))
        c["first_ts"][i] = r["t"]
        c["conn_start"][i] = r["t"] - int(r.get("held", 0) * S)
        c["last_ts"][i] = r["t"] + int(r.get("dur", 1) * S)
        c["src_port"][i], c["dst_port"][i], c["proto"][i] = r.get("sport", 40000 + i), r.get("dport", 443), 6
        c["packets_out"][i], c["packets_in"][i] = 20, 20
        c["bytes_out"][i], c["bytes_in"][i] = r.get("out", 2000), r.get("in", 3000)
        c["flags_out"][i] = 0x1B if not r.get("held") else 0x18
        c["flags_in"][i] = r.get("flags_in", 0x1B if not r.get("held") else 0x18)
        c["state"][i] = int(ConnState.ESTABLISHED)
        tls = r.get("tls", {})
        for field in ("ja3", "ja4", "sni", "alpn"):
            c[f"tls_{field}"][i] = tls.get(field, "")
        c["http_host"][i] = r.get("http_host", "")
        c["executable"][i] = r.get("executable", 0)
        default = Opening.TLS if tls else (Opening.HTTP if "http_host" in r else Opening.UNKNOWN)
        c["opening"][i] = int(r.get("opening", default))
        for side, (count, mean_s, cv) in r.get("gaps", {}).items():
            c[f"gaps_{side}"][i], c[f"gap_mean_us_{side}"][i] = count, int(mean_s * 1e6)
            c[f"gap_cv_milli_{side}"][i] = int(cv * 1000)
        for side, (beats, between, period_s) in r.get("beats", {}).items():  # schema 6's burst timer
            c[f"beats_{side}"][i], c[f"beat_between_{side}"][i] = beats, between
            c[f"beat_period_us_{side}"][i] = int(period_s * 1e6)
        for side in ("src", "dst"):
            if r.get(f"{side}_workload"):
                c[f"{side}_namespace"][i], c[f"{side}_workload_kind"][i], c[f"{side}_workload_name"][i] = \
                    r[f"{side}_workload"]
    return rec


def heartbeat_session(src: str, dst: str, t: int, minutes: float = 20, every_s: float = 5.0, cv: float = 0.02,
                      **extra: Any) -> dict[str, Any]:
    """One session held ``minutes`` with a small record from the initiator every ``every_s``."""
    gaps = int(minutes * 60 / every_s)
    return {"src": src, "dst": dst, "t": t, "dur": minutes * 60, "gaps": {"out": (gaps, every_s, cv)}, **extra}


def shell_session(src: str, dst: str, t: int, **extra: Any) -> dict[str, Any]:
    """A reverse shell: the far side (the attacker) types command lines at human pace, irregularly; the
    shell answers each."""
    return {"src": src, "dst": dst, "t": t, "dport": 4444, "dur": 240,
            "gaps": {"in": (40, 4.0, 1.7), "out": (38, 4.1, 1.6)}, **extra}
