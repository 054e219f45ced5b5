data "google_project" "this" {
  project_id = var.project_id
}

data "google_storage_project_service_account" "this" {
  project = var.project_id
}

locals {
  pubsub_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  gcs_agent    = "serviceAccount:${data.google_storage_project_service_account.this.email_address}"
  # Secret Manager's service agent encrypts the keyring with the module's key
  secrets_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-secretmanager.iam.gserviceaccount.com"
  # the `sub` of the sensor's Kubernetes service-account tokens, and the IAM principal the pool maps it to
  sensor_subject   = "system:serviceaccount:${var.sensor_namespace}:${var.sensor_service_account}"
  sensor_principal = "principal://iam.googleapis.com/${google_iam_workload_identity_pool.sensors.name}/subject/${local.sensor_subject}"
  # flows: sensors publish; ticks: Cloud Scheduler's message that runs the function; alerts: subscribers read;
  # dead-letter: flows messages that failed max_delivery_attempts times
  topics  = toset(["flows", "ticks", "alerts", "dead-letter"])
  buckets = toset(["state", "alerts", "source"])
}

################################################################################
# Encryption: one customer-managed key (90-day rotation) for the topics and buckets
################################################################################

resource "google_kms_key_ring" "this" {
  project  = var.project_id
  name     = var.name
  location = var.region
}

resource "google_kms_crypto_key" "this" {
  name            = var.name
  key_ring        = google_kms_key_ring.this.id
  rotation_period = "7776000s" # 90 days
  purpose         = "ENCRYPT_DECRYPT"
  labels          = var.labels

  lifecycle {
    prevent_destroy = true
  }
}

resource "google_kms_crypto_key_iam_member" "agents" {
  for_each      = toset([local.pubsub_agent, local.gcs_agent, local.secrets_agent])
  crypto_key_id = google_kms_crypto_key.this.id
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = each.value
}

################################################################################
# Pub/Sub: topics, the flows subscription the function pulls, dead letters
################################################################################

resource "google_pubsub_topic" "this" {
  for_each                   = local.topics
  project                    = var.project_id
  name                       = "${var.name}-${each.key}"
  kms_key_name               = google_kms_crypto_key.this.id
  message_retention_duration = "86400s"
  labels                     = var.labels
  depends_on                 = [google_kms_crypto_key_iam_member.agents]
}

# Pulled in bulk by each tick (functions/gcp/drain.py), not pushed: a push delivers one message per request
# and cannot share state reads across messages (docs/gcp.md, cost).
resource "google_pubsub_subscription" "flows" {
  project                    = var.project_id
  name                       = "${var.name}-flows-drain"
  topic                      = google_pubsub_topic.this["flows"].id
  ack_deadline_seconds       = 600 # longer than a tick's drain and scoring (function_timeout_seconds)
  message_retention_duration = "86400s"
  labels                     = var.labels

  expiration_policy {
    ttl = "" # never expires, even when no tick pulled for 31 days
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.this["dead-letter"].id
    max_delivery_attempts = var.max_delivery_attempts
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }
}

resource "google_pubsub_subscription" "dead_letter" {
  project                    = var.project_id
  name                       = "${var.name}-dead-letter-hold"
  topic                      = google_pubsub_topic.this["dead-letter"].id
  message_retention_duration = "604800s"
  labels                     = var.labels

  expiration_policy {
    ttl = ""
  }
}

# Pub/Sub's service agent moves failed messages: it publishes to the dead-letter topic and acks them on the
# subscription they left.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  project = var.project_id
  topic   = google_pubsub_topic.this["dead-letter"].name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  project      = var.project_id
  subscription = google_pubsub_subscription.flows.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}

################################################################################
# Buckets: state (baselines, health, deadletter/), alerts, the function's source
################################################################################

