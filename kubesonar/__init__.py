"""KubeSonar: network threat detection for Kubernetes."""

__version__ = "0.1.0"
