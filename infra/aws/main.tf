data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account   = data.aws_caller_identity.current.account_id
  partition = data.aws_partition.current.partition
  function  = "${var.name}-scoring"
  buckets = {
    state  = "${var.name}-state-${local.account}"
    alerts = "${var.name}-alerts-${local.account}"
  }
  oidc_issuer = var.eks_oidc_provider_arn == null ? null : element(split("oidc-provider/", var.eks_oidc_provider_arn), 1)
}

################################################################################
# Encryption: one customer-managed key for the queue, buckets, topic, logs and environment
################################################################################

data "aws_iam_policy_document" "key" {
  #checkov:skip=CKV_AWS_111:In a key policy "*" means this key only
  #checkov:skip=CKV_AWS_356:In a key policy "*" means this key only
  #checkov:skip=CKV_AWS_109:The account root administers its own key, as AWS's default key policy does
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account}:root"]
    }
  }

  statement {
    sid       = "ServicesUseIt"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["sns.amazonaws.com", "sqs.amazonaws.com", "cloudwatch.amazonaws.com"]
    }
  }

  # CloudWatch Logs checks the key (DescribeKey) and encrypts with it when the log group is created: with
  # Decrypt and GenerateDataKey alone, creating the encrypted group can be refused. The actions are the
  # ones AWS's "Encrypt log data in CloudWatch Logs using AWS KMS" gives, held to this account's groups.
  statement {
    sid       = "LogsUseIt"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${data.aws_region.current.name}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${data.aws_region.current.name}:${local.account}:log-group:*"]
    }
  }
}

resource "aws_kms_key" "this" {
  description             = "KubeSonar ${var.name}: flows queue, baselines, alerts, topic, logs"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.key.json
  tags                    = var.tags
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

################################################################################
# Queue: sensors publish flow batches here; failing messages end in the dead-letter queue
################################################################################

resource "aws_sqs_queue" "dlq" {
  name                      = "${var.name}-flows-dlq"
  message_retention_seconds = 1209600
  kms_master_key_id         = aws_kms_key.this.arn
  tags                      = var.tags
}

resource "aws_sqs_queue" "flows" {
  name                       = "${var.name}-flows"
  max_message_size           = 262144
  message_retention_seconds  = 345600
  visibility_timeout_seconds = var.lambda_timeout * 6 # AWS's advice for a queue feeding a function
  kms_master_key_id          = aws_kms_key.this.arn
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dlq.arn
    maxReceiveCount     = var.max_receive_count
  })
  tags = var.tags
}

resource "aws_sqs_queue_redrive_allow_policy" "dlq" {
  queue_url = aws_sqs_queue.dlq.id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.flows.arn]
  })
}

################################################################################
# Buckets: baselines (state) and alerts; private, encrypted, versioned
################################################################################

resource "aws_s3_bucket" "this" {
  #checkov:skip=CKV_AWS_18:Access logs would need a third bucket; CloudTrail data events cover audit where wanted
  #checkov:skip=CKV_AWS_144:Baselines and alerts are rebuilt from new traffic; cross-region replication is the user's choice
  #checkov:skip=CKV2_AWS_62:Nothing consumes bucket events; alerts are pushed on the SNS topic
  #checkov:skip=CKV2_AWS_61:checkov does not follow for_each companions; lifecycle below, for both (tested)
  #checkov:skip=CKV2_AWS_6:checkov does not follow for_each companions; public access block below, for both (tested)
  #checkov:skip=CKV_AWS_21:checkov does not follow for_each companions; versioning below, for both (tested)
  #checkov:skip=CKV_AWS_145:checkov does not follow for_each companions; KMS encryption below, for both (tested)
  for_each      = local.buckets
  bucket        = each.value
  force_destroy = false
  tags          = var.tags
}

