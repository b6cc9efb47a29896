"""Which loopback this thread reaches: one boot of one kernel, one network namespace.

The agent reports its own in HelloReply.loopback_id; a client with the same one can
connect to the agent's 127.0.0.1/::1 listeners (TcpConnect.direct). Namespace inodes are
only unique within one boot, hence the boot id.
"""

from __future__ import annotations

import os

BOOT_ID = "/proc/sys/kernel/random/boot_id"


def loopback_id() -> str:
    """`BOOT_ID/NETNS_INODE` of the calling thread, or "" when /proc cannot tell (then
    nothing is taken as shared)."""
    try:
        with open(BOOT_ID) as f:
            boot = f.read().strip()
        inode = os.stat("/proc/thread-self/ns/net").st_ino
    except OSError:
        return ""
    return f"{boot}/{inode}" if boot else ""


def shares_loopback(theirs: str) -> bool:
    ours = loopback_id()
    return bool(ours) and ours == theirs
