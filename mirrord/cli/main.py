"""`mirrord` command line: exec, verify-config, schema; ls and agent (in kube_cmds).

Heavy modules (grpc, the supervisor) are imported inside the commands that need them, so
`mirrord --help` and `verify-config` start quickly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from mirrord import __version__, timing
from mirrord.cli import options as opt
from mirrord.cli.argv import COMMANDS as OPTIONAL_VALUE_COMMANDS
from mirrord.cli.argv import normalize, option_values
from mirrord.cli.coercion import lazy_coercion
from mirrord.cli.common import ORIGINAL_ENV, err, load_config
from mirrord.cli.kube_cmds import register as register_kube_commands
from mirrord.cli.portforward_cmd import register as register_port_forward

if TYPE_CHECKING:
    from mirrord.client.local_agent import Spawned

app = typer.Typer(
    name="mirrord",
    help="Run a local program in the context of a remote target: its environment, "
    "hostname, files, outgoing network and DNS, and incoming traffic.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"mirrord {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", "-V", callback=_version, is_eager=True)
    ] = False,
) -> None:
    pass


@app.command(
    "exec",
    context_settings={"allow_interspersed_args": False},
)
def exec_(
    command: Annotated[
        list[str] | None, typer.Argument(help="The program and its arguments.")
    ] = None,
    target: opt.Target = None,
    config_file: opt.ConfigFile = None,
    namespace: opt.TargetNamespace = None,
    agent_namespace: opt.AgentNamespace = None,
    agent_log_level: opt.AgentLogLevel = None,
    agent_image: opt.AgentImage = None,
    agent_ttl: opt.AgentTtl = None,
    agent_startup_timeout: opt.AgentStartupTimeout = None,
    ephemeral_container: opt.Ephemeral = False,
    fs_mode: Annotated[
        str | None, typer.Option("--fs-mode", help="local, localwithoverrides, read, write")
    ] = None,
    env_exclude: Annotated[
        str | None,
        typer.Option(
            "--override-env-vars-exclude", "-x", help="Remote env vars to exclude (a;b*)."
        ),
    ] = None,
    env_include: Annotated[
        str | None,
        typer.Option(
            "--override-env-vars-include", "-s", help="Remote env vars to include (a;b*)."
        ),
    ] = None,
    no_remote_dns: Annotated[
        bool, typer.Option("--no-remote-dns", help="Resolve names locally.")
    ] = False,
    skip_processes: Annotated[
        str | None, typer.Option("--skip-processes", help=opt.NO_EFFECT)
    ] = None,
    accept_invalid_certificates: opt.AcceptInvalidCertificates = None,
    steal: Annotated[bool, typer.Option("--steal", help="Steal incoming traffic.")] = False,
    steal_probes: Annotated[
        bool,
        typer.Option(
            "--steal-probes",
            help="A steal takes the pod's kubelet probes too (by default their requests "
            "from the node stay with the pod).",
        ),
    ] = False,
    no_outgoing: Annotated[
        bool, typer.Option("--no-outgoing", help="Keep outgoing traffic local.")
    ] = False,
    no_tcp_outgoing: Annotated[
        bool, typer.Option("--no-tcp-outgoing", help="Keep outgoing TCP local.")
    ] = False,
    no_udp_outgoing: Annotated[
        bool, typer.Option("--no-udp-outgoing", help="Keep outgoing UDP local.")
    ] = False,
    no_telemetry: opt.NoTelemetry = False,
    disable_version_check: opt.DisableVersionCheck = False,
    context: opt.Context = None,
    kubeconfig: opt.Kubeconfig = None,
    env_file: Annotated[
        str | None,
        typer.Option("--env-file", help="A .env file applied on top of the target's env."),
    ] = None,
    key: Annotated[str | None, typer.Option("--key", "-k", help=opt.NO_EFFECT)] = None,
    agent_address: opt.AgentAddress = None,
    agent_token_file: opt.AgentTokenFile = None,
    explain: Annotated[
        str | None,
        typer.Option(
            "--explain",
            help="Record why each file, connection, DNS name, port and variable went local "
            "or remote; a summary at the end (and on SIGUSR1). --explain=FILE also writes "
            "each decision to FILE as JSON lines (docs/explain.md). Or MIRRORD_EXPLAIN=FILE.",
        ),
    ] = None,
) -> None:
    """Run COMMAND in the context of the target (options first, then the program)."""
    from mirrord.config import ExecOverrides

    opt.warn_no_effect(
        {
            "--agent-ttl": agent_ttl,
            "--ephemeral-container": ephemeral_container,
            "--skip-processes": skip_processes,
            "--no-telemetry": no_telemetry,
            "--disable-version-check": disable_version_check,
            "--key": key,
        }
    )
    overrides = ExecOverrides(
        target=target,
        namespace=namespace,
        env_include=env_include,
        env_exclude=env_exclude,
        fs_mode=fs_mode,
        steal=steal,
        no_outgoing=no_outgoing,
        no_udp_outgoing=no_udp_outgoing,
        env_file=env_file,
        no_tcp_outgoing=no_tcp_outgoing,
        no_remote_dns=no_remote_dns,
        agent_namespace=agent_namespace,
        agent_image=agent_image,
        agent_log_level=agent_log_level,
        agent_startup_timeout=agent_startup_timeout,
        accept_invalid_certificates=opt.cert_flag(accept_invalid_certificates),
        kube_context=context,
        kubeconfig=kubeconfig,
    )
    explain_value = explain if explain is not None else os.environ.get(EXPLAIN_ENV)

    def prepare() -> tuple[object, object, object]:
        """The checks before the session (exit 2 when one fails), on a worker thread while
        an early local agent starts: the config, the agent endpoint, the explainer."""
        config = load_config(config_file, overrides)
        timing.mark("config loaded")
        if not command:
            err("no program given: mirrord exec [OPTIONS] [--] PROGRAM [ARGS…]")
            raise typer.Exit(2)
        endpoint = opt.agent_endpoint(agent_address, agent_token_file)
        if endpoint is not None and config.target.kind not in (None, "pid"):
            from mirrord.client.endpoint import refuses_kube_target

            err(refuses_kube_target(str(config.target.path_string)))
            raise typer.Exit(2)
        return config, endpoint, _explainer(explain_value)

    early = _early_agent_wanted(target, agent_address, kubeconfig, context)
    code = _run(command or [], prepare, steal_probes, early)
    _exit_now(code)


def _exit_now(code: int) -> NoReturn:
    """End `mirrord exec` at once: the session has cleaned up after itself (the agent
    stopped, the cache removed, the rules gone); the interpreter's own teardown (gRPC,
    threads, modules) took 60-80 ms more for nothing the user waits for."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _early_agent_wanted(
    target: str | None, agent_address: str | None, kubeconfig: str | None, context: str | None
) -> bool:
    """Whether a local agent will most likely be needed: then it starts at once, while the
    config loads (the config may still name a cluster target: it is stopped unused)."""
    if os.geteuid() != 0 or agent_address is not None:
        return False
    if target is not None:
        return target == "targetless" or target.startswith("pid/")
    if kubeconfig or context:
        return False
    from mirrord.kube.kubeconfig import has_current_context

    return not has_current_context(ORIGINAL_ENV)


