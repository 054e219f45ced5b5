"""KubeSonar core: cloud-agnostic flow schema, batch format, detectors and ports."""
