"""Service meshes in a target's netns, read from its iptables rules (pure: text in).

A sidecar mesh redirects the pod's inbound TCP to its proxy (Istio: ISTIO_INBOUND → 15006,
Linkerd: PROXY_INIT_REDIRECT → 4143, Kuma: KUMA_MESH_INBOUND), which terminates the mTLS
hop and opens a plaintext connection to the app over loopback as its own uid (Istio 1337,
Linkerd 2102, Kuma 5678; Istio from 127.0.0.6). Our PREROUTING redirect comes before the
mesh's, so it would take the ciphertext: for the ports the mesh intercepts, steal and
mirror take that plaintext hop in OUTPUT instead (rules.PortRules.mesh_uid). Ports the mesh
skips (its RETURN rules: Istio's 15008/15020/15021/15090, excludeInboundPorts annotations,
Linkerd's skip-inbound-ports) keep the PREROUTING redirect: no proxy is in their way.

Istio ambient (the mangle table's OUTPUT jumps to ISTIO_OUTPUT too) has no sidecar:
ztunnel, a node agent, terminates the HBONE tunnel (mTLS, port 15008) and the plaintext
inbound that ISTIO_PRERT redirects to 15006 inside the pod's netns, and opens the hop to the
app from there: a socket marked 0x539/0xfff, transparently bound to the client's address,
to the pod's own address. That hop is taken in OUTPUT by its mark (PortRules.mesh_mark);
plaintext clients are still taken in PREROUTING, before ztunnel's redirect, as without a
mesh. Kubelet's probes reach an ambient pod SNATed to 169.254.7.127 (ISTIO_PRERT accepts
them before the redirect): that address counts as the node's (probe_sources).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

# vendor → (the nat OUTPUT chain whose jump says it is there, its inbound chain, the
# proxy's default uid)
VENDORS = {
    "istio": ("ISTIO_OUTPUT", "ISTIO_INBOUND", 1337),
    "linkerd": ("PROXY_INIT_OUTPUT", "PROXY_INIT_REDIRECT", 2102),
    "kuma": ("KUMA_MESH_OUTBOUND", "KUMA_MESH_INBOUND", 5678),
}
NAMES = {"istio": "Istio", "linkerd": "Linkerd", "kuma": "Kuma", "istio-ambient": "Istio ambient"}
AMBIENT_MARK = "0x539/0xfff"  # ztunnel's socket mark (istio-cni's in-pod rules)
AMBIENT_PORTS = frozenset({15001, 15006, 15008})  # ztunnel's own listeners in the pod
MAX_RANGE = 4096  # a skip range wider than this is not expanded (nobody skips that many)


@dataclass(frozen=True)
class Mesh:
    vendor: str  # "istio", "linkerd", "kuma" or "istio-ambient"
    proxy_uid: int | None  # None: no sidecar (ambient)
    skip_ports: frozenset[int]  # inbound ports the mesh does not redirect to its proxy
    proxy_mark: str | None = None  # ambient: the mark (value/mask) on ztunnel's sockets
    probe_sources: tuple[str, ...] = ()  # ambient: where kubelet's probes come from

    @property
    def sidecar(self) -> bool:
        return self.proxy_uid is not None

    def plaintext_hop(self, port: int) -> bool:
        """Whether this port's traffic reaches the app through the proxy's hop."""
        if self.proxy_mark is not None:
            return port not in AMBIENT_PORTS
        return self.sidecar and port not in self.skip_ports

    def describe(self, port: int) -> str:
        name = NAMES[self.vendor]
        if self.sidecar and self.plaintext_hop(port):
            return (f"{name} sidecar: port {port} is taken on the sidecar's plaintext hop to the "
                    f"app (uid {self.proxy_uid}, over loopback), after its mTLS")  # fmt: skip
        if self.sidecar:
            return f"{name} sidecar: port {port} is not redirected to the sidecar, taken as is"
        if self.plaintext_hop(port):
            return (f"{name}: port {port} is taken on ztunnel's plaintext hop to the app (its "
                    f"sockets marked {self.proxy_mark}), after its HBONE mTLS; plaintext "
                    "clients are taken before ztunnel")  # fmt: skip
        return f"{name}: port {port} is ztunnel's own, taken as is"


def _rules(dump: str, chain: str) -> list[list[str]]:
    out = []
    for line in dump.splitlines():
        if line.startswith(f"-A {chain} "):
            try:
                out.append(shlex.split(line))
            except ValueError:
                continue
    return out


def _after(words: list[str], flag: str) -> str | None:
    for i, word in enumerate(words[:-1]):
        if word == flag and (i == 0 or words[i - 1] != "!"):
            return words[i + 1]
    return None


def _ports(spec: str) -> set[int]:
    ports: set[int] = set()
    for part in spec.split(","):
        low, _, high = part.partition(":")
        if not low.isdigit() or (high and not high.isdigit()):
            continue
        first, last = int(low), int(high or low)
        if 0 < first <= last < 65536 and last - first < MAX_RANGE:
            ports.update(range(first, last + 1))
    return ports


def _jumps_to(dump: str, chain: str, target: str) -> bool:
    return any(_after(words, "-j") == target for words in _rules(dump, chain))


def _ambient(nat_dump: str, skip: frozenset[int]) -> Mesh:
    """ztunnel's mark is the one its inbound redirect leaves alone (`-m mark ! --mark M -j
    REDIRECT --to-ports 15006`); the probes' source is the one ISTIO_PRERT accepts."""
    mark, sources = AMBIENT_MARK, []
    for words in _rules(nat_dump, "ISTIO_PRERT"):
        target = _after(words, "-j")
        if target == "REDIRECT" and "--mark" in words[:-1]:
            mark = words[words.index("--mark") + 1]
        source = _after(words, "-s")
        if target == "ACCEPT" and source:
            sources.append(source.removesuffix("/32").removesuffix("/128"))
    return Mesh("istio-ambient", None, skip, mark, tuple(sources))


def detect_mesh(nat_dump: str, mangle_dump: str = "") -> Mesh | None:
    """The mesh whose rules are in this netns (`iptables-save -t nat` / `-t mangle`)."""
    for vendor, (output_chain, inbound_chain, default_uid) in VENDORS.items():
        if not _jumps_to(nat_dump, "OUTPUT", output_chain):
            continue
        skip: set[int] = set()
        for words in _rules(nat_dump, inbound_chain):
            if _after(words, "-j") != "RETURN" or "!" in words:
                continue
            spec = _after(words, "--dport") or _after(words, "--dports")
            if spec:
                skip |= _ports(spec)
        if vendor == "istio" and _jumps_to(mangle_dump, "OUTPUT", output_chain):
            return _ambient(nat_dump, frozenset(skip))
        uid = default_uid
        for words in _rules(nat_dump, output_chain):
            owner = _after(words, "--uid-owner")
            if owner and owner.isdigit() and _after(words, "-j") == "RETURN":
                uid = int(owner)
                break
        return Mesh(vendor, uid, frozenset(skip))
    return None
