"""nodeaudit: host-level audit logging on every AKS worker node, kept there by a Kubernetes operator."""

# The one place for the version: pyproject.toml, `make image` and the default image tag read it here.
__version__ = "0.1.0"
# The image of the operator and its node Jobs, tagged with this version (NODEAUDIT_IMAGE overrides).
DEFAULT_IMAGE = f"ghcr.io/nodeaudit/nodeaudit:{__version__}"
