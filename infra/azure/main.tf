data "azurerm_client_config" "current" {}

resource "random_string" "suffix" {
  length  = 6
  special = false
  upper   = false
}

locals {
  compact  = replace(var.name, "-", "")
  suffix   = random_string.suffix.result
  function = "${var.name}-scoring-${local.suffix}"
  # The function app's containers; the host's own files live in a second account (least privilege: the
  # host needs Blob Data Owner on its account, the code only Blob Data Contributor on these three).
  containers = ["state", "alerts", "deadletter"]
  # What the function's code calls (functions/azure/runtime.py reads these app settings)
  app_settings = {
    KUBESONAR_STORAGE_ACCOUNT_URL   = azurerm_storage_account.data.primary_blob_endpoint
    KUBESONAR_STATE_CONTAINER       = azurerm_storage_container.data["state"].name
    KUBESONAR_ALERTS_CONTAINER      = azurerm_storage_container.data["alerts"].name
    KUBESONAR_DEADLETTER_CONTAINER  = azurerm_storage_container.data["deadletter"].name
    KUBESONAR_ALERTS_TOPIC_ENDPOINT = azurerm_eventgrid_topic.alerts.endpoint
    KUBESONAR_LEARNING_PERIOD_S     = tostring(var.learning_period_seconds)
    KUBESONAR_SENSOR_SILENT_AFTER_S = tostring(var.sensor_silent_after_seconds)
    KUBESONAR_INTERNAL_NETWORKS     = join(",", var.internal_networks)
    KUBESONAR_STORE_RETRY_S         = tostring(var.store_retry_s)
    # The keyring batches are verified with: the function reads the secret with the app's identity at start and
    # again when a batch names a key id it lacks (a Key Vault reference is fetched again only within 24 hours)
    KUBESONAR_KEYRING_VAULT_URL = azurerm_key_vault.this.vault_uri
    KUBESONAR_KEYRING_SECRET    = "keyring"
    # The host's storage through the app's identity, no connection string
    AzureWebJobsStorage__accountName = azurerm_storage_account.host.name
    # Application Insights takes telemetry only with an Entra token (local auth is off)
    APPLICATIONINSIGHTS_AUTHENTICATION_STRING = "Authorization=AAD"
  }
}

################################################################################
# Platform: resource group, Log Analytics, Application Insights
################################################################################

resource "azurerm_resource_group" "this" {
  name     = "${var.name}-rg"
  location = var.location
  tags     = var.tags
}

resource "azurerm_log_analytics_workspace" "this" {
  name                = "${var.name}-logs-${local.suffix}"
  location            = azurerm_resource_group.this.location
  resource_group_name = azurerm_resource_group.this.name
  sku                 = "PerGB2018"
  retention_in_days   = var.log_retention_days
  tags                = var.tags
}

resource "azurerm_application_insights" "this" {
  name                          = "${var.name}-insights-${local.suffix}"
  location                      = azurerm_resource_group.this.location
  resource_group_name           = azurerm_resource_group.this.name
  workspace_id                  = azurerm_log_analytics_workspace.this.id
  application_type              = "other"
  local_authentication_disabled = true
  tags                          = var.tags
}

################################################################################
# Storage: the data account (baselines, alerts, dead letters) and the host account (the app's package
# and the Functions host's leases). Shared keys off: every client uses Entra ID.
################################################################################