EXPLAIN_ENV = "MIRRORD_EXPLAIN"  # --explain's equivalent: 1 (summary) or a file name
EXPLAIN_ALL_ENV = "MIRRORD_EXPLAIN_ALL"  # 1: a path each time it is decided, not only once


def _explainer(value: str | None) -> Any:
    """None: off. "" / 1 / true: the summary only. Anything else: the JSON lines file."""
    if value is None or value.strip().lower() in ("0", "false"):
        return None
    from mirrord.explain import Explainer

    every = os.environ.get(EXPLAIN_ALL_ENV, "") in ("1", "true")
    if value.strip().lower() in ("", "1", "true"):
        return Explainer(every=every)
    try:
        # Block-buffered: a line-buffered file costs a write(2) per decision, on the
        # supervisor's serving thread. Flushed at the end and on SIGUSR1.
        out = open(value, "w", encoding="utf-8")  # noqa: SIM115 - the session's
    except OSError as exc:
        err(f"--explain: cannot write {value}: {exc.strerror or exc}")
        raise typer.Exit(2) from None
    return Explainer(out, every=every)


def _run(
    command: list[str],
    prepare: Callable[[], tuple[object, object, object]],
    steal_probes: bool,
    early: bool,
) -> int:
    """The session: an early local agent (if `early`) starts while `prepare` checks the
    flags and loads the config on a thread; then run_exec. The exit code."""
    explained: list[Any] = []

    async def session() -> Any:
        early_agent = None
        spawned = _take_spawned()
        if early:
            from mirrord.client.local_agent import EarlyAgent

            early_agent = EarlyAgent(DEFAULT_PING_TIMEOUT_S, spawned)
        elif spawned is not None:
            spawned.kill()  # click read the line otherwise than _spawn_early_agent
        # The config loads (on its thread) while the agent starts: ~20 ms of pydantic
        # off the critical path, which is now the agent's own start-up.
        prepared = asyncio.ensure_future(_off_loop(prepare))
        try:
            if early_agent is not None:
                await early_agent.start()
            config, endpoint, explain = await prepared
            explained.append(explain)
            from mirrord.run import run_exec
        except BaseException:
            if not prepared.done():
                prepared.cancel()  # its thread ends on its own; nobody waits for it
            if early_agent is not None:
                await early_agent.discard()
            raise
        return await run_exec(
            command,
            config,  # type: ignore[arg-type]
            agent=endpoint,  # type: ignore[arg-type]
            environ=ORIGINAL_ENV,
            steal_probes=steal_probes,
            explain=explain,  # type: ignore[arg-type]
            early_agent=early_agent,
        )

    try:
        status = asyncio.run(session())
    except Exception as exc:
        from mirrord.run import ExecError

        if not isinstance(exc, ExecError):
            raise  # typer.Exit from the checks, or a bug
        if exc.message is not None:
            err(exc.message)
        return exc.exit_code
    except (KeyboardInterrupt, asyncio.CancelledError):
        err("interrupted before the program started")
        return 130
    finally:
        # Before exit_like: a program killed by a signal ends mirrord by the same signal.
        explain = explained[0] if explained else None
        if explain is not None:
            from mirrord.run import print_summary

            print_summary(explain)
            explain.close()
        for line in timing.report():
            err(line)
    from mirrord.supervisor import exit_like

    sys.stdout.flush()
    return exit_like(status.code, status.signal)


