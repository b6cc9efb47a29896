"""Kubernetes commands: `mirrord ls` and `mirrord agent serve|install|uninstall|status`.

`mirrord agent` with anything that is not a subcommand (e.g. `mirrord agent --listen ...`)
still runs the agent server, as before: the group inserts `serve` in front.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from mirrord.cli.common import ORIGINAL_ENV, err, load_config

T = TypeVar("T")

ContextOpt = Annotated[str | None, typer.Option("--context", help="Kube context.")]
KubeconfigOpt = Annotated[str | None, typer.Option("--kubeconfig", help="Kubeconfig file.")]
ConfigOpt = Annotated[
    str | None, typer.Option("--config-file", "-f", help="mirrord config (its agent section).")
]
OutputOpt = Annotated[str, typer.Option("--output", "-o", help="text, json (or yaml).")]
AgentNsOpt = Annotated[
    str | None,
    typer.Option("--agent-namespace", "-a", help="Namespace of the agent (default mirrord)."),
]


class _AgentGroup(TyperGroup):
    """Bare `mirrord agent [agent options]` means `mirrord agent serve ...`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["serve", *args]
        return super().parse_args(ctx, args)


agent_app = typer.Typer(
    cls=_AgentGroup,
    help="The mirrord agent: run it, or install it in a cluster as a DaemonSet.",
    no_args_is_help=False,
)


def _config(
    config_file: str | None,
    context: str | None,
    kubeconfig: str | None,
    agent_namespace: str | None = None,
    agent_image: str | None = None,
) -> Any:
    from mirrord.config import ExecOverrides

    overrides = ExecOverrides(
        kube_context=context,
        kubeconfig=kubeconfig,
        agent_namespace=agent_namespace,
        agent_image=agent_image,
    )
    return load_config(config_file, overrides)


def _with_api(config: Any, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work(api)` with a connected KubeApi; KubeError becomes a clean exit 1."""
    from mirrord.kube.api import KubeApi
    from mirrord.kube.errors import KubeError
    from mirrord.kube.session import settings_from

    async def main() -> T:
        api = await KubeApi.connect(settings_from(config), ORIGINAL_ENV)
        try:
            return await work(api)
        finally:
            await api.close()

    try:
        return asyncio.run(main())
    except KubeError as exc:
        err(str(exc))
        raise typer.Exit(1) from None


def _check_output(output: str, allowed: tuple[str, ...]) -> None:
    if output not in allowed:
        err(f"--output must be one of {', '.join(allowed)}, got {output!r}")
        raise typer.Exit(2)


@agent_app.command(
    "serve",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                      "help_option_names": []},
    add_help_option=False,
)  # fmt: skip
def serve(ctx: typer.Context) -> None:
    """Run the agent server (`python -m mirrord.agent`; --help for its options)."""
    from mirrord.agent.main import main as agent_main

    raise typer.Exit(agent_main(list(ctx.args)))


@agent_app.command("install")
def install(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the manifests; change nothing.")
    ] = False,
    output: OutputOpt = "text",
    config_file: ConfigOpt = None,
    agent_namespace: AgentNsOpt = None,
    image: Annotated[str | None, typer.Option("--image", "-i", help="Agent image.")] = None,
    users_group: Annotated[
        str, typer.Option("--users-group", help="Group granted the mirrord user role.")
    ] = "mirrord:users",
    context: ContextOpt = None,
    kubeconfig: KubeconfigOpt = None,
) -> None:
    """Install (or update) the agent DaemonSet, its namespace, token and user RBAC."""
    _check_output(output, ("text", "yaml", "json"))
    config = _config(config_file, context, kubeconfig, agent_namespace, image)
    if dry_run:
        import yaml

        from mirrord.kube.manifests import install_manifests, new_token

        docs = install_manifests(config.agent, new_token(), users_group)
        if output == "json":
            print(json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}, indent=2))
        else:
            print(yaml.safe_dump_all(docs, sort_keys=False), end="")
        return
    from mirrord.kube.install import install as do_install
    from mirrord.kube.manifests import agent_image

    if config.agent.image is None:
        # The default name is in no registry: a cluster-wide DaemonSet whose every pod
        # waits in ErrImagePull helps nobody. Naming it with --image says it is there.
        default = agent_image(config.agent)
        err(
            f"agent install: the default agent image {default} is in no registry, so a "
            "node can pull it only if it was loaded into it (kind, minikube). Build and "
            "push it (docs/kubernetes.md), then `mirrord agent install --image "
            f"REGISTRY/{default}` (or agent.image in mirrord.json); if your nodes have it "
            f"already, say so: `--image {default}`"
        )
        raise typer.Exit(2)
    from mirrord.say import say

    done = _with_api(config, lambda api: do_install(api, config.agent, users_group, say=say))
    if output == "json":
        print(json.dumps({"actions": done}))
    else:
        for line in done:
            print(line)


