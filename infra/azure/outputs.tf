output "resource_group_name" {
  description = "The resource group holding everything."
  value       = azurerm_resource_group.this.name
}

output "function_app_name" {
  description = "Deploy the code here: az functionapp deployment source config-zip -n <this> --src build/kubesonar-azure.zip (functions/azure/build.py)."
  value       = azurerm_function_app_flex_consumption.this.name
}

output "queue_url" {
  description = "Give this to the sensors: KUBESONAR_SENSOR_QUEUE in infra/k8s/overlays/azure."
  value       = "eventgrid://${trimsuffix(trimprefix(azurerm_eventgrid_topic.flows.endpoint, "https://"), "/api/events")}"
}

output "alerts_topic_id" {
  description = "Subscribe to alerts here (an event subscription; filter on data.severity)."
  value       = azurerm_eventgrid_topic.alerts.id
}

output "sensor_client_id" {
  description = "The sensor identity's client id: the service account's azure.workload.identity/client-id annotation."
  value       = one(azurerm_user_assigned_identity.sensor[*].client_id)
}

output "data_storage_account" {
  description = "The account with the state, alerts and deadletter containers."
  value       = azurerm_storage_account.data.name
}

output "key_vault_name" {
  description = "Key Vault the function's keyring comes from: write the keyring as its secret \"keyring\" (README, docs/hardening.md)."
  value       = azurerm_key_vault.this.name
}