T = TypeVar("T")


async def _off_loop(work: Callable[[], T]) -> T:
    """`work()` on a thread of its own, which ends with it and blocks the signals the
    session reads itself (SIGCHLD from a signalfd, the forwarded ones): a lingering pool
    thread would take them (a SIGTERM would end mirrord instead of reaching the program;
    a SIGCHLD missed would stall the end of the run)."""
    import threading

    from mirrord.supervisor.signals import FORWARDED

    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def body() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {*FORWARDED, signal.SIGCHLD})
        try:
            result: T | None = work()
            error: BaseException | None = None
        except BaseException as exc:
            result, error = None, exc
        # The session may be over already (the agent failed meanwhile): nobody waits.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=body, name="mirrord-prepare", daemon=True).start()
    return await done


# The local agent's ping timeout unless the config says otherwise (agent.communication_timeout;
# an early agent started with it is replaced when the config differs).
DEFAULT_PING_TIMEOUT_S = 30.0


# What `verify-config --ide` lists as usable with a config (upstream's TargetType names).
TARGET_TYPES = (
    "targetless", "pod", "deployment", "rollout", "job", "cronjob", "statefulset", "service",
    "replicaset",
)  # fmt: skip


@app.command("verify-config")
def verify_config(
    path: Annotated[str, typer.Argument(help="mirrord.json / .yaml / .toml")],
    ide: Annotated[
        bool,
        typer.Option("--ide", help="Upstream's JSON for IDE plugins (always exit code 0)."),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="The same JSON; exit code 1 when it fails.")
    ] = False,
    resolved: Annotated[
        bool, typer.Option("--resolved", help="Add the resolved config, defaults included.")
    ] = False,
) -> None:
    """Check a config file exactly as `exec` would: OK, or every error with its key path."""
    from mirrord.cli.common import resolve_checked
    from mirrord.config import ConfigError, ExecOverrides

    try:
        result = resolve_checked(path, ExecOverrides())
    except ConfigError as exc:
        if ide or as_json:
            errors = [str(exc)] if ide else exc.errors
            print(json.dumps({"type": "Fail", "errors": errors, "source": exc.source}, indent=2))
            raise typer.Exit(0 if ide else 1) from None
        err(str(exc))
        raise typer.Exit(1) from None
    if ide or as_json:
        config = result.config
        out: dict[str, object] = {
            "type": "Success",
            "config": {"path": _target_json(config), "namespace": config.target.namespace},
            "warnings": result.warnings,
            "compatible_target_types": list(TARGET_TYPES),
        }
        if resolved:
            out["resolved_config"] = config.model_dump(mode="json", by_alias=True)
        print(json.dumps(out, indent=2))
        return
    for w in result.warnings:
        err(f"warning: {w}")
    if resolved:
        dumped = result.config.model_dump(mode="json", by_alias=True)
        print(json.dumps(dumped, indent=2))
    print(f"{path}: OK")