resource "azurerm_storage_account" "data" {
  #checkov:skip=CKV_AZURE_206:Zone-redundant (ZRS) by default; geo-replication is var.storage_replication_type, as baselines rebuild from new traffic
  #checkov:skip=CKV2_AZURE_1:Microsoft-managed keys with infrastructure encryption; a customer key is the user's choice (Key Vault and its access policy)
  #checkov:skip=CKV2_AZURE_33:The Flex Consumption app reaches it over Microsoft's backbone with Entra ID; private endpoints need a VNet this module does not own
  #checkov:skip=CKV_AZURE_59:Event Grid dead-lettering and the function need the public endpoint without a VNet; shared keys are off, every request is an Entra identity's
  #checkov:skip=CKV_AZURE_33:No queues in this account (Queue service logging checks a service not used)
  #checkov:skip=CKV2_AZURE_41:Shared keys are disabled, so no SAS can be signed with them
  #checkov:skip=CKV2_AZURE_21:Blob read logs would cost more than the baselines; Azure Monitor metrics and the versioning history cover audit
  name                              = substr("${local.compact}data${local.suffix}", 0, 24)
  resource_group_name               = azurerm_resource_group.this.name
  location                          = azurerm_resource_group.this.location
  account_tier                      = "Standard"
  account_replication_type          = var.storage_replication_type
  account_kind                      = "StorageV2"
  min_tls_version                   = "TLS1_2"
  https_traffic_only_enabled        = true
  allow_nested_items_to_be_public   = false
  shared_access_key_enabled         = false
  default_to_oauth_authentication   = true
  local_user_enabled                = false
  infrastructure_encryption_enabled = true
  sftp_enabled                      = false
  tags                              = var.tags

  blob_properties {
    versioning_enabled  = true
    change_feed_enabled = false
    delete_retention_policy {
      days = var.soft_delete_retention_days
    }
    container_delete_retention_policy {
      days = var.soft_delete_retention_days
    }
  }

  sas_policy {
    expiration_period = "0.01:00:00"
  }
}

resource "azurerm_storage_container" "data" {
  #checkov:skip=CKV2_AZURE_21:Blob read logs would cost more than the baselines; versioning keeps the history
  for_each              = toset(local.containers)
  name                  = each.key
  storage_account_id    = azurerm_storage_account.data.id
  container_access_type = "private"
}

resource "azurerm_storage_management_policy" "data" {
  storage_account_id = azurerm_storage_account.data.id

  rule {
    name    = "old-versions"
    enabled = true
    filters {
      blob_types = ["blockBlob"]
    }
    actions {
      version {
        delete_after_days_since_creation = 30
      }
    }
  }

  rule {
    name    = "dead-letters"
    enabled = true
    filters {
      blob_types   = ["blockBlob"]
      prefix_match = ["deadletter/"]
    }
    actions {
      base_blob {
        delete_after_days_since_modification_greater_than = 30
      }
    }
  }
}

resource "azurerm_storage_account" "host" {
  #checkov:skip=CKV_AZURE_206:Zone-redundant (ZRS) by default; geo-replication is var.storage_replication_type, as baselines rebuild from new traffic
  #checkov:skip=CKV2_AZURE_1:Microsoft-managed keys with infrastructure encryption; it holds only the app's package and host leases
  #checkov:skip=CKV2_AZURE_33:The Functions host reaches it over Microsoft's backbone with Entra ID; private endpoints need a VNet this module does not own
  #checkov:skip=CKV_AZURE_59:The Flex Consumption host needs the endpoint without a VNet; shared keys are off, every request is an Entra identity's
  #checkov:skip=CKV_AZURE_33:No queues used (the triggers are Event Grid and timer)
  #checkov:skip=CKV2_AZURE_41:Shared keys are disabled, so no SAS can be signed with them
  #checkov:skip=CKV2_AZURE_21:Host leases and the package need no read log
  #checkov:skip=CKV2_AZURE_40:Shared keys are disabled (shared_access_key_enabled = false); checkov misreads the companion flag
  name                              = substr("${local.compact}host${local.suffix}", 0, 24)
  resource_group_name               = azurerm_resource_group.this.name
  location                          = azurerm_resource_group.this.location
  account_tier                      = "Standard"
  account_replication_type          = var.storage_replication_type
  account_kind                      = "StorageV2"
  min_tls_version                   = "TLS1_2"
  https_traffic_only_enabled        = true
  allow_nested_items_to_be_public   = false
  shared_access_key_enabled         = false
  default_to_oauth_authentication   = true
  local_user_enabled                = false
  infrastructure_encryption_enabled = true
  sftp_enabled                      = false
  tags                              = var.tags

  blob_properties {
    versioning_enabled = true
    delete_retention_policy {
      days = var.soft_delete_retention_days
    }
    container_delete_retention_policy {
      days = var.soft_delete_retention_days
    }
  }

  sas_policy {
    expiration_period = "0.01:00:00"
  }
}

