output "queue_url" {
  description = "URL of the flows queue: the sensors' --queue (KUBESONAR_SENSOR_QUEUE)."
  value       = aws_sqs_queue.flows.id
}

output "queue_arn" {
  description = "ARN of the flows queue."
  value       = aws_sqs_queue.flows.arn
}

output "dead_letter_queue_url" {
  description = "URL of the dead-letter queue (batches the function failed on)."
  value       = aws_sqs_queue.dlq.id
}

output "state_bucket" {
  description = "Bucket of the baselines (state/<cluster>/<detector>.json)."
  value       = aws_s3_bucket.this["state"].id
}

output "alerts_bucket" {
  description = "Bucket of the alerts (alerts/<cluster>/<alert id>.json)."
  value       = aws_s3_bucket.this["alerts"].id
}

output "topic_arn" {
  description = "SNS topic alerts are pushed to (message attributes: severity, type, cluster)."
  value       = aws_sns_topic.alerts.arn
}

output "function_name" {
  description = "Name of the scoring function."
  value       = aws_lambda_function.scoring.function_name
}

output "sensor_role_arn" {
  description = "IRSA role for the sensor's service account (eks.amazonaws.com/role-arn), when an OIDC provider was given."
  value       = try(aws_iam_role.sensor[0].arn, null)
}

output "kms_key_arn" {
  description = "The key that encrypts the queue, buckets, topic and logs."
  value       = aws_kms_key.this.arn
}

output "keyring_secret_name" {
  description = "Secrets Manager secret the function reads its keyring from: put the keyring in it (README, docs/hardening.md)."
  value       = aws_secretsmanager_secret.keyring.name
}
