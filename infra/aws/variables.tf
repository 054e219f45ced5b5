variable "name" {
  description = "Prefix of every resource's name (queue, buckets, function, topic, roles)."
  type        = string
  default     = "kubesonar"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,30}$", var.name))
    error_message = "name: 3 to 31 lowercase letters, digits or hyphens, starting with a letter (it prefixes bucket names)."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

variable "lambda_zip_path" {
  description = "The function's deployment package, built by functions/aws/build.py (python functions/aws/build.py)."
  type        = string
}

variable "lambda_memory_size" {
  description = "Memory of the scoring function, in MB."
  type        = number
  default     = 512
}

variable "lambda_timeout" {
  description = "Seconds one invocation (a batch of SQS messages) may take."
  type        = number
  default     = 60
}

variable "store_retry_s" {
  description = "Seconds an S3 call may keep retrying (KUBESONAR_STORE_RETRY_S): its attempts share this in connect and read timeouts, so an unreachable S3 fails within about twice it. Twice it must stay under lambda_timeout, so a retrying call ends inside the invocation."
  type        = number
  default     = 20

  validation {
    condition     = var.store_retry_s > 0
    error_message = "store_retry_s must be more than 0 seconds."
  }
}

variable "lambda_reserved_concurrency" {
  description = "Upper bound on concurrent scoring invocations (the queue buffers the rest)."
  type        = number
  default     = 20
}

variable "batch_size" {
  description = "SQS messages per invocation. The function reads and writes each state document once per invocation, so larger batches cost less (docs/cost.md); Lambda also cuts a batch at 6 MB of payload."
  type        = number
  default     = 100

  validation {
    condition     = var.batch_size >= 1 && var.batch_size <= 10000
    error_message = "batch_size must be between 1 and 10000 (SQS standard queues)."
  }
}

variable "maximum_batching_window_in_seconds" {
  description = "Seconds the event source mapping may wait to fill a batch: the knob that trades alert latency for cost. Window end to alert is about this plus the processing time (docs/cost.md)."
  type        = number
  default     = 30

  validation {
    condition     = var.maximum_batching_window_in_seconds >= 0 && var.maximum_batching_window_in_seconds <= 300
    error_message = "maximum_batching_window_in_seconds must be between 0 and 300."
  }
}

variable "learning_period_seconds" {
  description = "How long novelty detectors learn, silently, before they alert (data time)."
  type        = number
  default     = 86400
}

variable "internal_networks" {
  description = "CIDRs inside the cluster or VPC (pod, service and VPC ranges): beaconing, exfiltration and unusual_destination judge only traffic leaving them."
  type        = list(string)
  default     = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"]

  validation {
    condition     = alltrue([for c in var.internal_networks : can(cidrhost(c, 0))])
    error_message = "Every internal network must be a CIDR, such as 10.0.0.0/8."
  }
}

variable "sensor_silent_after_seconds" {
  description = "Seconds without a heartbeat after which a node's sensor is reported silent."
  type        = number
  default     = 60
}

variable "max_receive_count" {
  description = "Deliveries of a message before it moves to the dead-letter queue."
  type        = number
  default     = 5
}

variable "alert_retention_days" {
  description = "Days alerts are kept in the alerts bucket (older versions: 30 days)."
  type        = number
  default     = 365
}

variable "log_retention_days" {
  description = "Days the function's logs are kept."
  type        = number
  default     = 365
}

variable "alert_email_addresses" {
  description = "Email addresses subscribed to the alert topic (each must confirm)."
  type        = list(string)
  default     = []
}

variable "alert_https_endpoints" {
  description = "HTTPS endpoints subscribed to the alert topic (a webhook, a SIEM collector)."
  type        = list(string)
  default     = []
}

variable "eks_oidc_provider_arn" {
  description = "ARN of the EKS cluster's IAM OIDC provider; with it, an IRSA role for the sensor is created."
  type        = string
  default     = null
}

variable "sensor_namespace" {
  description = "Namespace of the sensor's service account (infra/k8s)."
  type        = string
  default     = "kubesonar"
}

variable "sensor_service_account" {
  description = "Name of the sensor's service account (infra/k8s)."
  type        = string
  default     = "kubesonar-sensor"
}