resource "azurerm_storage_container" "package" {
  #checkov:skip=CKV2_AZURE_21:The app's package needs no read log
  name                  = "app-package"
  storage_account_id    = azurerm_storage_account.host.id
  container_access_type = "private"
}

################################################################################
# Event Grid: the flows topic (sensors publish), the alerts topic (the function publishes); Entra ID
# only, no keys
################################################################################

resource "azurerm_eventgrid_topic" "flows" {
  #checkov:skip=CKV_AZURE_193:Sensors on AKS nodes publish over the internet with Entra tokens; a private endpoint needs a VNet this module does not own
  name                          = "${var.name}-flows-${local.suffix}"
  location                      = azurerm_resource_group.this.location
  resource_group_name           = azurerm_resource_group.this.name
  input_schema                  = "EventGridSchema"
  local_auth_enabled            = false
  public_network_access_enabled = true
  tags                          = var.tags

  identity {
    type = "SystemAssigned"
  }
}

resource "azurerm_eventgrid_topic" "alerts" {
  #checkov:skip=CKV_AZURE_193:Subscribers (webhooks, Logic Apps) and the function reach it without a VNet; publishing needs an Entra token
  name                          = "${var.name}-alerts-${local.suffix}"
  location                      = azurerm_resource_group.this.location
  resource_group_name           = azurerm_resource_group.this.name
  input_schema                  = "EventGridSchema"
  local_auth_enabled            = false
  public_network_access_enabled = true
  tags                          = var.tags

  identity {
    type = "SystemAssigned"
  }
}

resource "azurerm_eventgrid_event_subscription" "flows" {
  count                 = var.function_deployed ? 1 : 0
  name                  = "${var.name}-scoring"
  scope                 = azurerm_eventgrid_topic.flows.id
  event_delivery_schema = "EventGridSchema"
  included_event_types  = ["KubeSonar.FlowBatch"]

  azure_function_endpoint {
    # the Python trigger takes one event per invocation (docs/azure.md), so batches would be split anyway
    function_id                       = "${azurerm_function_app_flex_consumption.this.id}/functions/score_batch"
    max_events_per_batch              = 1
    preferred_batch_size_in_kilobytes = 1024
  }

  retry_policy {
    max_delivery_attempts = var.max_delivery_attempts
    event_time_to_live    = var.event_time_to_live_minutes
  }

  storage_blob_dead_letter_destination {
    storage_account_id          = azurerm_storage_account.data.id
    storage_blob_container_name = azurerm_storage_container.data["deadletter"].name
  }

  dead_letter_identity {
    type = "SystemAssigned"
  }

  depends_on = [azurerm_role_assignment.flows_topic_dead_letter]
}

################################################################################
# The function app: Linux, Flex Consumption, Python 3.12, system-assigned identity
################################################################################

resource "azurerm_service_plan" "this" {
  #checkov:skip=CKV_AZURE_225:Flex Consumption (FC1) plans have no zone-redundancy setting on the plan; instances are platform-managed
  #checkov:skip=CKV_AZURE_212:Flex Consumption scales from zero per event; always-ready instances would be billed around the clock
  name                = "${var.name}-plan-${local.suffix}"
  resource_group_name = azurerm_resource_group.this.name
  location            = azurerm_resource_group.this.location
  os_type             = "Linux"
  sku_name            = "FC1"
  tags                = var.tags
}

