variable "project_id" {
  description = "The Google Cloud project everything is created in."
  type        = string
}

variable "region" {
  description = "Region of the function, buckets, key ring and scheduler job."
  type        = string
  default     = "us-central1"
}

variable "name" {
  description = "Prefix of every resource name."
  type        = string
  default     = "kubesonar"
}

variable "source_archive_path" {
  description = "The function's source archive (python functions/gcp/build.py writes build/kubesonar-gcp.zip)."
  type        = string
}

variable "function_memory" {
  description = "Memory of one function instance."
  type        = string
  default     = "1Gi"
}

variable "function_timeout_seconds" {
  description = "How long one tick may drain and score; under the flows subscription's ack deadline."
  type        = number
  default     = 300
}

variable "store_retry_s" {
  description = "Seconds a Cloud Storage call may keep retrying (KUBESONAR_STORE_RETRY_S); each request's timeout is the same, so an unreachable bucket fails within about twice it. Twice it must stay under the fifth of function_timeout_seconds left after a tick stops starting new rounds (KUBESONAR_DRAIN_SECONDS, 80%), so a retrying call ends inside the invocation."
  type        = number
  default     = 20

  validation {
    condition     = var.store_retry_s > 0
    error_message = "store_retry_s must be more than 0 seconds."
  }
}

variable "function_max_instances" {
  description = "Most instances at once: ticks that overlap (a long drain) run side by side, compare-and-swap keeps them consistent."
  type        = number
  default     = 3
}

variable "schedule" {
  description = "Cloud Scheduler cron of the tick that drains the flows subscription and checks sensor health (every minute at the finest)."
  type        = string
  default     = "* * * * *"
}

variable "pull_max_messages" {
  description = "Most messages one tick pulls; it scores and acknowledges them in rounds of at most 64 MiB."
  type        = number
  default     = 10000
}

variable "max_delivery_attempts" {
  description = "Deliveries of a flows message before the dead-letter topic takes it (5 to 100)."
  type        = number
  default     = 5
}

variable "learning_period_seconds" {
  description = "Novelty detectors learn this long before they judge."
  type        = number
  default     = 86400
}

variable "sensor_silent_after_seconds" {
  description = "A sensor unheard this long is reported silent; above the schedule's period plus a window."
  type        = number
  default     = 180
}

variable "internal_networks" {
  description = "CIDRs inside the cluster or VPC; beaconing, exfiltration and unusual_destination judge traffic leaving them."
  type        = list(string)
  default     = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"]
}

variable "cluster_jwks" {
  description = "The cluster's token signing keys (`kubectl get --raw /openid/v1/jwks`) for an issuer Google cannot reach; null, the default, fetches them from the issuer. Given here, they must be renewed when the cluster rotates its signing key."
  type        = string
  default     = null
}

variable "sensor_namespace" {
  description = "Namespace of the sensor's Kubernetes service account."
  type        = string
  default     = "kubesonar"
}

variable "sensor_service_account" {
  description = "Name of the sensor's Kubernetes service account: the only one whose tokens the workload identity pool accepts."
  type        = string
  default     = "kubesonar-sensor"
}

variable "cluster_issuer" {
  description = "The service-account token issuer of the cluster the sensors run in (`kubectl get --raw /.well-known/openid-configuration`, field issuer); on GKE https://container.googleapis.com/v1/projects/PROJECT/locations/LOCATION/clusters/CLUSTER. Google fetches its keys from there, so it must be reachable from the internet: GKE's, EKS's and AKS's (OIDC issuer enabled) are."
  type        = string

  validation {
    condition     = startswith(var.cluster_issuer, "https://")
    error_message = "cluster_issuer is an https:// URL (the issuer field of the cluster's /.well-known/openid-configuration)."
  }
}

variable "alert_retention_days" {
  description = "Days alerts are kept in the alerts bucket."
  type        = number
  default     = 365
}

variable "noncurrent_version_days" {
  description = "Days an overwritten object version is kept (state documents are rewritten every tick)."
  type        = number
  default     = 7
}

variable "monitoring_emails" {
  description = "Email addresses Cloud Monitoring notifies about dead letters and function errors."
  type        = list(string)
  default     = []
}

variable "labels" {
  description = "Labels set on every resource that takes them."
  type        = map(string)
  default     = {}
}