@agent_app.command("uninstall")
def uninstall(
    config_file: ConfigOpt = None,
    agent_namespace: AgentNsOpt = None,
    context: ContextOpt = None,
    kubeconfig: KubeconfigOpt = None,
) -> None:
    """Remove the agent: its namespace (DaemonSet, token, roles) and cluster roles."""
    from mirrord.kube.install import uninstall as do_uninstall

    config = _config(config_file, context, kubeconfig, agent_namespace)
    done = _with_api(config, lambda api: do_uninstall(api, config.agent))
    for line in done or ["nothing to remove"]:
        print(line)


@agent_app.command("status")
def status(
    output: OutputOpt = "text",
    config_file: ConfigOpt = None,
    agent_namespace: AgentNsOpt = None,
    context: ContextOpt = None,
    kubeconfig: KubeconfigOpt = None,
) -> None:
    """Is the agent installed, which version, and its pods per node."""
    import mirrord
    from mirrord.kube.install import skew_message
    from mirrord.kube.install import status as get_status

    _check_output(output, ("text", "json"))
    config = _config(config_file, context, kubeconfig, agent_namespace)
    st = _with_api(config, lambda api: get_status(api, config.agent))
    if output == "json":
        print(json.dumps(st.as_dict(), indent=2))
    elif not st.installed:
        print(f"not installed in namespace {st.namespace}: run `mirrord agent install`")
    else:
        print(f"installed in namespace {st.namespace}: mirrord {st.version} "
              f"(protocol {st.protocol}), image {st.image}")  # fmt: skip
        print(f"this CLI: mirrord {mirrord.__version__}")
        problem = skew_message(st.version, st.protocol, st.namespace)
        if problem:
            print(problem)
        for pod in st.pods:
            print(f"  {pod['name']:<32} {pod['node']:<24} {pod['state']}")
        if not st.pods:
            from mirrord.kube.manifests import no_agent_pods

            why = st.unscheduled or no_agent_pods(st.namespace, st.warnings)
            print(f"  no agent pods: {why}")
    if not st.installed:
        raise typer.Exit(1)
    raise typer.Exit(0 if st.pods else 3)


RICH_OUTPUT_ENV = "MIRRORD_LS_RICH_OUTPUT"  # upstream's: an object with more than the paths
TARGET_TYPES_ENV = "MIRRORD_LS_TARGET_TYPES"  # upstream's: a JSON list of target types


def ls(
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Namespace (default: context's).")
    ] = None,
    output: Annotated[
        str,
        typer.Option(
            "--output", "-o", help="json (upstream's: what IDE plugins read), yaml, or text."
        ),
    ] = "json",
    target_type: Annotated[
        list[str] | None,
        typer.Option(
            "--target-type",
            "-t",
            help="Only this type (pod, deployment, rollout, statefulset, cronjob, job, "
            "service); repeatable.",
        ),
    ] = None,
    config_file: ConfigOpt = None,
    context: ContextOpt = None,
    kubeconfig: KubeconfigOpt = None,
) -> None:
    """List the targets in a namespace: a JSON list of target paths, as upstream prints it
    (with MIRRORD_LS_RICH_OUTPUT=true: an object with the namespaces too)."""
    import os

    from mirrord.kube.listing import TARGET_TYPES, list_targets

    _check_output(output, ("json", "yaml", "text"))
    kinds = _target_types(target_type, os.environ.get(TARGET_TYPES_ENV), TARGET_TYPES)
    rich = os.environ.get(RICH_OUTPUT_ENV, "").strip().lower() in ("1", "true", "yes")
    config = _config(config_file, context, kubeconfig)

    async def work(api: Any) -> Any:
        ns = namespace or config.target.namespace or api.namespace
        return await list_targets(api, ns, kinds, namespaces=rich)

    listing = _with_api(config, work)
    for note in listing.notes:
        err(f"note: {note}")
    data: Any = listing.targets
    if rich:
        data = {
            "targets": [{"path": t, "available": True} for t in listing.targets],
            "current_namespace": listing.namespace,
            "namespaces": listing.namespaces,
        }
    if output == "json":
        print(json.dumps(data))
    elif output == "yaml":
        import yaml

        print(yaml.safe_dump(data, sort_keys=False), end="")
    else:
        sys.stdout.write("".join(f"{t}\n" for t in listing.targets))


def _target_types(
    flags: list[str] | None, env_value: str | None, known: tuple[str, ...]
) -> frozenset[str] | None:
    """The types asked for (-t, else MIRRORD_LS_TARGET_TYPES); None: all of them."""
    asked: list[str] = list(flags or [])
    if not asked and env_value:
        try:
            parsed = json.loads(env_value)
        except ValueError:
            parsed = None
        if not isinstance(parsed, list) or not all(isinstance(t, str) for t in parsed):
            err(f"{TARGET_TYPES_ENV}: expected a JSON list of target types, got {env_value!r}")
            raise typer.Exit(2)
        asked = parsed
    if not asked:
        return None
    # targetless is a type upstream too; there is nothing of it to list.
    unknown = [t for t in asked if t.lower() not in (*known, "targetless")]
    if unknown:
        err(f"unknown target type {unknown[0]!r}; expected one of {', '.join(known)}")
        raise typer.Exit(2)
    return frozenset(t.lower() for t in asked)


def register(app: typer.Typer) -> None:
    app.command("ls")(ls)
    app.add_typer(agent_app, name="agent")


__all__ = ["register"]
