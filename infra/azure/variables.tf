variable "name" {
  description = "Prefix of every resource name (letters and digits; storage account names drop anything else)."
  type        = string
  default     = "kubesonar"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,14}$", var.name))
    error_message = "name: 2-15 lower-case letters, digits or hyphens, starting with a letter."
  }
}

variable "location" {
  description = "Azure region of every resource, e.g. westeurope."
  type        = string
}

variable "tags" {
  description = "Tags on every resource that takes them."
  type        = map(string)
  default     = {}
}

variable "function_deployed" {
  description = "Whether the function app's code is published (functions/azure/build.py, then az functionapp deployment source config-zip); Event Grid checks that the function exists when the subscription is created, so apply once with false, publish, then apply with true."
  type        = bool
  default     = false
}

variable "aks_oidc_issuer_url" {
  description = "Your AKS cluster's OIDC issuer URL (az aks show --query oidcIssuerProfile.issuerUrl), for the sensor's federated credential; null creates no sensor identity."
  type        = string
  default     = null
}

variable "sensor_namespace" {
  description = "Kubernetes namespace of the sensor's service account (infra/k8s)."
  type        = string
  default     = "kubesonar"
}

variable "sensor_service_account" {
  description = "Name of the sensor's Kubernetes service account (infra/k8s)."
  type        = string
  default     = "kubesonar-sensor"
}

variable "maximum_instance_count" {
  description = "Most instances the Flex Consumption app scales out to (40-1000); bounds concurrent invocations and cost."
  type        = number
  default     = 40

  validation {
    condition     = var.maximum_instance_count >= 40 && var.maximum_instance_count <= 1000
    error_message = "maximum_instance_count: 40 to 1000."
  }
}

variable "instance_memory_in_mb" {
  description = "Memory of each function instance: 2048 or 4096 MB."
  type        = number
  default     = 2048

  validation {
    condition     = contains([2048, 4096], var.instance_memory_in_mb)
    error_message = "instance_memory_in_mb: 2048 or 4096."
  }
}

variable "max_delivery_attempts" {
  description = "Event Grid's delivery attempts of one event before it is dead-lettered (1-30)."
  type        = number
  default     = 10

  validation {
    condition     = var.max_delivery_attempts >= 1 && var.max_delivery_attempts <= 30
    error_message = "max_delivery_attempts: 1 to 30."
  }
}

variable "event_time_to_live_minutes" {
  description = "Minutes Event Grid keeps retrying an event before it is dead-lettered (1-1440)."
  type        = number
  default     = 60

  validation {
    condition     = var.event_time_to_live_minutes >= 1 && var.event_time_to_live_minutes <= 1440
    error_message = "event_time_to_live_minutes: 1 to 1440."
  }
}

variable "learning_period_seconds" {
  description = "How long novelty detectors learn silently (KUBESONAR_LEARNING_PERIOD_S)."
  type        = number
  default     = 86400
}

variable "sensor_silent_after_seconds" {
  description = "A node's sensor unheard this long raises sensor_silent (KUBESONAR_SENSOR_SILENT_AFTER_S)."
  type        = number
  default     = 60
}

variable "internal_networks" {
  description = "The cluster's and VNet's CIDRs: traffic leaving them is what egress detectors judge (KUBESONAR_INTERNAL_NETWORKS)."
  type        = list(string)
  default     = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"]
}

variable "store_retry_s" {
  description = "Seconds a Blob Storage or Key Vault call may keep retrying (KUBESONAR_STORE_RETRY_S): its retries' sleeps and its requests' timeouts fit it, so an unreachable account or vault fails within about twice it. Twice it must stay under the 30 seconds Event Grid waits for the function's answer: past them Event Grid counts the delivery failed and schedules a retry while the invocation still runs, so the invocation's own outcome must come first."
  type        = number
  default     = 12

  validation {
    condition     = var.store_retry_s > 0 && 2 * var.store_retry_s < 30
    error_message = "store_retry_s: more than 0 and under 15 seconds (twice it must stay under the 30 seconds Event Grid waits for the function's answer)."
  }
}

variable "soft_delete_retention_days" {
  description = "Days deleted blobs and containers stay recoverable."
  type        = number
  default     = 14
}

variable "log_retention_days" {
  description = "Days Log Analytics keeps the function's logs (30-730)."
  type        = number
  default     = 30
}

variable "storage_replication_type" {
  description = "Replication of the storage accounts: LRS, ZRS, GRS, RAGRS, GZRS or RAGZRS."
  type        = string
  default     = "ZRS"
}

variable "alert_email_addresses" {
  description = "Who the metric alerts (dead-lettered events, function failures) e-mail."
  type        = list(string)
  default     = []
}

variable "keyring_writer_object_ids" {
  description = "Entra object ids allowed to write the keyring secret (Key Vault Secrets Officer on the vault, which holds nothing else); null: whoever runs Terraform. The vault authorises by RBAC only, so without this grant no one can put the keyring in it."
  type        = list(string)
  default     = null
}
