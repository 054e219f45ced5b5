# The smallest complete deployment (docs/azure.md): apply, publish the function, apply again with
# function_deployed = true so Event Grid subscribes it.

terraform {
  required_version = ">= 1.5.0"

  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = ">= 4.21, < 5.0"
    }
    random = {
      source  = "hashicorp/random"
      version = ">= 3.5, < 4.0"
    }
  }
}

provider "azurerm" {
  features {}
  storage_use_azuread = true # the accounts have shared keys off
}

variable "aks_oidc_issuer_url" {
  description = "Your AKS cluster's OIDC issuer (az aks show -n CLUSTER -g GROUP --query oidcIssuerProfile.issuerUrl -o tsv)."
  type        = string
  default     = null
}

variable "function_deployed" {
  description = "Set to true once the package is deployed (az functionapp deployment source config-zip, docs/azure.md)."
  type        = bool
  default     = false
}

module "kubesonar" {
  source = "../../"

  name                = "kubesonar"
  location            = "westeurope"
  aks_oidc_issuer_url = var.aks_oidc_issuer_url
  function_deployed   = var.function_deployed
}

output "queue_url" {
  description = "KUBESONAR_SENSOR_QUEUE for infra/k8s/overlays/azure."
  value       = module.kubesonar.queue_url
}

output "sensor_client_id" {
  description = "azure.workload.identity/client-id for the sensor's service account."
  value       = module.kubesonar.sensor_client_id
}

output "function_app_name" {
  description = "Where to publish functions/azure."
  value       = module.kubesonar.function_app_name
}

output "alerts_topic_id" {
  description = "Subscribe to alerts here."
  value       = module.kubesonar.alerts_topic_id
}

output "key_vault_name" {
  description = "Write the keyring as its secret \"keyring\" before publishing the function (docs/hardening.md)."
  value       = module.kubesonar.key_vault_name
}
