"""The sensor's Kubernetes manifests: every overlay renders with kustomize and validates strictly
against each Kubernetes version the README claims; the DaemonSet keeps its security posture."""

from __future__ import annotations

import ast
import os
import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from conftest import REPO, require_tool

K8S = REPO / "infra" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir())
VERSIONS = ["1.30.0", "1.31.0", "1.32.0", "1.33.0", "1.34.0"]  # the README's claim


def _render(overlay: str) -> list[dict]:
    out = subprocess.run([require_tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay)],
                         capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", VERSIONS)
def test_every_overlay_validates_strictly(overlay, version):
    for doc in _render(overlay):
        kubernetes_validate.validate(doc, version, strict=True)


def _daemonset(overlay: str) -> dict:
    return next(d for d in _render(overlay) if d["kind"] == "DaemonSet")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_daemonset_runs_everywhere_with_the_least_it_needs(overlay):
    pod = _daemonset(overlay)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert pod["hostNetwork"] and pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in pod["tolerations"]  # control-plane nodes too
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW", "NET_ADMIN"]}
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] and not sc["privileged"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # its own Pod, read at SIGTERM on a cordoned node, under the names the sensor reads
    from kubesonar.sensor.kube import own_pod

    downward = {"metadata.namespace": "kubesonar", "metadata.name": "kubesonar-sensor-q8m4z", "spec.nodeName": "n"}
    resolved = {name: downward[e["valueFrom"]["fieldRef"]["fieldPath"]] for name, e in env.items()
                if "fieldRef" in e.get("valueFrom", {})}
    assert own_pod(resolved) == ("kubesonar", "kubesonar-sensor-q8m4z")
    lines = (K8S / "base" / "daemonset.yaml").read_text().splitlines()
    for capability in ("NET_RAW", "NET_ADMIN"):  # each capability says why, in the comment just above it
        at = lines.index(f"                - {capability}")
        assert any(line.strip().startswith(f"# {capability}:") for line in lines[at - 3 : at])


_API_GROUPS = {"self._core": "", "self._discovery": "discovery.k8s.io"}  # sensor/kube.py's API clients
_API_CALL = re.compile(r"(read|list)_(?:namespaced_)?([a-z_]+?)(?:_for_all_namespaces)?")


def _grant(client_method: str, verb: str | None = None) -> tuple[str, str, str]:
    """(API group, resource, verb) a client call needs: ``self._core.read_namespaced_service`` is a get on
    services; a list function handed to ``watch.stream`` is a watch."""
    client, _, method = client_method.rpartition(".")
    action, kind = _API_CALL.fullmatch(method).groups()
    return _API_GROUPS[client], kind.replace("_", "") + "s", verb or {"read": "get", "list": "list"}[action]


def _api_calls_of_the_sensor() -> set[tuple[str, str, str]]:
    needed = set()
    for node in ast.walk(ast.parse((REPO / "sensor" / "kube.py").read_text())):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        target = ast.unparse(node.func)
        if target.rpartition(".")[0] in _API_GROUPS:
            needed.add(_grant(target))
        if node.func.attr == "stream" and node.args and ast.unparse(node.args[0]).rpartition(".")[0] in _API_GROUPS:
            needed.add(_grant(ast.unparse(node.args[0]), "watch"))
    return needed


def test_rbac_grants_exactly_the_api_calls_the_sensor_makes():
    role = next(d for d in _render("local") if d["kind"] == "ClusterRole")
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    assert {verb for _, _, verb in granted} <= {"get", "list", "watch"}  # read-only
    assert granted == _api_calls_of_the_sensor()  # a missing grant is a 403 at run time; an extra one, excess


def _environment(doc: dict, container: dict) -> dict[str, str]:
    """What the container's process sees: its ConfigMaps (envFrom), then its literal env values."""
    maps = {d["metadata"]["name"]: d.get("data", {}) for d in doc if d["kind"] == "ConfigMap"}
    env = {}
    for source in container.get("envFrom", []):
        env |= maps[source["configMapRef"]["name"]]
    return env | {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_setting_is_an_option_of_the_command_the_container_runs_with_a_value_it_takes(overlay, monkeypatch):
    import click

    from kubesonar.cli import main

    docs = _render(overlay)
    for workload in (d for d in docs if d["kind"] in ("DaemonSet", "Deployment")):
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        (command,) = container["args"]
        env = _environment(docs, container)
        for name in [n for n in os.environ if n.startswith("KUBESONAR_")]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        ctx = click.Context(main.commands[command], info_name=command,
                            parent=click.Context(main, info_name="kubesonar", auto_envvar_prefix="KUBESONAR"))
        read = set()
        for option in (p for p in main.commands[command].params if isinstance(p, click.Option)):
            names = [f"{ctx.auto_envvar_prefix}_{option.name.upper()}"]
            names += [option.envvar] if isinstance(option.envvar, str) else list(option.envvar or ())
            read |= {n for n in names if os.environ.get(n)}
            raw = option.value_from_envvar(ctx)
            if raw is None:  # a setting the command cannot start without is a pod that never starts
                assert not option.required, f"{overlay}: {workload['kind']} sets nothing for {option.opts[0]}"
                continue
            option.type_cast_value(ctx, raw)  # click's own conversion: raises on a value the option refuses
        ours = {n for n, v in env.items() if n.startswith(f"KUBESONAR_{command.upper()}_") and v}
        assert ours <= read, f"{overlay}: {sorted(ours - read)} is no option of `kubesonar {command}`"


@pytest.mark.parametrize("overlay, queue", [("aws", "sqs"), ("gcp", "pubsub"), ("azure", "eventgrid"),
                                            ("local", "file"), ("onprem", "nats")])
def test_each_overlay_names_its_clouds_queue(overlay, queue):
    from kubesonar.sensor.queues import parse_queue_url

    settings = next(d for d in _render(overlay) if d["kind"] == "ConfigMap"
                    and d["metadata"]["name"] == "kubesonar-sensor")["data"]
    assert parse_queue_url(settings["KUBESONAR_SENSOR_QUEUE"]).kind == queue


def test_the_image_pins_its_base_and_runs_the_sensor():
    dockerfile = (REPO / "sensor" / "Dockerfile").read_text()
    bases = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("FROM")]
    assert all(":" in b and "latest" not in b for b in bases)
    assert 'ENTRYPOINT ["kubesonar"]' in dockerfile and 'CMD ["sensor"]' in dockerfile
    assert Path(REPO / ".dockerignore").read_text().count(".git") >= 1


def test_the_azure_overlay_carries_the_workload_identity_of_the_sensor():
    docs = _render("azure")
    account = next(d for d in docs if d["kind"] == "ServiceAccount")
    assert (account["metadata"]["namespace"], account["metadata"]["name"]) == ("kubesonar", "kubesonar-sensor")
    assert "azure.workload.identity/client-id" in account["metadata"]["annotations"]
    pod = _daemonset("azure")["spec"]["template"]
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert pod["spec"]["serviceAccountName"] == "kubesonar-sensor"


def test_the_onprem_backend_is_replicated_restricted_and_probed():
    docs = _render("onprem")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert deployment["spec"]["replicas"] >= 2 and container["args"] == ["backend"]
    # the Pod Security Standard "restricted", although the namespace is privileged for the sensor
    pod_sc = pod["securityContext"]
    assert pod_sc["runAsNonRoot"] and pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] and not pod.get("hostNetwork")
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    probes = {p: container[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert probes == {"readinessProbe": "/readyz", "livenessProbe": "/healthz", "startupProbe": "/readyz"}
    assert {"name": "metrics", "containerPort": 9100, "protocol": "TCP"} in container["ports"]
    pdb = next(d for d in docs if d["kind"] == "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"] and pdb["spec"]["minAvailable"] >= 1
    service = next(d for d in docs if d["kind"] == "Service")
    assert service["spec"]["ports"][0]["name"] == "metrics"
    monitor = yaml.safe_load((K8S / "overlays" / "onprem" / "servicemonitor.yaml").read_text())
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_the_onprem_settings_name_one_nats():
    from kubesonar.shared.nats_address import parse_nats_url

    docs = _render("onprem")
    configs = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    settings, sensor = configs["kubesonar-backend"], configs["kubesonar-sensor"]
    urls = (sensor["KUBESONAR_SENSOR_QUEUE"], settings["KUBESONAR_BACKEND_QUEUE"], settings["KUBESONAR_BACKEND_STORE"])
    servers = {parse_nats_url(url).server for url in urls}
    assert servers == {"nats://nats.nats.svc:4222"}
    assert sensor["KUBESONAR_SENSOR_QUEUE"] == settings["KUBESONAR_BACKEND_QUEUE"]


def test_the_nats_chart_values_ask_for_a_jetstream_cluster_on_volumes():
    values = yaml.safe_load((K8S / "overlays" / "onprem" / "nats-values.yaml").read_text())
    assert values["config"]["cluster"] == {"enabled": True, "replicas": 3}
    store = values["config"]["jetstream"]
    assert store["enabled"] and store["fileStore"]["enabled"] and store["fileStore"]["pvc"]["enabled"]
    assert not store["memoryStore"]["enabled"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_sensor_signs_with_the_keyring_secret_except_on_the_embedded_default(overlay):
    docs = _render(overlay)
    pod = _daemonset(overlay)["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "keyring"]
    assert volume["secret"]["secretName"] == "kubesonar-keyring"
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "keyring"]
    assert mount["readOnly"] is True
    settings = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "kubesonar-sensor")["data"]
    key_file = settings["KUBESONAR_SENSOR_KEY_FILE"]
    if overlay == "local":  # its backend is on the node itself: unsigned, and the backend says so
        assert key_file == ""
    else:
        assert key_file.startswith(mount["mountPath"] + "/")


def test_the_onprem_backend_verifies_with_the_same_keyring():
    backend = next(d for d in _render("onprem") if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in backend["volumes"] if v["name"] == "keyring"]
    assert volume["secret"]["secretName"] == "kubesonar-keyring" and not volume["secret"].get("optional")
    (container,) = backend["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "keyring"]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env["KUBESONAR_KEYRING_FILE"].startswith(mount["mountPath"] + "/")
    assert backend["securityContext"]["fsGroup"] == backend["securityContext"]["runAsUser"]  # it can read the file
    assert "keyring_from_env(os.environ)" in (REPO / "kubesonar" / "backend_runner.py").read_text()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_sensor_is_restarted_when_its_loop_stops_moving(overlay, tmp_path):
    """The livenessProbe reads the file the sensor is told to write, in a volume it can write to, with the
    module that judges it; and that command, run here, tells a fresh heartbeat from a stale one."""
    import sys

    from kubesonar.sensor.liveness import Heartbeat

    (container,) = _daemonset(overlay)["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    health_file = env["KUBESONAR_SENSOR_HEALTH_FILE"]
    probe = container["livenessProbe"]
    command = probe["exec"]["command"]
    assert command == ["python", "-m", "kubesonar.sensor.liveness", health_file]
    assert any(health_file.startswith(m["mountPath"] + "/") and not m.get("readOnly")
               for m in container["volumeMounts"]), "the sensor cannot write its health file under a read-only root"
    assert probe["periodSeconds"] * probe["failureThreshold"] <= 120 and probe["timeoutSeconds"] >= 5
    here = [sys.executable, *command[1:-1], str(tmp_path / "alive")]
    assert subprocess.run(here, capture_output=True).returncode == 1  # no file yet: not alive
    Heartbeat(tmp_path / "alive", stale_after_s=60).beat()
    assert subprocess.run(here, capture_output=True).returncode == 0
    Heartbeat(tmp_path / "alive", stale_after_s=-1).beat()
    stale = subprocess.run(here, capture_output=True, text=True)
    assert stale.returncode == 1 and "past its deadline" in stale.stderr
