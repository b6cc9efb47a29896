"""`mirrord port-forward`: the session (local agent, --agent-address, or the cluster's agent,
chosen as `mirrord exec` chooses), then -L and -R until Ctrl-C, SIGTERM or the agent's loss.

Cleanup runs on every path, newest first: -L listeners and relays, -R subscriptions (the
agent removes their rules), the agent session (Bye), then the port-forward to the cluster's
agent or the local agent process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from typing import Any

from mirrord.client import AgentClient, start_local_agent
from mirrord.client.endpoint import AgentEndpoint, refuses_kube_target
from mirrord.client.errors import AgentError
from mirrord.config import ConfigError, MirrordConfig
from mirrord.features.incoming.delivery import IncomingSettings
from mirrord.kube import KubeError, uses_cluster
from mirrord.portforward.forward import bind_listeners, serve_forwards
from mirrord.portforward.reverse import ReverseForwarder, reverse_settings
from mirrord.portforward.specs import ForwardSpec, PortForwardError, ReverseSpec
from mirrord.say import say as _say
from mirrord.target import Target, TargetError, parse_target

# Exit status after Ctrl-C before the forwards were up (128 + SIGINT, as a shell reports).
INTERRUPTED_EXIT = 130


def _origin(target: Target, in_cluster: bool, agent: AgentEndpoint | None) -> str:
    """Where -L connections are made from, honestly."""
    if target.is_kube:
        return f"the target's network ({target})"
    if target.pid is not None:
        return f"the target's network (pid {target.pid})"
    if in_cluster:
        return "the mirrord agent's pod in the cluster (targetless)"
    if agent is not None:
        return f"the network of the agent at {agent.address} (targetless)"
    return "this machine (targetless: a local agent without a target)"


def _reverse_line(spec: ReverseSpec, target: Target, settings: IncomingSettings) -> str:
    who = f"pid {target.pid}" if target.pid is not None else str(target)
    verb = "stealing" if settings.mode == "steal" else "mirroring"
    if settings.mode == "mirror":
        how = "copies; the target still answers"
    elif settings.http_filter is not None and (
        not settings.http_filter.ports or spec.remote_port in settings.http_filter.ports
    ):
        how = "requests matching the HTTP filter; the others stay with the target"
    else:
        how = "this machine answers"
    return (
        f"{verb} port {spec.remote_port} of the target ({who}) -> 127.0.0.1:{spec.local_port} "
        f"({how})"
    )


def check_session(
    target: Target, reverses: Sequence[ReverseSpec], agent: AgentEndpoint | None
) -> None:
    """Combinations that cannot work, as usage errors (exit code 2)."""
    if agent is not None and target.is_kube:
        raise PortForwardError(refuses_kube_target(str(target)), 2)
    if reverses and target.pid is None and not target.is_kube:
        raise PortForwardError(
            "-R needs a target whose incoming traffic can be taken (pid/N or a Kubernetes "
            "target, -t); a targetless session has none",
            2,
        )


async def run_port_forward(
    forwards: Sequence[ForwardSpec],
    reverses: Sequence[ReverseSpec],
    config: MirrordConfig,
    environ: Mapping[str, str],
    *,
    agent: AgentEndpoint | None = None,
) -> int:
    """The command's body; its exit status. PortForwardError for a failure to tell."""
    try:
        target = parse_target(config.target.path_string)
    except TargetError as exc:
        raise PortForwardError(str(exc), 2) from None
    check_session(target, reverses, agent)
    in_cluster = agent is None and uses_cluster(config, target, environ)
    if agent is None and not in_cluster and os.geteuid() != 0:
        raise PortForwardError(
            "a local agent enters the target's namespaces, which needs root: run mirrord as "
            "root, or point it at a running agent with --agent-address HOST:PORT (token in "
            "MIRRORD_AGENT_TOKEN)"
        )
    settings = IncomingSettings()
    if reverses:
        try:
            settings, note = reverse_settings(config)
        except ConfigError as exc:
            raise PortForwardError(str(exc), 2) from None
        if note is not None:
            _say(f"warning: {note}")
    listeners = bind_listeners(forwards)

    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    state = {"interrupted": False, "serving": False, "cleaning": False}

    def on_signal() -> None:
        if state["interrupted"] or state["cleaning"]:
            return  # cleanup is under way: let it finish
        state["interrupted"] = True
        main.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    stack = contextlib.AsyncExitStack()
    tasks: list[asyncio.Future[Any]] = []
    try:
        try:
            client = await _open_session(stack, config, target, environ, in_cluster, agent)
            reverse = ReverseForwarder(client, settings)
            stack.push_async_callback(reverse.close)
            await reverse.subscribe(reverses)
        except (AgentError, KubeError) as exc:
            raise PortForwardError(str(exc)) from None
        origin = _origin(target, in_cluster, agent)
        for spec in forwards:
            _say(
                f"forwarding 127.0.0.1:{spec.local_port} -> {spec.host}:{spec.remote_port} "
                f"from {origin}"
            )
        for rspec in reverses:
            _say(_reverse_line(rspec, target, settings))
        state["serving"] = True
        if forwards:
            tasks.append(asyncio.ensure_future(serve_forwards(client, forwards, listeners)))
            listeners = []  # serve_forwards closes them
        if reverses:
            tasks.append(asyncio.ensure_future(reverse.serve()))
        lost = asyncio.ensure_future(asyncio.shield(client.lost))
        tasks.append(lost)
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        _say(_ended(done, lost))
        return 1
    except asyncio.CancelledError:
        if not state["interrupted"]:
            raise
        main.uncancel()
        if state["serving"]:
            return 0
        _say("interrupted")
        return INTERRUPTED_EXIT
    finally:
        state["cleaning"] = True
        try:
            for lst in listeners:
                lst.close()
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=5.0)
            await stack.aclose()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


def _ended(done: set[asyncio.Future[Any]], lost: asyncio.Future[Any]) -> str:
    """Why serving stopped by itself (not Ctrl-C), for the user."""
    if lost in done:
        return f"lost the agent: {lost.result()}"
    task = next(iter(done))
    exc = task.exception()
    if exc is not None:
        return f"port-forward failed: {exc!r}"
    return str(task.result())


async def _open_session(
    stack: contextlib.AsyncExitStack,
    config: MirrordConfig,
    target: Target,
    environ: Mapping[str, str],
    in_cluster: bool,
    agent: AgentEndpoint | None,
) -> AgentClient:
    """A connected AgentClient; its cleanups are on `stack`."""
    if in_cluster:
        from mirrord.kube.session import kube_agent_session

        return await stack.enter_async_context(kube_agent_session(config, target, environ))
    startup = float(config.agent.startup_timeout_s)
    if agent is None:
        local = await start_local_agent(
            ping_timeout=float(config.agent.communication_timeout_s), startup_timeout=startup
        )
        stack.push_async_callback(local.stop)
        agent = AgentEndpoint(local.address, local.token)
    client = await AgentClient.connect(agent.address, agent.token, target.pid, timeout=startup)
    stack.push_async_callback(client.close)
    return client
