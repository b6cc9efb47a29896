"""What a failed remote file call tells the user: the agent's status in one line (not
the gRPC error's multi-line repr), once per distinct failure (#12)."""

from __future__ import annotations

import errno
import logging

import grpc
import pytest

from mirrord.features.files import handlers
from mirrord.features.files.remote import failure_text
from mirrord.supervisor.actions import Fake


def _rpc_error() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details="Socket closed",
        debug_error_string="UNKNOWN:Error received from peer {grpc_status:14}",
    )


def test_a_grpc_failure_reads_as_one_line() -> None:
    assert failure_text(_rpc_error()) == "the agent: UNAVAILABLE: Socket closed"
    assert failure_text(ConnectionError("gone")) == "gone"
    assert failure_text(TimeoutError()) == "TimeoutError"


def test_each_failure_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    handlers._said.clear()
    with caplog.at_level(logging.DEBUG, logger=handlers.__name__):
        for _ in range(50):
            assert handlers._failed(_rpc_error()) == Fake(-errno.EIO)
        assert handlers._failed(0) is None
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "remote file call failed: the agent: UNAVAILABLE: Socket closed"
    ]
    assert "debug_error_string" not in caplog.text and "AioRpcError" not in caplog.text
