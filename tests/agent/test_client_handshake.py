"""The client's handshake when the agent refuses before the hello is written (a wrong
token): the write may race the refusal and report INTERNAL; the call's own status is the
answer (seen in CI: "the agent refused the session: INTERNAL: Internal error from Core")."""

from __future__ import annotations

import grpc
import pytest

from mirrord.client.agent_client import (
    CORE_RACE,
    CORE_RACE_RETRIES,
    AgentClient,
    _lost_race,
    _map_handshake_error,
    _Refused,
)
from mirrord.client.errors import AgentAuthFailed
from mirrord.v1 import agent_pb2


class RefusedCall:
    async def write(self, _msg: object) -> None:
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), grpc.aio.Metadata(),
            details="Internal error from Core",
        )  # fmt: skip

    async def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAUTHENTICATED

    async def details(self) -> str:
        return "bad token"


async def test_a_refusal_racing_the_hello_is_reported_as_the_refusal() -> None:
    with pytest.raises(_Refused) as refused:
        await AgentClient._handshake(RefusedCall(), agent_pb2.ClientMessage())  # type: ignore[arg-type]
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    error = _map_handshake_error(refused.value.code, refused.value.details)
    assert isinstance(error, AgentAuthFailed)


def test_grpcs_own_internal_error_is_asked_again_a_few_times() -> None:
    """A wrong token's refusal can reach us as grpc's INTERNAL (our write lost the race):
    asked again, the agent's UNAUTHENTICATED comes; a real INTERNAL is not retried."""
    internal = grpc.StatusCode.INTERNAL
    assert _lost_race(internal, CORE_RACE, 0)
    assert not _lost_race(internal, CORE_RACE, CORE_RACE_RETRIES)  # bounded
    assert not _lost_race(internal, "agent bug: KeyError", 0)
    assert not _lost_race(grpc.StatusCode.UNAUTHENTICATED, CORE_RACE, 0)