def _target_json(config: Any) -> object:
    """The target as upstream's verify-config prints it: "targetless", or an object named
    by its kind (`{"pod": NAME, "container": C}`)."""
    from mirrord.target import parse_target

    text = config.target.path_string
    if text is None:
        return "targetless" if config.target.path == "targetless" else None
    if text.startswith("labels/"):
        labels = dict(p.split("=", 1) for p in text[7:].split("/", 1)[0].split(",") if "=" in p)
        return {"labels": labels, "container": config.target.container}
    target = parse_target(text)
    if target.kind is None:
        return {"pid": target.pid}
    return {target.kind: target.name, "container": target.container}


@app.command("explain")
def explain_trace(
    path: Annotated[str, typer.Argument(help="A trace written by `exec --explain=FILE`.")],
) -> None:
    """Print the summary of a saved --explain trace."""
    from mirrord.explain.summary import TraceError, summarize_file

    try:
        with open(path, encoding="utf-8") as f:
            summary = summarize_file(f, path)
    except OSError as exc:
        err(f"{path}: {exc.strerror or exc}")
        raise typer.Exit(1) from None
    except (TraceError, UnicodeDecodeError) as exc:
        err(str(exc))
        raise typer.Exit(1) from None
    for line in summary.lines():
        print(line)


@app.command("schema")
def schema() -> None:
    """Print the JSON schema of the config file."""
    from mirrord.config import config_json_schema

    print(json.dumps(config_json_schema(), indent=2))


# ls, agent serve|install|uninstall|status
register_kube_commands(app)
register_port_forward(app)


SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_MIRRORD_COMPLETE"


@app.command("completions")
def completions(
    shell: Annotated[str, typer.Argument(help="bash, zsh or fish.")],
) -> None:
    """Print the shell completion script (e.g. `source <(mirrord completions bash)`)."""
    from typer._completion_shared import get_completion_script

    if shell not in SHELLS:
        err(f"completions: unsupported shell {shell!r}; expected one of {', '.join(SHELLS)}")
        raise typer.Exit(2)
    print(get_completion_script(prog_name="mirrord", complete_var=COMPLETE_VAR, shell=shell))


def _takes_value(group: Any, command: str) -> Callable[[str], bool]:
    """Which options of a subcommand consume the next argument (from click's own table)."""
    sub = getattr(group, "commands", {}).get(command)
    valued: set[str] = set()
    for param in sub.params if sub is not None else []:
        if param.param_type_name == "option" and not getattr(param, "is_flag", False):
            valued.update(param.opts)
    return valued.__contains__


def main() -> None:
    timing.mark("python start-up, CLI imports")
    # gRPC's fork handlers would complain (and do nothing useful) when the tracer forks
    # the program: the child only execs.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    if COMPLETE_VAR in os.environ:  # the shell asks for completions (`mirrord completions`)
        from typer._completion_classes import completion_init

        completion_init()
    # The click command is built once: for the option table and to run.
    cli = typer.main.get_command(app)
    lazy_coercion(cli)
    args = sys.argv[1:]
    if args and args[0] in OPTIONAL_VALUE_COMMANDS:
        args = [args[0], *normalize(args[1:], _takes_value(cli, args[0]))]
    if args and args[0] == "exec":
        _spawn_early_agent(cli, args[1:])
    try:
        cli(args=args, prog_name="mirrord", complete_var=COMPLETE_VAR)
    finally:
        spawned = _take_spawned()
        if spawned is not None:  # the command ended before its session (a usage error)
            spawned.kill()


# The local agent `mirrord exec` spawned before click parsed its command line.
_SPAWNED: list[Spawned] = []


def _spawn_early_agent(cli: Any, args: list[str]) -> None:
    """Spawn the local agent at once when `exec`'s own flags will want one: its start-up
    (~120 ms) then overlaps ours (the option parsing imports pydantic, then the config
    loads): the agent was ready 120 ms after the config, it now is before it."""
    if os.geteuid() != 0 or COMPLETE_VAR in os.environ:
        return
    names = {"-t": "target", "--target": "target", "--agent-address": "agent_address",
             "--kubeconfig": "kubeconfig", "--context": "context"}  # fmt: skip
    values = option_values(args, names, _takes_value(cli, "exec"))
    if values is None:
        return
    wanted = _early_agent_wanted(
        values.get("target"),
        values.get("agent_address"),
        values.get("kubeconfig"),
        values.get("context"),
    )
    if wanted:
        from mirrord.client.local_agent import spawn

        with contextlib.suppress(OSError):  # then the session spawns it, and says why not
            _SPAWNED.append(spawn(DEFAULT_PING_TIMEOUT_S))
            timing.mark("local agent spawned")


def _take_spawned() -> Spawned | None:
    return _SPAWNED.pop() if _SPAWNED else None
