"""`mirrord port-forward` (upstream 3.250's command): `-L [LPORT:]HOST:RPORT` listens here
and connects from the target's network; `-R [REMOTE_PORT:]LOCAL_PORT` mirrors or steals the
target's port to a local one. The agent session is `mirrord exec`'s: a local agent for pid/N
(or targetless), --agent-address, or the cluster's agent through the API server's
port-forward for Kubernetes targets (`mirrord.kube.session`).

| module | owns |
| --- | --- |
| `specs.py` | the -L/-R forms (pure) and the errors |
| `forward.py` | -L: local listeners, per connection a `Net.Tcp` stream |
| `reverse.py` | -R: `Incoming` subscriptions, delivery to 127.0.0.1:LOCAL_PORT |
| `run.py` | the session, signals, cleanup order, exit status |
"""

from mirrord.portforward.run import run_port_forward
from mirrord.portforward.specs import (
    ForwardSpec,
    PortForwardError,
    ReverseSpec,
    SpecError,
    parse_all,
    parse_reverse_spec,
    parse_spec,
)

__all__ = [
    "ForwardSpec",
    "PortForwardError",
    "ReverseSpec",
    "SpecError",
    "parse_all",
    "parse_reverse_spec",
    "parse_spec",
    "run_port_forward",
]
