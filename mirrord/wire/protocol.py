"""What the agent and the client must agree on beyond the messages: the protocol version
and the gRPC metadata of every call (one place, so they agree).

The agent refuses a client whose major version differs; minor versions only add things.
"""

from typing import Final

PROTOCOL_MAJOR: Final = 1
PROTOCOL_MINOR: Final = 6  # 1.2: OpenRequest.resolve/base; 1.3: IncomingProbe;
# 1.4: OpenRequest.prefetch, OpenChunk.below; 1.5: IncomingSubscribed.mesh;
# 1.6: IncomingDirect.handoff


def version_string(major: int, minor: int) -> str:
    return f"{major}.{minor}"


OURS: Final = version_string(PROTOCOL_MAJOR, PROTOCOL_MINOR)


# Every call carries the agent's token, and every call of a session names it.
AUTH_HEADER: Final = "authorization"
SESSION_HEADER: Final = "mirrord-session"


def bearer(token: str) -> str:
    return f"Bearer {token}"
