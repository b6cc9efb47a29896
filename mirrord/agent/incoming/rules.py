"""The iptables rules incoming traffic needs, as iptables-restore scripts, and what a
ruleset dump says about mirrord's chains (pure: text in, text out).

Everything lives in the `nat` table, in chains of our own:
- `MIRRORD_IN_<sid>`, jumped to from PREROUTING: traffic arriving from the network;
- `MIRRORD_OUT_<sid>`, jumped to from OUTPUT: the pod's own connections to its ports over
  loopback (upstream steals those too), with a first rule that lets the agent's own
  pass-through connections (SO_MARK = AGENT_MARK) through untouched.
`<sid>` is the start of the session ID: one pair of chains per session, one set of rules per
subscribed port. The jump rules carry `mirrord:owner=PID/STARTTIME` (the agent process) so
a later agent can tell leftovers of a dead agent from the chains of a live one; redirect
rules carry `mirrord:MODE:PORT` so a second subscription of a port can be refused. Comments
have no spaces, so a dump splits into words simply. Scripts go through `iptables-restore
--noflush`, which applies each script atomically (no half-installed chain is ever visible).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PREFIX = "MIRRORD_"
IN_PREFIX = "MIRRORD_IN_"
OUT_PREFIX = "MIRRORD_OUT_"
# Marks the agent's own sockets in the pod (SO_MARK) so OUTPUT never redirects them back
# to us. "mrrd" in ASCII: an arbitrary value unlikely to equal a CNI's mark exactly.
AGENT_MARK = 0x6D727264
OWNER_TAG = "mirrord:owner="


@dataclass(frozen=True)
class Owner:
    pid: int
    start_time: int

    def tag(self) -> str:
        return f"{OWNER_TAG}{self.pid}/{self.start_time}"

    @classmethod
    def parse(cls, tag: str) -> Owner | None:
        if not tag.startswith(OWNER_TAG):
            return None
        pid, _, start = tag[len(OWNER_TAG) :].partition("/")
        try:
            return cls(int(pid), int(start))
        except ValueError:
            return None


@dataclass(frozen=True)
class SessionChains:
    inbound: str
    outbound: str

    @classmethod
    def for_session(cls, session_id: str) -> SessionChains:
        # iptables chain names are at most 28 characters: 12 + 12 hex digits fit.
        sid = session_id[:12]
        return cls(f"{IN_PREFIX}{sid}", f"{OUT_PREFIX}{sid}")


@dataclass(frozen=True)
class PortRules:
    """The rules of one subscription."""

    port: int
    listener_port: int
    mode: str  # "steal" or "mirror"
    skip_sources: tuple[str, ...]  # node addresses whose traffic keeps reaching the pod
    include_localhost: bool
    # A sidecar mesh's proxy uid when this port's traffic reaches the app through the
    # proxy's plaintext loopback hop (mesh.py): taken there, not in PREROUTING.
    mesh_uid: int | None = None
    # Istio ambient: the mark on ztunnel's hop to the app (mesh.py), taken in OUTPUT too.
    mesh_mark: str | None = None

    def claim(self) -> str:
        return f"mirrord:{self.mode}:{self.port}"

    def specs(self, chains: SessionChains) -> list[str]:
        """Rule specs (after -A/-D), in order."""
        # SYNs only: a connection the pod had before the rule is not redirected. A netns
        # without rules of its own has no conntrack until ours arrive; its connections'
        # next packets then look new to it, and were sent to our listener, which reset
        # them (every steal start reset the keep-alive connections in flight).
        tcp = f"-p tcp -m tcp --dport {self.port} --tcp-flags FIN,SYN,RST,ACK SYN"
        redirect = (
            f"-m comment --comment {self.claim()} -j REDIRECT --to-ports {self.listener_port}"
        )
        if self.mesh_uid is not None:
            # Before the mesh's own OUTPUT rules (our jump is first): the proxy's connection
            # to the app. With include_localhost every loopback connection is taken anyway.
            owner = "" if self.include_localhost else f"-m owner --uid-owner {self.mesh_uid} "
            return [f"{chains.outbound} -o lo {owner}{tcp} {redirect}"]
        specs = [
            f"{chains.inbound} -s {source}/{128 if ':' in source else 32} {tcp} "
            "-m comment --comment mirrord:node -j RETURN"
            for source in self.skip_sources
        ]
        specs.append(f"{chains.inbound} {tcp} {redirect}")
        if self.mesh_mark is not None:
            # ztunnel's hop comes from the client's address (transparent socket) to the
            # pod's: REDIRECT would make it 127.0.0.1, which cannot answer a non-loopback
            # peer. DNAT to the port alone keeps the pod's address, so the reply routes back
            # to ztunnel by its connmark like the app's would. Before the loopback rule,
            # which would take the hop too.
            dnat = f"-j DNAT --to-destination :{self.listener_port}"
            specs.append(
                f"{chains.outbound} -o lo -m mark --mark {self.mesh_mark} {tcp} "
                f"-m comment --comment {self.claim()} {dnat}"
            )
        if self.include_localhost:
            specs.append(f"{chains.outbound} -o lo {tcp} {redirect}")
        return specs


def for_family(script: str, v6: bool) -> str:
    """The script for iptables (v6 False) or ip6tables: rules naming a source address of
    the other family are left out (the same chains and redirects serve both)."""
    kept = []
    for line in script.splitlines(keepends=True):
        words = line.split()
        source = words[words.index("-s") + 1] if "-s" in words[:-1] else None
        if source is None or (":" in source) == v6:
            kept.append(line)
    return "".join(kept)


def _script(lines: Iterable[str]) -> str:
    return "*nat\n" + "".join(f"{line}\n" for line in lines) + "COMMIT\n"


def create_chains_script(chains: SessionChains, owner: Owner) -> str:
    comment = f"-m comment --comment {owner.tag()}"
    return _script(
        [
            f":{chains.inbound} - [0:0]",
            f":{chains.outbound} - [0:0]",
            f"-A {chains.outbound} -m mark --mark {AGENT_MARK:#x} -j RETURN",
            # Inserted first, so we see the traffic before service meshes or kube-proxy.
            f"-I PREROUTING 1 {comment} -j {chains.inbound}",
            f"-I OUTPUT 1 {comment} -j {chains.outbound}",
        ]
    )


def add_port_script(rules: PortRules, chains: SessionChains) -> str:
    return _script(f"-A {spec}" for spec in rules.specs(chains))


def remove_port_script(rules: PortRules, chains: SessionChains) -> str:
    return _script(f"-D {spec}" for spec in rules.specs(chains))


@dataclass(frozen=True)
class MirrordChain:
    name: str
    owner: Owner | None
    jumps: tuple[str, ...]  # "-A PREROUTING ..." lines that jump to it
    claims: tuple[tuple[str, int], ...]  # (mode, port) of its redirect rules


def _comment(words: Sequence[str]) -> str | None:
    for i, word in enumerate(words[:-1]):
        if word == "--comment":
            return words[i + 1]
    return None


def parse_nat_dump(dump: str) -> list[MirrordChain]:
    """mirrord's chains in an `iptables-save -t nat` dump, with owners, jumps and claims."""
    names: list[str] = []
    owners: dict[str, Owner] = {}
    jumps: dict[str, list[str]] = {}
    claims: dict[str, list[tuple[str, int]]] = {}
    for line in dump.splitlines():
        if line.startswith(f":{PREFIX}"):
            names.append(line[1:].split()[0])
            continue
        if not line.startswith("-A "):
            continue
        words = shlex.split(line)
        chain = words[1]
        comment = _comment(words) or ""
        if "-j" in words:
            target = words[words.index("-j") + 1]
            if target.startswith(PREFIX) and not chain.startswith(PREFIX):
                jumps.setdefault(target, []).append(line)
                owner = Owner.parse(comment)
                if owner is not None:
                    owners[target] = owner
        if chain.startswith(PREFIX) and comment.startswith("mirrord:"):
            parts = comment.split(":")
            if len(parts) == 3 and parts[1] in ("steal", "mirror") and parts[2].isdigit():
                claims.setdefault(chain, []).append((parts[1], int(parts[2])))
    return [
        MirrordChain(n, owners.get(n), tuple(jumps.get(n, ())), tuple(claims.get(n, ())))
        for n in names
    ]


def remove_chains_script(chains: Iterable[MirrordChain]) -> str:
    """Delete the jumps to these chains, then flush and delete the chains."""
    chains = list(chains)
    lines = [shlex.join(["-D", *shlex.split(jump)[1:]]) for c in chains for jump in c.jumps]
    lines += [f"-F {c.name}" for c in chains]
    lines += [f"-X {c.name}" for c in chains]
    return _script(lines)


def count_rules(dump: str) -> int:
    """How many rules an `iptables-save` dump holds (any table)."""
    return sum(1 for line in dump.splitlines() if line.startswith("-A "))
