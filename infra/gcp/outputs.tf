output "queue_url" {
  description = "Give this to the sensors (KUBESONAR_SENSOR_QUEUE in infra/k8s/overlays/gcp)."
  value       = "pubsub://${google_pubsub_topic.this["flows"].id}"
}

output "sensor_service_account_email" {
  description = "Annotate the sensor's Kubernetes service account with this (iam.gke.io/gcp-service-account)."
  value       = google_service_account.sensor.email
}

output "alerts_topic" {
  description = "Subscribe to alerts here (attributes severity, type, cluster)."
  value       = google_pubsub_topic.this["alerts"].id
}

output "state_bucket" {
  description = "Baselines and sensor health; poison messages under deadletter/."
  value       = google_storage_bucket.this["state"].name
}

output "alerts_bucket" {
  description = "Alerts as JSON documents."
  value       = google_storage_bucket.this["alerts"].name
}

output "function_name" {
  description = "The scoring function (Cloud Run functions, 2nd gen)."
  value       = google_cloudfunctions2_function.scoring.name
}

output "dead_letter_subscription" {
  description = "Holds messages that failed max_delivery_attempts times, for inspection."
  value       = google_pubsub_subscription.dead_letter.id
}

output "keyring_secret_id" {
  description = "Secret Manager secret the function's keyring comes from: add the keyring as its version (README, docs/hardening.md)."
  value       = google_secret_manager_secret.keyring.id
}
