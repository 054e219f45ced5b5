# The smallest complete deployment: build the function, then `terraform init && terraform apply`.
#   python ../../../../functions/aws/build.py   (writes build/kubesonar-lambda.zip at the repository root)

terraform {
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.70, < 7.0"
    }
  }
}

provider "aws" {
  region = "us-east-1"
}

variable "eks_oidc_provider_arn" {
  description = "Your EKS cluster's OIDC provider ARN (aws eks describe-cluster ... identity.oidc.issuer), for the sensor's IRSA role."
  type        = string
  default     = null
}

module "kubesonar" {
  source = "../../"

  name                  = "kubesonar"
  lambda_zip_path       = "${path.module}/../../../../build/kubesonar-lambda.zip"
  eks_oidc_provider_arn = var.eks_oidc_provider_arn
  alert_email_addresses = []
}

output "queue_url" {
  description = "Give this to the sensors (KUBESONAR_SENSOR_QUEUE in infra/k8s/overlays/aws)."
  value       = module.kubesonar.queue_url
}

output "sensor_role_arn" {
  description = "Annotate the sensor's service account with this (eks.amazonaws.com/role-arn)."
  value       = module.kubesonar.sensor_role_arn
}

output "topic_arn" {
  description = "Subscribe to alerts here."
  value       = module.kubesonar.topic_arn
}

output "keyring_secret_name" {
  description = "Put the keyring in this secret before the function runs (docs/hardening.md)."
  value       = module.kubesonar.keyring_secret_name
}
