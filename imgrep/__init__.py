"""imgrep: a Kubernetes validating admission webhook that checks, and replicates, container images."""

__version__ = "0.1.0"