resource "aws_s3_bucket_ownership_controls" "this" {
  for_each = aws_s3_bucket.this
  bucket   = each.value.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "this" {
  for_each                = aws_s3_bucket.this
  bucket                  = each.value.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "this" {
  for_each = aws_s3_bucket.this
  bucket   = each.value.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  for_each = aws_s3_bucket.this
  bucket   = each.value.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.this.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  for_each = aws_s3_bucket.this
  bucket   = each.value.id

  rule {
    id     = "old-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }

  dynamic "rule" {
    for_each = each.key == "alerts" ? [1] : []
    content {
      id     = "old-alerts"
      status = "Enabled"
      filter {
        prefix = "alerts/"
      }
      expiration {
        days = var.alert_retention_days
      }
    }
  }
}

data "aws_iam_policy_document" "bucket" {
  for_each = aws_s3_bucket.this
  statement {
    sid     = "TlsOnly"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      each.value.arn,
      "${each.value.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "this" {
  for_each = aws_s3_bucket.this
  bucket   = each.value.id
  policy   = data.aws_iam_policy_document.bucket[each.key].json
}

################################################################################
# Alerts topic and its subscriptions
################################################################################

resource "aws_sns_topic" "alerts" {
  name              = "${var.name}-alerts"
  kms_master_key_id = aws_kms_key.this.arn
  tags              = var.tags
}

resource "aws_sns_topic_subscription" "email" {
  for_each  = toset(var.alert_email_addresses)
  topic_arn = aws_sns_topic.alerts.arn
  protocol  = "email"
  endpoint  = each.value
}

resource "aws_sns_topic_subscription" "https" {
  for_each  = toset(var.alert_https_endpoints)
  topic_arn = aws_sns_topic.alerts.arn
  protocol  = "https"
  endpoint  = each.value
}

################################################################################
# The scoring function
################################################################################

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "lambda" {
  name               = local.function
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "lambda" {
  statement {
    sid       = "ConsumeFlows" # the event source mapping polls on the function's behalf
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"]
    resources = [aws_sqs_queue.flows.arn]
  }

  statement {
    sid       = "ReadWriteDocuments" # baselines and alerts, with conditional writes
    actions   = ["s3:GetObject", "s3:PutObject"]
    resources = [for b in aws_s3_bucket.this : "${b.arn}/*"]
  }

  statement {
    sid       = "MissingMeansMissing" # without it, reading an absent baseline answers 403, not 404
    actions   = ["s3:ListBucket"]
    resources = [for b in aws_s3_bucket.this : b.arn]
  }

  statement {
    sid       = "Notify"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.alerts.arn]
  }

  statement {
    sid       = "ReadKeyring" # the cluster keys batches are signed with, read once per cold start
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_secretsmanager_secret.keyring.arn]
  }

  statement {
    sid       = "UseTheKey" # the queue, buckets, topic and keyring are encrypted with it
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.this.arn]
  }

  statement {
    sid       = "Log"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.lambda.arn}:*"]
  }
}

################################################################################
# Keyring: the cluster keys batches are signed with (docs/hardening.md). The module makes the secret,
# encrypted with the module's key; its value is written by the operator (README), so no key is in the
# Terraform state. Until it holds a keyring the function fails at cold start and batches wait in the queue.
################################################################################

resource "aws_secretsmanager_secret" "keyring" {
  #checkov:skip=CKV2_AWS_57:An HMAC keyring is rotated by adding a key, moving the sensors, then removing the old (docs/hardening.md), not by a rotation Lambda
  name                    = "${var.name}-keyring"
  description             = "KubeSonar: keyring the scoring function verifies sensor batches with"
  kms_key_id              = aws_kms_key.this.arn
  recovery_window_in_days = 7
  tags                    = var.tags
}

resource "aws_iam_role_policy" "lambda" {
  name   = "scoring"
  role   = aws_iam_role.lambda.id
  policy = data.aws_iam_policy_document.lambda.json
}

resource "aws_cloudwatch_log_group" "lambda" {
  name              = "/aws/lambda/${local.function}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = var.tags
}

resource "aws_lambda_function" "scoring" {
  #checkov:skip=CKV_AWS_50:X-Ray tracing adds cost and a permission; latency is in the EMF metrics
  #checkov:skip=CKV_AWS_116:Invoked only by the SQS event source mapping, whose queue has the dead-letter queue
  #checkov:skip=CKV_AWS_117:Talks only to S3, SNS and SQS public endpoints; no VPC resources to reach
  #checkov:skip=CKV_AWS_272:Code signing needs a signing profile the user owns; the zip is built from this repository
  function_name                  = local.function
  description                    = "KubeSonar: scores sensor flow batches, writes alerts to S3, notifies SNS"
  role                           = aws_iam_role.lambda.arn
  filename                       = var.lambda_zip_path
  source_code_hash               = filebase64sha256(var.lambda_zip_path)
  handler                        = "kubesonar.functions.aws.handler.lambda_handler"
  runtime                        = "python3.12"
  architectures                  = ["arm64"]
  memory_size                    = var.lambda_memory_size
  timeout                        = var.lambda_timeout
  reserved_concurrent_executions = var.lambda_reserved_concurrency
  kms_key_arn                    = aws_kms_key.this.arn

  environment {
    variables = {
      KUBESONAR_STATE_BUCKET          = aws_s3_bucket.this["state"].id
      KUBESONAR_ALERTS_BUCKET         = aws_s3_bucket.this["alerts"].id
      KUBESONAR_TOPIC_ARN             = aws_sns_topic.alerts.arn
      KUBESONAR_LEARNING_PERIOD_S     = tostring(var.learning_period_seconds)
      KUBESONAR_SENSOR_SILENT_AFTER_S = tostring(var.sensor_silent_after_seconds)
      KUBESONAR_INTERNAL_NETWORKS     = join(",", var.internal_networks)
      KUBESONAR_KEYRING_SECRET        = aws_secretsmanager_secret.keyring.name
      KUBESONAR_STORE_RETRY_S         = tostring(var.store_retry_s)
      POWERTOOLS_SERVICE_NAME         = "kubesonar"
      POWERTOOLS_METRICS_NAMESPACE    = "KubeSonar"
    }
  }

  lifecycle {
    # a precondition, not a variable validation: Terraform before 1.9 lets a validation read its own variable only
    precondition {
      condition     = 2 * var.store_retry_s < var.lambda_timeout
      error_message = "store_retry_s (${var.store_retry_s}) must be under half of lambda_timeout (${var.lambda_timeout}): an unreachable S3 fails within about twice it, and a call must end inside the invocation."
    }
  }

  depends_on = [aws_cloudwatch_log_group.lambda, aws_iam_role_policy.lambda]
  tags       = var.tags
}

resource "aws_lambda_event_source_mapping" "flows" {
  event_source_arn                   = aws_sqs_queue.flows.arn
  function_name                      = aws_lambda_function.scoring.arn
  batch_size                         = var.batch_size
  maximum_batching_window_in_seconds = var.maximum_batching_window_in_seconds
  function_response_types            = ["ReportBatchItemFailures"]

  scaling_config {
    maximum_concurrency = max(2, var.lambda_reserved_concurrency)
  }
}

################################################################################
# The sensor-health check: every minute, so a cluster whose sensors all went quiet is still told
################################################################################

resource "aws_cloudwatch_event_rule" "sensor_check" {
  name                = "${var.name}-sensor-check"
  description         = "KubeSonar: raise sensor_silent for sensors unheard too long"
  schedule_expression = "rate(1 minute)"
  tags                = var.tags
}

resource "aws_cloudwatch_event_target" "sensor_check" {
  rule = aws_cloudwatch_event_rule.sensor_check.name
  arn  = aws_lambda_function.scoring.arn
}

resource "aws_lambda_permission" "sensor_check" {
  statement_id  = "AllowSensorCheckSchedule"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.scoring.function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.sensor_check.arn
}

################################################################################
# Alarms: messages the function could not score, and function errors
################################################################################

resource "aws_cloudwatch_metric_alarm" "dlq" {
  alarm_name          = "${var.name}-flows-dead-letters"
  alarm_description   = "Flow batches the scoring function failed on reached the dead-letter queue."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.dlq.name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alerts.arn]
  tags                = var.tags
}

