"""The embedded default runtime: a local directory as bucket and queue, so the pipeline runs on one machine."""
