"""nodeaudit: host-level audit logging on every AKS worker node, kept there by a Kubernetes operator."""

__version__ = "0.1.0"
