"""mirrord's own fd limit."""

from __future__ import annotations

import contextlib
import resource


def raise_fd_limit() -> None:
    """Each relayed connection costs an fd here (and the program keeps its own), as does
    each handed-over connection until the program accepts it: lift the soft limit to the
    hard one so a thousand connections do not hit EMFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
