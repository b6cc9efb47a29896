"""`mirrord exec`: config → agent → the target's env → the program under the supervisor.

The order of cleanup is the reverse of setup and happens on every path: the program is
stopped (if the agent is lost), the session is closed (the agent undoes what it did for
it), the local agent (if we started one) is stopped, and signals are given back.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shlex
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from mirrord import timing, user_environ
from mirrord.client import AgentClient, start_local_agent
from mirrord.client.endpoint import AgentEndpoint
from mirrord.client.errors import AgentError
from mirrord.client.local_agent import EarlyAgent
from mirrord.config import ConfigError, EnvConfig, MirrordConfig
from mirrord.explain import Explainer
from mirrord.features.build import build_features, close_features
from mirrord.features.env import env_decisions, env_rules, load_env_file, merge_env
from mirrord.kube import KubeError, uses_cluster
from mirrord.say import say as _say
from mirrord.supervisor import (
    ExitStatus,
    Feature,
    SignalForwarder,
    SpawnError,
    SupervisedRun,
    SupervisorOptions,
)
from mirrord.target import Target, TargetError, parse_target

# How long the program gets to exit on SIGTERM once the agent is gone.
LOST_AGENT_GRACE_S = 2.0


class ExecError(Exception):
    """A failure before or around the program; the message is for the user (None: it
    has been told already)."""

    def __init__(self, message: str | None, exit_code: int = 1) -> None:
        super().__init__(message or "")
        self.message = message
        self.exit_code = exit_code


def needs_root_message(argv: Sequence[str]) -> str:
    exe = os.path.realpath(sys.argv[0]) if sys.argv and sys.argv[0] else "mirrord"
    cmd = shlex.join(["sudo", "-E", exe, *sys.argv[1:]]) if sys.argv[1:] else None
    hint = f"\n  {cmd}" if cmd else ""
    return (
        "a local agent enters the target's namespaces and reads its environment, which "
        "needs root. Run mirrord as root:" + hint + "\n"
        "or point mirrord at a running agent with --agent-address HOST:PORT "
        "(token in MIRRORD_AGENT_TOKEN)."
    )


async def run_exec(
    argv: Sequence[str],
    config: MirrordConfig,
    *,
    agent: AgentEndpoint | None = None,
    environ: Mapping[str, str] | None = None,
    steal_probes: bool = False,
    explain: Explainer | None = None,
    early_agent: EarlyAgent | None = None,
) -> ExitStatus:
    """explain: every decision is recorded there (`--explain`); SIGUSR1 prints its summary
    while the program runs, and the caller prints it at the end. early_agent: a local
    agent the caller started while the config loaded (used if it fits, else stopped)."""
    local_env = user_environ() if environ is None else dict(environ)
    try:
        target = parse_target(config.target.path_string)
    except TargetError as exc:
        raise ExecError(str(exc), 2) from None
    in_cluster = agent is None and uses_cluster(config, target, local_env)
    if agent is None and not in_cluster and os.geteuid() != 0:
        raise ExecError(needs_root_message(argv))

    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    runs: list[SupervisedRun] = []

    def interrupted(sig: int) -> None:
        # A signal before the program exists: abandon the start-up, cleanly. Once it has
        # ended, the cleanup under way (bounded by its own timeouts) is let finish: cut
        # short, mirrord exited while the agent was still removing the session's rules.
        if main_task is not None and not runs:
            loop.call_soon_threadsafe(main_task.cancel)

    forwarder = SignalForwarder(
        targets=lambda: runs[0].live_targets() if runs else [],
        on_signal_without_target=interrupted,
    )
    forwarder.start()
    if explain is not None:
        loop.add_signal_handler(signal.SIGUSR1, lambda: print_summary(explain))
    local_agent = None
    client: AgentClient | None = None
    features: tuple[Feature, ...] = ()
    kube = contextlib.AsyncExitStack()
    try:
        if early_agent is not None and (agent is not None or in_cluster):
            await early_agent.discard()  # started in vain: no local agent is needed
            early_agent = None
        startup = float(config.agent.startup_timeout_s)
        if in_cluster:
            from mirrord.kube.session import kube_agent_session

            client = await kube.enter_async_context(kube_agent_session(config, target, local_env))
            timing.mark("cluster agent session opened")
        else:
            if agent is None:
                if early_agent is not None and early_agent.ping_timeout == _ping_timeout(config):
                    local_agent, early_agent = await early_agent.ready(startup), None
                else:
                    local_agent = await start_local_agent(
                        ping_timeout=_ping_timeout(config), startup_timeout=startup
                    )
                agent = AgentEndpoint(local_agent.address, local_agent.token)
                timing.mark("local agent started")
            client = await AgentClient.connect(
                agent.address, agent.token, target.pid, timeout=startup
            )
            timing.mark("agent session opened")
        env_on = config.feature.env_enabled
        remote_env = await client.get_env() if env_on else {}
        env_cfg = config.feature.env_config if env_on else False
        env = merge_env(local_env, remote_env, env_cfg)
        timing.mark("environment fetched")
        if explain is not None:
            _explain_env(explain, remote_env, env_cfg, local_env)
        hostname = client.hello.hostname if config.feature.hostname_enabled else None
        features = await build_features(config, client, steal_probes=steal_probes, explain=explain)
        timing.mark("features built")
        # What start-up made (modules, config, channels: lives as long as the run) is
        # left out of the collector's full passes: one of those cost a remote walk 30 ms
        # mid-run, with the program waiting on every trapped call meanwhile.
        gc.freeze()
        options = SupervisorOptions(hostname=hostname or None, features=features)
        run = SupervisedRun(argv, env, options)
        runs.append(run)
        status = await _wait_program(run, client)
        timing.mark("program ran")
        return status
    except (AgentError, KubeError) as exc:
        raise ExecError(str(exc)) from None
    except ConfigError as exc:  # env_file unreadable or malformed
        raise ExecError(str(exc), 2) from None
    except SpawnError as exc:
        raise ExecError(str(exc), exc.exit_code) from None
    finally:
        try:
            await close_features(features)  # e.g. file write-back: needs the session
        finally:
            if client is not None:
                await client.close()
        await kube.aclose()  # the port-forward and the API connection
        if local_agent is not None:
            await local_agent.stop()
        if early_agent is not None:
            await early_agent.discard()
        if explain is not None:
            loop.remove_signal_handler(signal.SIGUSR1)
        forwarder.stop()
        timing.mark("session closed, agent stopped")


def print_summary(explain: Explainer) -> None:
    explain.flush()
    for line in explain.summary_lines():
        _say(line)


def _explain_env(
    explain: Explainer,
    remote: Mapping[str, str],
    cfg: EnvConfig | bool | None,
    local: Mapping[str, str],
) -> None:
    file_names: list[str] = []
    if isinstance(cfg, EnvConfig) and cfg.env_file:
        file_names = sorted(load_env_file(cfg.env_file, environ=local))
    explain.declare(env_rules(cfg))
    for name, decision, rule in env_decisions(remote, cfg, file_names):
        explain.record("env", name=name, decision=decision, rule=rule)


def _ping_timeout(config: MirrordConfig) -> float:
    return float(config.agent.communication_timeout_s)


async def _wait_program(run: SupervisedRun, client: AgentClient) -> ExitStatus:
    """The program's exit status, unless the agent goes first: then the program is
    stopped (SIGTERM, then SIGKILL after a grace period) and mirrord fails."""
    program = asyncio.ensure_future(run.wait())
    waiting: set[asyncio.Future[Any]] = {program, client.lost}
    done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if program in done:
        return program.result()
    reason = client.lost.result()
    _say(f"lost the agent: {reason}; stopping the program")
    run.kill(signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.shield(program), LOST_AGENT_GRACE_S)
    except TimeoutError:
        run.kill(signal.SIGKILL)
        await program
    raise ExecError(None, 1)  # said above, when it happened


__all__ = ["AgentEndpoint", "ExecError", "Target", "run_exec"]
