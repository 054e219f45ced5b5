output "queue_url" {
  description = "Give this to the sensors (KUBESONAR_SENSOR_QUEUE in infra/k8s/overlays/gcp)."
  value       = "pubsub://${google_pubsub_topic.this["flows"].id}"
}

output "sensor_credential_configuration" {
  description = "The sensors' credential configuration file, as `gcloud iam workload-identity-pools create-cred-config` writes it: write it to infra/k8s/overlays/gcp/credential-configuration.json."
  value = jsonencode({
    universe_domain    = "googleapis.com"
    type               = "external_account"
    audience           = "//iam.googleapis.com/${google_iam_workload_identity_pool_provider.cluster.name}"
    subject_token_type = "urn:ietf:params:oauth:token-type:jwt"
    token_url          = "https://sts.googleapis.com/v1/token"
    credential_source = {
      file   = "/var/run/service-account/token" # where infra/k8s/overlays/gcp projects the token
      format = { type = "text" }
    }
  })
}

output "sensor_token_audience" {
  description = "The audience of the sensor's projected service-account token (identity.yaml in infra/k8s/overlays/gcp)."
  value       = "https://iam.googleapis.com/${google_iam_workload_identity_pool_provider.cluster.name}"
}

output "sensor_principal" {
  description = "The IAM principal the sensors publish as (roles/pubsub.publisher on the flows topic, nothing else)."
  value       = local.sensor_principal
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
