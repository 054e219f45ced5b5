# The smallest complete deployment: build the function's source, then `terraform init && terraform apply`.
#   python ../../../../functions/gcp/build.py   (writes build/kubesonar-gcp.zip at the repository root)

terraform {
  required_version = ">= 1.5.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 5.40, < 7.0"
    }
  }
}

variable "project_id" {
  description = "Your Google Cloud project."
  type        = string
}

variable "cluster_issuer" {
  description = "Your cluster's service-account token issuer: kubectl get --raw /.well-known/openid-configuration | jq -r .issuer"
  type        = string
}

provider "google" {
  project = var.project_id
  region  = "us-central1"
}

module "kubesonar" {
  source = "../../"

  project_id          = var.project_id
  cluster_issuer      = var.cluster_issuer
  source_archive_path = "${path.module}/../../../../build/kubesonar-gcp.zip"
}

output "queue_url" {
  description = "Give this to the sensors (KUBESONAR_SENSOR_QUEUE in infra/k8s/overlays/gcp)."
  value       = module.kubesonar.queue_url
}

output "sensor_credential_configuration" {
  description = "Write this to infra/k8s/overlays/gcp/credential-configuration.json."
  value       = module.kubesonar.sensor_credential_configuration
}

output "sensor_token_audience" {
  description = "The audience of the sensor's projected token (identity.yaml in infra/k8s/overlays/gcp)."
  value       = module.kubesonar.sensor_token_audience
}

output "alerts_topic" {
  description = "Subscribe to alerts here."
  value       = module.kubesonar.alerts_topic
}

output "keyring_secret_id" {
  description = "Add the keyring as this secret's version before the function is created (docs/gcp.md, docs/hardening.md)."
  value       = module.kubesonar.keyring_secret_id
}