resource "azurerm_function_app_flex_consumption" "this" {
  name                = local.function
  resource_group_name = azurerm_resource_group.this.name
  location            = azurerm_resource_group.this.location
  service_plan_id     = azurerm_service_plan.this.id

  storage_container_type      = "blobContainer"
  storage_container_endpoint  = "${azurerm_storage_account.host.primary_blob_endpoint}${azurerm_storage_container.package.name}"
  storage_authentication_type = "SystemAssignedIdentity"
  runtime_name                = "python"
  runtime_version             = "3.12"
  maximum_instance_count      = var.maximum_instance_count
  instance_memory_in_mb       = var.instance_memory_in_mb

  # no https_only: the provider refuses it on this resource (terraform-provider-azurerm issue 29000);
  # Event Grid delivers to the function over HTTPS with the function's system key
  public_network_access_enabled                  = true
  webdeploy_publish_basic_authentication_enabled = false
  client_certificate_enabled                     = false
  app_settings                                   = local.app_settings
  tags                                           = var.tags

  identity {
    type = "SystemAssigned"
  }

  site_config {
    application_insights_connection_string = azurerm_application_insights.this.connection_string
    minimum_tls_version                    = "1.2"
    http2_enabled                          = true
  }
}

################################################################################
# Keyring: the cluster keys batches are signed with (docs/hardening.md), in a vault of its own. The
# operator writes the secret "keyring" (README), so no key is in the Terraform state.
################################################################################

resource "azurerm_key_vault" "this" {
  #checkov:skip=CKV_AZURE_109:The Flex Consumption app reads the keyring without a VNet; every request is an Entra identity's, authorised by RBAC
  #checkov:skip=CKV_AZURE_189:As above: a private endpoint needs a VNet this module does not own
  #checkov:skip=CKV2_AZURE_32:A private endpoint to the vault needs a VNet this module does not own (as CKV_AZURE_189)
  name                       = substr("${local.compact}kv${local.suffix}", 0, 24)
  resource_group_name        = azurerm_resource_group.this.name
  location                   = azurerm_resource_group.this.location
  tenant_id                  = data.azurerm_client_config.current.tenant_id
  sku_name                   = "standard"
  enable_rbac_authorization  = true
  purge_protection_enabled   = true
  soft_delete_retention_days = 7
  tags                       = var.tags
}

################################################################################
# Role assignments, least privilege (tests/unit/test_azure_terraform.py checks them against the code)
################################################################################

resource "azurerm_role_assignment" "function_containers" {
  for_each             = azurerm_storage_container.data
  scope                = each.value.id
  role_definition_name = "Storage Blob Data Contributor"
  principal_id         = azurerm_function_app_flex_consumption.this.identity[0].principal_id
  description          = "KubeSonar function: read and write ${each.key} (baselines, alerts, undecodable events)"
}

resource "azurerm_role_assignment" "function_alerts_topic" {
  scope                = azurerm_eventgrid_topic.alerts.id
  role_definition_name = "EventGrid Data Sender"
  principal_id         = azurerm_function_app_flex_consumption.this.identity[0].principal_id
  description          = "KubeSonar function: publish alerts"
}

resource "azurerm_role_assignment" "function_host_storage" {
  scope                = azurerm_storage_account.host.id
  role_definition_name = "Storage Blob Data Owner"
  principal_id         = azurerm_function_app_flex_consumption.this.identity[0].principal_id
  description          = "Functions host: its package and the timer's blob leases (AzureWebJobsStorage through identity needs Owner)"
}

resource "azurerm_role_assignment" "function_keyring" {
  scope                = azurerm_key_vault.this.id
  role_definition_name = "Key Vault Secrets User"
  principal_id         = azurerm_function_app_flex_consumption.this.identity[0].principal_id
  description          = "KubeSonar function: read the keyring secret (the vault holds only the keyring)"
}

resource "azurerm_role_assignment" "keyring_writers" {
  for_each             = toset(var.keyring_writer_object_ids != null ? var.keyring_writer_object_ids : [data.azurerm_client_config.current.object_id])
  scope                = azurerm_key_vault.this.id
  role_definition_name = "Key Vault Secrets Officer"
  principal_id         = each.value
  description          = "Operator: write the keyring secret (docs/hardening.md); an RBAC vault gives its creator no data access"
}