resource "google_storage_bucket" "this" {
  #checkov:skip=CKV_GCP_62:Access is recorded by Cloud Audit Logs; usage-log buckets are a legacy feature Google advises against
  for_each                    = local.buckets
  project                     = var.project_id
  name                        = "${var.name}-${each.key}-${var.project_id}"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false
  labels                      = var.labels

  versioning {
    enabled = true
  }

  encryption {
    default_kms_key_name = google_kms_crypto_key.this.id
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_version_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  dynamic "lifecycle_rule" {
    for_each = each.key == "alerts" ? [var.alert_retention_days] : each.key == "state" ? [30] : []
    content {
      condition {
        age            = lifecycle_rule.value
        matches_prefix = each.key == "alerts" ? ["alerts/"] : ["deadletter/"]
        with_state     = "LIVE"
      }
      action {
        type = "Delete"
      }
    }
  }

  depends_on = [google_kms_crypto_key_iam_member.agents]
}

resource "google_storage_bucket_object" "source" {
  name   = "kubesonar-gcp-${filemd5(var.source_archive_path)}.zip"
  bucket = google_storage_bucket.this["source"].name
  source = var.source_archive_path
}

################################################################################
# The function and its identity: exactly the calls its code makes, on named resources
################################################################################

resource "google_service_account" "function" {
  project      = var.project_id
  account_id   = "${var.name}-scoring"
  display_name = "KubeSonar scoring function"
}

resource "google_pubsub_subscription_iam_member" "function_pulls_flows" {
  project      = var.project_id
  subscription = google_pubsub_subscription.flows.name
  role         = "roles/pubsub.subscriber" # pull, acknowledge, modifyAckDeadline
  member       = google_service_account.function.member
}

resource "google_pubsub_topic_iam_member" "function_publishes_alerts" {
  project = var.project_id
  topic   = google_pubsub_topic.this["alerts"].name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.function.member
}

# Objects are read, created, replaced (a replace needs delete in GCS) and listed.
resource "google_storage_bucket_iam_member" "function_objects" {
  for_each = toset(["state", "alerts"])
  bucket   = google_storage_bucket.this[each.key].name
  role     = "roles/storage.objectUser"
  member   = google_service_account.function.member
}

# The Eventarc trigger delivers ticks to the function as the function's own identity.
resource "google_cloud_run_service_iam_member" "trigger_invokes" {
  project  = var.project_id
  location = var.region
  service  = google_cloudfunctions2_function.scoring.service_config[0].service
  role     = "roles/run.invoker"
  member   = google_service_account.function.member
}

################################################################################
# Keyring: the cluster keys batches are signed with (docs/hardening.md). The module makes the secret,
# encrypted with the module's key; the operator adds its version (README), so no key is in the Terraform
# state. The function reads it as a file of a secret volume: each read fetches the latest version, so a
# key added for a rotation reaches warm instances too (shared/keyring_source.py), not only new ones.
################################################################################

resource "google_secret_manager_secret" "keyring" {
  project   = var.project_id
  secret_id = "${var.name}-keyring"
  labels    = var.labels

  replication {
    user_managed {
      replicas {
        location = var.region
        customer_managed_encryption {
          kms_key_name = google_kms_crypto_key.this.id
        }
      }
    }
  }
  depends_on = [google_kms_crypto_key_iam_member.agents]
}

resource "google_secret_manager_secret_iam_member" "function_reads_keyring" {
  project   = var.project_id
  secret_id = google_secret_manager_secret.keyring.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.function.member
}

# Cloud Build builds the function as an account of its own. The default one is, in projects made since
# July 2024, the Compute Engine default account, which an organisation that disables default grants
# leaves with no role: the build could not read the source and terraform apply failed. These three
# roles are the ones Google's "build service account" page names (source, build logs, the image).
resource "google_service_account" "build" {
  project      = var.project_id
  account_id   = "${var.name}-build"
  display_name = "KubeSonar function build (Cloud Build)"
}

resource "google_storage_bucket_iam_member" "build_reads_source" {
  bucket = google_storage_bucket.this["source"].name
  role   = "roles/storage.objectViewer"
  member = google_service_account.build.member
}

resource "google_project_iam_member" "build" {
  for_each = toset(["roles/logging.logWriter", "roles/artifactregistry.writer"])
  project  = var.project_id
  role     = each.value
  member   = google_service_account.build.member
}

resource "google_cloudfunctions2_function" "scoring" {
  project  = var.project_id
  name     = "${var.name}-scoring"
  location = var.region
  labels   = var.labels

  build_config {
    runtime         = "python312"
    entry_point     = "on_tick"
    service_account = google_service_account.build.id
    source {
      storage_source {
        bucket = google_storage_bucket.this["source"].name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    available_memory                 = var.function_memory
    timeout_seconds                  = var.function_timeout_seconds
    max_instance_count               = var.function_max_instances
    max_instance_request_concurrency = 1
    ingress_settings                 = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.function.email
    environment_variables = {
      KUBESONAR_STATE_BUCKET          = google_storage_bucket.this["state"].name
      KUBESONAR_ALERTS_BUCKET         = google_storage_bucket.this["alerts"].name
      KUBESONAR_ALERTS_TOPIC          = google_pubsub_topic.this["alerts"].id
      KUBESONAR_FLOWS_SUBSCRIPTION    = google_pubsub_subscription.flows.id
      KUBESONAR_PULL_MAX_MESSAGES     = tostring(var.pull_max_messages)
      KUBESONAR_DRAIN_SECONDS         = tostring(floor(var.function_timeout_seconds * 0.8))
      KUBESONAR_LEARNING_PERIOD_S     = tostring(var.learning_period_seconds)
      KUBESONAR_SENSOR_SILENT_AFTER_S = tostring(var.sensor_silent_after_seconds)
      KUBESONAR_INTERNAL_NETWORKS     = join(",", var.internal_networks)
      KUBESONAR_STORE_RETRY_S         = tostring(var.store_retry_s)
      KUBESONAR_KEYRING_FILE          = "/etc/kubesonar-keyring/keyring.json"
    }
    secret_volumes {
      mount_path = "/etc/kubesonar-keyring"
      project_id = var.project_id
      secret     = google_secret_manager_secret.keyring.secret_id
      versions {
        version = "latest"
        path    = "keyring.json"
      }
    }
  }
  lifecycle {
    # a precondition, not a variable validation: Terraform before 1.9 lets a validation read its own variable only
    precondition {
      condition     = 2 * var.store_retry_s <= var.function_timeout_seconds - floor(var.function_timeout_seconds * 0.8)
      error_message = "store_retry_s (${var.store_retry_s}) must be at most a tenth of function_timeout_seconds (${var.function_timeout_seconds}): an unreachable bucket fails within about twice it, and a call started as the drain ends (at 80%) must end inside the invocation."
    }
  }
  depends_on = [
    google_secret_manager_secret_iam_member.function_reads_keyring,
    google_storage_bucket_iam_member.build_reads_source,
    google_project_iam_member.build,
  ]

  event_trigger {
    trigger_region        = var.region
    event_type            = "google.cloud.pubsub.topic.v1.messagePublished"
    pubsub_topic          = google_pubsub_topic.this["ticks"].id
    retry_policy          = "RETRY_POLICY_DO_NOT_RETRY" # a failed tick is replaced by the next one
    service_account_email = google_service_account.function.email
  }
}

resource "google_cloud_scheduler_job" "tick" {
  project     = var.project_id
  region      = var.region
  name        = "${var.name}-tick"
  description = "Drain the flows subscription and check sensor health"
  schedule    = var.schedule
  time_zone   = "Etc/UTC"

  pubsub_target {
    topic_name = google_pubsub_topic.this["ticks"].id
    data       = base64encode("tick")
  }
}

################################################################################
# The sensor: Workload Identity Federation with Kubernetes. The sensor runs on the host network, where
# Workload Identity Federation for GKE cannot reach it (its metadata requests get the node's account,
# docs/gcp.md), so it exchanges its projected service-account token at Google's STS itself. The pool
# trusts the cluster's token issuer, only for the sensor's service account, allowed only to publish to flows.
################################################################################

resource "google_iam_workload_identity_pool" "sensors" {
  project                   = var.project_id
  workload_identity_pool_id = "${var.name}-sensors"
  display_name              = "KubeSonar sensors"
  description               = "Kubernetes clusters whose sensors publish flow batches"
}

resource "google_iam_workload_identity_pool_provider" "cluster" {
  project                            = var.project_id
  workload_identity_pool_id          = google_iam_workload_identity_pool.sensors.workload_identity_pool_id
  workload_identity_pool_provider_id = "${var.name}-cluster"
  display_name                       = "KubeSonar cluster"
  description                        = "The cluster's service-account token issuer"
  attribute_mapping = {
    "google.subject" = "assertion.sub"
  }
  # any other service account of the cluster is refused at the token exchange
  attribute_condition = "assertion.sub == \"${local.sensor_subject}\""

  oidc {
    # no allowed_audiences: tokens must then name this provider (https://iam.googleapis.com/<its name>)
    issuer_uri = var.cluster_issuer
    jwks_json  = var.cluster_jwks # null: Google fetches the keys from the issuer
  }
}

resource "google_pubsub_topic_iam_member" "sensor_publishes_flows" {
  project = var.project_id
  topic   = google_pubsub_topic.this["flows"].name
  role    = "roles/pubsub.publisher"
  member  = local.sensor_principal
}

################################################################################
# Monitoring: dead letters present, function errors
################################################################################

resource "google_monitoring_notification_channel" "email" {
  for_each     = toset(var.monitoring_emails)
  project      = var.project_id
  display_name = "KubeSonar ${each.value}"
  type         = "email"
  labels = {
    email_address = each.value
  }
}

resource "google_monitoring_alert_policy" "dead_letters" {
  project               = var.project_id
  display_name          = "${var.name}: flows messages dead-lettered"
  combiner              = "OR"
  notification_channels = [for c in google_monitoring_notification_channel.email : c.id]

  conditions {
    display_name = "messages held on the dead-letter subscription"
    condition_threshold {
      filter          = "resource.type = \"pubsub_subscription\" AND resource.labels.subscription_id = \"${google_pubsub_subscription.dead_letter.name}\" AND metric.type = \"pubsub.googleapis.com/subscription/num_undelivered_messages\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period   = "300s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }
}

resource "google_monitoring_alert_policy" "function_errors" {
  project               = var.project_id
  display_name          = "${var.name}: scoring function errors"
  combiner              = "OR"
  notification_channels = [for c in google_monitoring_notification_channel.email : c.id]

  conditions {
    display_name = "error logs of the scoring function (failed messages, failed ticks)"
    condition_matched_log {
      filter = "resource.type = \"cloud_run_revision\" AND resource.labels.service_name = \"${google_cloudfunctions2_function.scoring.name}\" AND severity >= ERROR"
    }
  }

  alert_strategy {
    notification_rate_limit {
      period = "300s"
    }
  }
}
