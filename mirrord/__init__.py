"""mirrord: run a local program in the context of a Kubernetes pod (any binary, via ptrace)."""

__version__ = "0.1.0"
