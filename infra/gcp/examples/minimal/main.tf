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
  description = "Your Google Cloud project (its GKE cluster has Workload Identity enabled)."
  type        = string
}

provider "google" {
  project = var.project_id
  region  = "us-central1"
}

module "kubesonar" {
  source = "../../"

  project_id          = var.project_id
  source_archive_path = "${path.module}/../../../../build/kubesonar-gcp.zip"
}

output "queue_url" {
  description = "Give this to the sensors (KUBESONAR_SENSOR_QUEUE in infra/k8s/overlays/gcp)."
  value       = module.kubesonar.queue_url
}

output "sensor_service_account_email" {
  description = "Annotate the sensor's service account with this (iam.gke.io/gcp-service-account)."
  value       = module.kubesonar.sensor_service_account_email
}

output "alerts_topic" {
  description = "Subscribe to alerts here."
  value       = module.kubesonar.alerts_topic
}

output "keyring_secret_id" {
  description = "Add the keyring as this secret's version before the function is created (docs/gcp.md, docs/hardening.md)."
  value       = module.kubesonar.keyring_secret_id
}
