"""`python -m mirrord.agent` (also exposed as `mirrord agent`)."""

import argparse
import asyncio
import ctypes
import ctypes.util
import gc
import logging
import os
import secrets
import signal
import sys

from mirrord.agent.server import AgentServer, ListenAddressError

log = logging.getLogger("mirrord.agent")

TOKEN_ENV = "MIRRORD_AGENT_TOKEN"
# Set by start_local_agent, so --parent-death can notice a parent that died before prctl.
PARENT_PID_ENV = "MIRRORD_AGENT_PARENT_PID"
LISTENING_PREFIX = "MIRRORD_AGENT_LISTENING"

PR_SET_PDEATHSIG = 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mirrord agent",
        description=(
            "Serve the mirrord agent protocol. The token comes from the "
            f"{TOKEN_ENV} environment variable (never argv, which ps shows); "
            "without it, a random one is generated and printed to stderr."
        ),
    )
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (default %(default)s)")
    p.add_argument(
        "--allow-non-loopback",
        action="store_true",
        help="allow listening on a non-loopback address (anyone who can reach it may try tokens)",
    )
    p.add_argument("--one-session", action="store_true", help="exit when the first session ends")
    p.add_argument(
        "--ping-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="end a session when the client is silent this long (default %(default)s)",
    )
    p.add_argument(
        "--parent-death",
        action="store_true",
        help="exit (SIGTERM) when the parent process dies",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _die_with_parent() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    # The parent may have died before prctl; then nobody would ever signal us.
    expected = os.environ.get(PARENT_PID_ENV)
    if expected and os.getppid() != int(expected):
        log.error("parent process %s already exited", expected)
        sys.exit(1)


async def _serve(args: argparse.Namespace, token: str) -> int:
    server = AgentServer(
        token,
        listen=args.listen,
        ping_timeout=args.ping_timeout,
        one_session=args.one_session,
        allow_non_loopback=args.allow_non_loopback,
    )
    address = await server.start()
    gc.freeze()  # start-up's objects stay out of full collections (run.py says why)
    loop = asyncio.get_running_loop()

    stopping: set[asyncio.Task[None]] = set()  # keep a reference until the task is done

    def on_signal(sig: signal.Signals) -> None:
        task = loop.create_task(server.stop(f"the agent received {sig.name}"))
        stopping.add(task)
        task.add_done_callback(stopping.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    print(f"{LISTENING_PREFIX} {address}", flush=True)
    await server.wait_stopped()
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    # Started by `mirrord exec`, we inherit its blocked SIGINT/SIGTERM (it collects them
    # with sigtimedwait); the agent must see them.
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if args.parent_death:
        _die_with_parent()
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        token = secrets.token_urlsafe(32)
        print(f"mirrord agent: no {TOKEN_ENV} set; generated token: {token}", file=sys.stderr)
    try:
        return asyncio.run(_serve(args, token))
    except ListenAddressError as e:
        print(f"mirrord agent: {e}", file=sys.stderr)
        return 2
