"""New workloads, and known workloads running images they never ran."""

from __future__ import annotations

import numpy as np

from kubesonar.shared.detectors import batch_of
from kubesonar.shared.detectors.new_workload import NewWorkloadDetector
from kubesonar.shared.flow import FlowRecords, address_bytes

from helpers import scores_of

HOUR = 3600 * 10**9


def _flows(t0: int, *pods: tuple[str, str, str]) -> FlowRecords:
    """One flow from each (workload name, images, address) pod to a server pod."""
    f = FlowRecords.empty(len(pods))
    f.columns["first_ts"] = np.full(len(pods), t0, dtype=np.int64)
    f.columns["src_addr"] = np.array([address_bytes(ip) for _, _, ip in pods], dtype="V16")
    f.columns["dst_addr"] = np.array([address_bytes("10.0.9.9")] * len(pods), dtype="V16")
    for col, values in (("namespace", ["shop"] * len(pods)), ("workload_kind", ["Deployment"] * len(pods)),
                        ("workload_name", [n for n, _, _ in pods]), ("images", [i for _, i, _ in pods])):
        f.columns[f"src_{col}"] = np.array(values, dtype=object)
    return f


def _run(*batches: FlowRecords):
    d = NewWorkloadDetector(HOUR)
    return [d.observe(batch_of(b)) for b in batches], d


def test_a_known_workload_with_new_images_is_reported_once_and_never_learned():
    learn = _flows(0, ("cart", "shop/cart:2.4.1", "10.0.0.1"))
    hijacked = _flows(2 * HOUR, ("cart", "xmrig/xmrig:6.21", "10.0.0.2"))
    (quiet, (finding,), again), d = _run(learn, hijacked, _flows(3 * HOUR, ("cart", "xmrig/xmrig:6.21", "10.0.0.3")))
    assert quiet == [] and again == []
    assert finding.source["workload"] == "shop/Deployment/cart" and finding.evidence["images"] == ["xmrig/xmrig"]
    assert finding.evidence["known_images"] == ["shop/cart"]
    assert d.to_state()["workloads"]["shop/Deployment/cart"]["images"]["xmrig/xmrig"] == "flagged"


def test_new_image_and_new_workload_are_separate_alerts_and_a_release_is_neither():
    learn = _flows(0, ("cart", "shop/cart:1", "10.0.0.1"))
    (_, findings), _ = _run(learn, _flows(2 * HOUR, ("cart", "shop/cart:2", "10.0.0.1"),
                                          ("cart", "evil/cart:1", "10.0.0.2"), ("miner", "x:1", "10.0.0.5")))
    assert len({f.fingerprint("c") for f in findings}) == 2
    assert sorted(f.evidence["images"] for f in findings) == [["evil/cart"], ["x"]]


def test_images_learned_during_learning_and_unknown_images_raise_nothing():
    learn = _flows(0, ("cart", "shop/cart:1", "10.0.0.1"), ("cart", "shop/cart:1-canary", "10.0.0.2"))
    (_, later), _ = _run(learn, _flows(2 * HOUR, ("cart", "shop/cart:1-canary", "10.0.0.9"), ("cart", "", "10.0.0.8")))
    assert later == []


def test_a_workload_learned_before_images_were_known_takes_its_first_images_silently():
    (_, later), d = _run(_flows(0, ("cart", "", "10.0.0.1")), _flows(2 * HOUR, ("cart", "shop/cart:1", "10.0.0.1")))
    assert later == [] and d.to_state()["workloads"]["shop/Deployment/cart"]["images"] == {"shop/cart": "learned"}


def test_a_pod_started_after_learning_is_a_new_workload_before_it_sends_a_packet():
    from kubesonar.shared.pod_events import PodEvents

    started = PodEvents.from_rows([{"ts": 2 * HOUR, "event": 1, "addr": address_bytes("10.0.0.7"),
                                    "namespace": "shop", "pod": "miner-5b7c-x2x9q", "workload_kind": "Deployment",
                                    "workload_name": "miner", "node": "node-2", "images": "xmrig/xmrig:6.21"}])
    d = NewWorkloadDetector(HOUR)
    scores_of(d, _flows(0, ("cart", "shop/cart:1", "10.0.0.1")))
    (finding,) = d.observe(batch_of(FlowRecords.empty(), started))
    assert finding.source == {"ip": "10.0.0.7", "namespace": "shop", "pod": "miner-5b7c-x2x9q",
                              "workload": "shop/Deployment/miner", "node": "node-2", "labels": ""}
    assert finding.evidence["images"] == ["xmrig/xmrig"]
    assert d.observe(batch_of(_flows(3 * HOUR, ("miner", "xmrig/xmrig:6.21", "10.0.0.7")))) == []  # one alert