resource "aws_cloudwatch_metric_alarm" "errors" {
  alarm_name          = "${var.name}-scoring-errors"
  alarm_description   = "The scoring function failed invocations."
  namespace           = "AWS/Lambda"
  metric_name         = "Errors"
  dimensions          = { FunctionName = aws_lambda_function.scoring.function_name }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alerts.arn]
  tags                = var.tags
}

################################################################################
# The sensor's identity: an IRSA role bound to its service account, allowed to publish only
################################################################################

data "aws_iam_policy_document" "sensor_assume" {
  count = var.eks_oidc_provider_arn == null ? 0 : 1
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.eks_oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:sub"
      values   = ["system:serviceaccount:${var.sensor_namespace}:${var.sensor_service_account}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "sensor" {
  count              = var.eks_oidc_provider_arn == null ? 0 : 1
  name               = "${var.name}-sensor"
  assume_role_policy = data.aws_iam_policy_document.sensor_assume[0].json
  tags               = var.tags
}

data "aws_iam_policy_document" "sensor" {
  statement {
    sid       = "PublishFlows"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.flows.arn]
  }

  statement {
    sid       = "UseTheKey" # the queue is encrypted with it
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = [aws_kms_key.this.arn]
  }
}

resource "aws_iam_role_policy" "sensor" {
  count  = var.eks_oidc_provider_arn == null ? 0 : 1
  name   = "publish"
  role   = aws_iam_role.sensor[0].id
  policy = data.aws_iam_policy_document.sensor.json
}
