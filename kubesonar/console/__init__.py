"""The web console (``kubesonar console``) and the views it shares with ``kubesonar report``."""