resource "azurerm_role_assignment" "function_telemetry" {
  scope                = azurerm_application_insights.this.id
  role_definition_name = "Monitoring Metrics Publisher"
  principal_id         = azurerm_function_app_flex_consumption.this.identity[0].principal_id
  description          = "Functions host: telemetry to Application Insights with local auth off"
}

resource "azurerm_role_assignment" "flows_topic_dead_letter" {
  scope                = azurerm_storage_container.data["deadletter"].id
  role_definition_name = "Storage Blob Data Contributor"
  principal_id         = azurerm_eventgrid_topic.flows.identity[0].principal_id
  description          = "Event Grid: dead-letter undeliverable flow batches"
}

# The sensor: a user-assigned identity federated with its Kubernetes service account (AKS workload identity)
resource "azurerm_user_assigned_identity" "sensor" {
  count               = var.aks_oidc_issuer_url == null ? 0 : 1
  name                = "${var.name}-sensor"
  location            = azurerm_resource_group.this.location
  resource_group_name = azurerm_resource_group.this.name
  tags                = var.tags
}

resource "azurerm_federated_identity_credential" "sensor" {
  count               = var.aks_oidc_issuer_url == null ? 0 : 1
  name                = "${var.name}-sensor-aks"
  resource_group_name = azurerm_resource_group.this.name
  parent_id           = azurerm_user_assigned_identity.sensor[0].id
  audience            = ["api://AzureADTokenExchange"]
  issuer              = var.aks_oidc_issuer_url
  subject             = "system:serviceaccount:${var.sensor_namespace}:${var.sensor_service_account}"
}

resource "azurerm_role_assignment" "sensor_flows_topic" {
  count                = var.aks_oidc_issuer_url == null ? 0 : 1
  scope                = azurerm_eventgrid_topic.flows.id
  role_definition_name = "EventGrid Data Sender"
  principal_id         = azurerm_user_assigned_identity.sensor[0].principal_id
  description          = "KubeSonar sensor: publish flow batches, to this topic only"
}

################################################################################
# Alerts: dead-lettered events and function failures
################################################################################

resource "azurerm_monitor_action_group" "this" {
  name                = "${var.name}-ops"
  resource_group_name = azurerm_resource_group.this.name
  short_name          = substr(local.compact, 0, 12)
  tags                = var.tags

  dynamic "email_receiver" {
    for_each = var.alert_email_addresses
    content {
      name                    = "email-${email_receiver.key}"
      email_address           = email_receiver.value
      use_common_alert_schema = true
    }
  }
}

resource "azurerm_monitor_metric_alert" "dead_lettered" {
  name                = "${var.name}-dead-lettered-events"
  resource_group_name = azurerm_resource_group.this.name
  scopes              = [azurerm_eventgrid_topic.flows.id]
  description         = "Flow batches Event Grid gave up delivering (now in the deadletter container)"
  severity            = 2
  frequency           = "PT5M"
  window_size         = "PT15M"
  tags                = var.tags

  criteria {
    metric_namespace = "Microsoft.EventGrid/topics"
    metric_name      = "DeadLetteredCount"
    aggregation      = "Total"
    operator         = "GreaterThan"
    threshold        = 0
  }

  action {
    action_group_id = azurerm_monitor_action_group.this.id
  }
}

resource "azurerm_monitor_metric_alert" "function_failures" {
  name                = "${var.name}-function-failures"
  resource_group_name = azurerm_resource_group.this.name
  scopes              = [azurerm_application_insights.this.id]
  description         = "Function invocations that raised (Event Grid retries them)"
  severity            = 2
  frequency           = "PT5M"
  window_size         = "PT15M"
  tags                = var.tags

  criteria {
    metric_namespace = "microsoft.insights/components"
    metric_name      = "requests/failed"
    aggregation      = "Count"
    operator         = "GreaterThan"
    threshold        = 0
  }

  action {
    action_group_id = azurerm_monitor_action_group.this.id
  }
}
