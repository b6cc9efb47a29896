"""feature.network.incoming config → the supervisor's IncomingPolicy and the proxy's
IncomingSettings (pure). Upstream semantics: default mode mirror; `http_filter.ports`
defaults to [80, 8080]; `port_mapping` is [[local, remote]]; `listen_ports` is
[[requested, local]]; `ignore_localhost` keeps sockets bound to localhost local.
"""

from __future__ import annotations

import re

from mirrord.config import ConfigError, MirrordConfig
from mirrord.config.errors import bad_regex
from mirrord.config.models import HttpFilterConfig, IncomingConfig, InnerFilter
from mirrord.features.incoming.client import Condition, HttpFilterSpec
from mirrord.features.incoming.delivery import IncomingSettings
from mirrord.features.incoming.handlers import IncomingPolicy

DEFAULT_FILTER_PORTS = (80, 8080)


FILTER_KEY = "feature.network.incoming.http_filter"


def _regex(pattern: str, key: str) -> str:
    """The agent matches header and path filters as case-insensitive Python regexes: a
    pattern it cannot compile is the config's error, found before the session starts."""
    problem = bad_regex(f"{FILTER_KEY}.{key}", pattern, re.IGNORECASE)
    if problem is not None:
        raise ConfigError("<config>", [problem])
    return pattern


def _conditions(items: list[InnerFilter], where: str) -> list[Condition]:
    out: list[Condition] = []
    for index, item in enumerate(items):
        if item.header is not None:
            out.append(("header", _regex(item.header, f"{where}[{index}].header")))
        elif item.path is not None:
            out.append(("path", _regex(item.path, f"{where}[{index}].path")))
        elif item.method is not None:
            out.append(("method", item.method))
        else:
            # A filter we cannot apply must not silently steal (or leave) the wrong traffic.
            path = f"{FILTER_KEY}.{where}[{index}]"
            raise ConfigError(
                "<config>", [f"{path}: query and body conditions are not supported yet"]
            )
    return out


def http_filter_spec(f: HttpFilterConfig) -> HttpFilterSpec | None:
    """The filter as the agent takes it; None when no filter kind is set."""
    ports: tuple[int, ...] = DEFAULT_FILTER_PORTS
    if f.ports is not None:
        ports = (f.ports,) if isinstance(f.ports, int) else tuple(f.ports)
    if f.header_filter is not None:
        return HttpFilterSpec(header_filter=_regex(f.header_filter, "header_filter"), ports=ports)
    if f.path_filter is not None:
        return HttpFilterSpec(path_filter=_regex(f.path_filter, "path_filter"), ports=ports)
    if f.method_filter is not None:
        return HttpFilterSpec(method_filter=f.method_filter, ports=ports)
    if f.all_of is not None:
        return HttpFilterSpec(all_of=_conditions(f.all_of, "all_of"), ports=ports)
    if f.any_of is not None:
        return HttpFilterSpec(any_of=_conditions(f.any_of, "any_of"), ports=ports)
    return None


def incoming_config(
    config: MirrordConfig,
) -> tuple[IncomingPolicy, IncomingSettings] | None:
    """None when incoming traffic is off."""
    mode = config.feature.incoming_mode
    if mode == "off":
        return None
    incoming = config.feature.network_config.incoming
    inc = incoming if isinstance(incoming, IncomingConfig) else IncomingConfig()
    flt = None
    if isinstance(inc.http_filter, HttpFilterConfig):
        flt = http_filter_spec(inc.http_filter)
    policy = IncomingPolicy(
        ports=frozenset(inc.ports) if inc.ports is not None else None,
        ignore_ports=frozenset(inc.ignore_ports or ()),
        ignore_localhost=bool(inc.ignore_localhost),
        listen_ports={int(a): int(b) for a, b in inc.listen_ports or ()},
    )
    settings = IncomingSettings(
        mode="steal" if mode == "steal" else "mirror",
        http_filter=flt,
        port_mapping={int(a): int(b) for a, b in inc.port_mapping or ()},
        ignore_localhost=bool(inc.ignore_localhost),
        on_concurrent_steal=inc.on_concurrent_steal or "abort",
        nftables=config.agent.nftables,
    )
    return policy, settings
