"""The self-hosted backend on NATS JetStream: a durable pull consumer, the store on JetStream KV (and the
object store for large documents), alerts published on ``kubesonar.alerts.<severity>.<type>``."""
