"""ipvsproxy: a kube-proxy replacement for IPVS mode."""

__version__ = "0.1.0"
