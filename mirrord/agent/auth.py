"""Bearer-token check on every RPC, as a server interceptor so no method can forget it."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from mirrord.wire.protocol import AUTH_HEADER, bearer

# The stubs make ServerInterceptor generic; the runtime class is not subscriptable.
if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor


class TokenAuthInterceptor(_Interceptor):
    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the agent token must not be empty")
        self._expected = bearer(token).encode()

    def _refusal(self, details: grpc.HandlerCallDetails) -> str | None:
        """None when the call carries the right token, else why not (never echoing tokens)."""
        got: str | bytes | None = None
        for key, value in details.invocation_metadata or ():
            if key == AUTH_HEADER:
                got = value
        if got is None:
            return (
                f"missing '{AUTH_HEADER}: Bearer <token>' metadata; "
                "every call to the mirrord agent must carry its token"
            )
        got_bytes = got.encode() if isinstance(got, str) else got
        # Constant-time, so response timing does not reveal how much of a guess was right.
        if not hmac.compare_digest(got_bytes, self._expected):
            return "the agent refused the token: it does not match the agent's MIRRORD_AGENT_TOKEN"
        return None

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        refusal = self._refusal(handler_call_details)
        if refusal is None:
            return await continuation(handler_call_details)

        async def deny(_request: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, refusal)

        # A plain coroutine works for every RPC shape in grpc.aio; pick the shape that
        # matches the method so the framework handles the request side as usual.
        handler = await continuation(handler_call_details)
        if handler is not None and handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny)
        if handler is not None and handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(deny)
        if handler is not None and handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)
