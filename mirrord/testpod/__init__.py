"""Local "pods" (Linux namespaces on this machine) for tests, the demo and benchmarks.

See docs/testpods.md. Needs root.
"""

from ._state import sweep_stale
from .pod import (
    DEFAULT_PORT,
    Network,
    Pod,
    TestPodError,
    create_pod,
    effective_capabilities,
    http_server_argv,
)

__all__ = [
    "DEFAULT_PORT",
    "Network",
    "Pod",
    "TestPodError",
    "create_pod",
    "effective_capabilities",
    "http_server_argv",
    "sweep_stale",
]
