"""Which paths are remote: upstream mirrord's `feature.fs` rules, pure (no I/O).

Precedence, first match wins (upstream's order; every regex is searched anywhere in the
absolute path, case-insensitively):

  mode `local`:   only the always-remote list (DNS files, below) is remote; all else local.
  other modes:    not_found > read_write > read_only > local (the user's lists), then the
                  always-remote list, then the built-in defaults: not found under $HOME
                  (.aws .config/gcloud .kube .azure) > remote read-only (/etc/resolv.conf,
                  /etc/hosts, /etc/hostname, /etc/ssl/certs) > local (/proc /sys /dev /lib
                  /usr /bin /etc …, *.so *.py …, the temp dir, the cwd, the binary,
                  $HOME/.*), and finally the mode: read → remote read-only, write → remote
                  read-write, localwithoverrides → local.

Read-only means reads are remote and opening for writing (O_WRONLY, O_RDWR, O_CREAT,
O_TRUNC, O_APPEND) is local, as upstream does. `mapping` rewrites the path (regex →
replacement, `$1`/`${name}` groups) before the rules are applied.

The always-remote list exists for DNS: when `feature.network.dns` is on (upstream's
default) the program resolves names with the target's /etc/resolv.conf, hosts,
nsswitch.conf, host.conf and gai.conf, whatever the fs mode.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

FsModeName = str  # "local" | "localwithoverrides" | "read" | "write"


class Access(enum.Enum):
    LOCAL = "local"
    NOT_FOUND = "not_found"
    READ_ONLY = "read_only"
    READ_WRITE = "read_write"


MEMO_MAX = 8192
O_WRITE_INTENT = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

DEFAULT_LOCAL: tuple[str, ...] = (
    r".\.so$",
    r".\.d$",
    r".\.pyc$",
    r".\.py$",
    r".\.jar$",
    r".\.class$",
    r".\.js$",
    r".\.pth$",
    r".\.plist$",
    r"venv\.cfg$",
    r"^/proc(/|$)",
    r"^/sys(/|$)",
    r"^/lib(/|$)",
    r"^/lib64(/|$)",
    r"^/etc(/|$)",
    r"^/usr(/|$)",
    r"^/home(/|$)",
    r"^/bin(/|$)",
    r"^/sbin(/|$)",
    r"^/dev(/|$)",
    r"^/opt(/|$)",
    r"^/tmp(/|$)",
    r"^/var/tmp(/|$)",
    r"^/snap(/|$)",
    r"^/run(/|$)",
    r"^/selinux(/|$)",
    r"^/nix(/|$)",
    r".\.asdf/.",  # upstream: .+\.asdf/.+ (the same as a search, faster)
    r"clr-.*-pipe-",
    r"\.pdb$",
    r"\.dll$",
    r"(^|/)jvm\.cfg$",  # upstream: .*(^|/)jvm\.cfg$
    r"/package\.json$",
    r"/\.yarnrc$",
    r"/\.yarnrc.yml$",
    r"/\.yarnrc.json$",
    r"/node_modules",
    r"/\.tool-versions$",  # upstream: .*/\.tool-versions$
    r"^/$",
)
DEFAULT_REMOTE_RO: tuple[str, ...] = (
    r"^/etc/resolv\.conf$",
    r"^/etc/hosts$",
    r"^/etc/hostname$",
    r"^/etc/ssl/certs(/|$)",
)
DEFAULT_NOT_FOUND_UNDER_HOME: tuple[str, ...] = (
    r"\.aws",
    r"\.config/gcloud",
    r"\.kube",
    r"\.azure",
)
DNS_FILES: tuple[str, ...] = (
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
)


def _compile(patterns: Iterable[str]) -> re.Pattern[str] | None:
    pats = list(patterns)
    if not pats:
        return None
    return re.compile("|".join(f"(?:{p})" for p in pats), re.IGNORECASE)


class _Builtin:
    """A built-in list, searched like `_compile`'s one regex but faster: the patterns
    anchored with a leading `^` (no top-level `|` in them, as in all the lists here) are
    one regex tried at position 0 only (`match`), the rest one regex searched. A
    single alternation of both would be tried at every position of every remote path."""

    __slots__ = ("_anchored", "_floating", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        pats = list(patterns)
        self.patterns = tuple(pats)  # for --explain: which one matched
        anchored = [p[1:] for p in pats if p.startswith("^")]
        self._anchored = _compile(anchored)
        self._floating = _compile(p for p in pats if not p.startswith("^"))

    def search(self, path: str) -> bool:
        if self._anchored is not None and self._anchored.match(path):
            return True
        return self._floating is not None and self._floating.search(path) is not None


def _builtin(patterns: Iterable[str]) -> _Builtin | None:
    pats = list(patterns)
    return _Builtin(pats) if pats else None


DNS_WHAT = "remote while DNS is (DNS files)"


DNS_WHAT = "remote while DNS is (DNS files)"


def _user_rule(name: str, index: int, pattern: str) -> str:
    return f"feature.fs.{name}[{index}] {pattern!r}"


def _builtin_rule(what: str, builtin: _Builtin, path: str) -> str:
    for pattern in builtin.patterns:
        if re.search(pattern, path, re.IGNORECASE):
            return f"built-in {what} list {pattern!r}"
    return f"built-in {what} list"


def _replacement(template: str) -> str:
    """Rust regex replacement syntax ($1, ${1}, $name, ${name}) → Python's \\g<...>."""
    out = re.sub(r"\$\{(\w+)\}", r"\\g<\1>", template.replace("\\", "\\\\"))
    out = re.sub(r"\$(\w+)", r"\\g<\1>", out)
    return out.replace("$$", "$")


@dataclass(frozen=True)
class Context:
    """What the built-in defaults depend on (upstream reads these from its process)."""

    cwd: str = "/"
    exe: str | None = None
    home: str | None = None
    tmpdir: str = "/tmp"


@dataclass
class FsRules:
    mode: FsModeName = "read"
    read_write: re.Pattern[str] | None = None
    read_only: re.Pattern[str] | None = None
    local: re.Pattern[str] | None = None
    not_found: re.Pattern[str] | None = None
    mapping: list[tuple[re.Pattern[str], str]] = field(default_factory=list)
    always_remote: _Builtin | None = None
    default_local: _Builtin | None = None
    default_remote_ro: _Builtin | None = None
    default_not_found: _Builtin | None = None
    # The user's lists as written, in config order: --explain names the entry that decided.
    user_lists: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # --explain: told each path's access once (on a memo miss: off, it costs nothing).
    on_decide: Callable[[str, Access], None] | None = field(default=None, compare=False)
    on_map: Callable[[str, str, str], None] | None = field(default=None, compare=False)
    on_every: Callable[[str, Access], None] | None = field(default=None, compare=False)
    # decide() is pure and programs ask about the same paths over and over (a Python
    # start-up stats each sys.path entry per import): memoised, bounded.
    _memo: dict[str, Access] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def build(
        cls,
        mode: FsModeName = "read",
        *,
        read_write: Sequence[str] = (),
        read_only: Sequence[str] = (),
        local: Sequence[str] = (),
        not_found: Sequence[str] = (),
        mapping: Sequence[tuple[str, str]] = (),
        dns_remote: bool = True,
        context: Context | None = None,
    ) -> FsRules:
        """Raises re.error (naming nothing) for a bad pattern; callers say which list."""
        ctx = context or Context()
        defaults = list(DEFAULT_LOCAL)
        defaults.append("^" + re.escape(ctx.tmpdir.rstrip("/") or "/"))
        cwd = ctx.cwd.rstrip("/")
        if cwd:
            defaults.append(f"^{re.escape(cwd)}(/|$)")
        if ctx.exe:
            defaults.append(f"{re.escape(ctx.exe)}$")
        home = (ctx.home or "").rstrip("/")
        if home:
            defaults.append(f"^{re.escape(home)}/\\.")
        return cls(
            mode=mode,
            read_write=_compile(read_write),
            read_only=_compile(read_only),
            local=_compile(local),
            not_found=_compile(not_found),
            mapping=[(re.compile(p, re.IGNORECASE), _replacement(r)) for p, r in mapping],
            user_lists={
                "not_found": tuple(not_found),
                "read_write": tuple(read_write),
                "read_only": tuple(read_only),
                "local": tuple(local),
                "mapping": tuple(p for p, _ in mapping),
            },
            always_remote=_builtin(f"^{re.escape(p)}$" for p in DNS_FILES) if dns_remote else None,
            default_local=_builtin(defaults),
            default_remote_ro=_builtin(DEFAULT_REMOTE_RO),
            default_not_found=_builtin(
                f"^{re.escape(home)}/{p}" for p in DEFAULT_NOT_FOUND_UNDER_HOME
            )
            if home
            else None,
        )

    @property
    def anything_remote(self) -> bool:
        """Whether any path can be remote at all (else the feature traps nothing)."""
        return self.mode != "local" or self.always_remote is not None

    @property
    def writes_remote(self) -> bool:
        """Whether any path can be written remotely (close/fsync then need a stop)."""
        return self.mode == "write" or (self.mode != "local" and self.read_write is not None)

    def map_path(self, path: str) -> str:
        for index, (pattern, repl) in enumerate(self.mapping):
            if pattern.search(path):
                mapped = pattern.sub(repl, path, count=1)
                if self.on_map is not None:
                    rule = _user_rule("mapping", index, self.user_lists["mapping"][index])
                    self.on_map(path, mapped, rule)
                return mapped
        return path

    def decide(self, path: str) -> Access:
        """The access an (absolute, normalised, mapped) path gets."""
        access = self._memo.get(path)
        if access is None:
            if len(self._memo) >= MEMO_MAX:
                self._memo.clear()
            access = self._memo[path] = self._decide(path)
            if self.on_decide is not None:
                self.on_decide(path, access)
        elif self.on_every is not None:  # --explain with MIRRORD_EXPLAIN_ALL: repeats too
            self.on_every(path, access)
        return access

    def prewarm(self, paths: Iterable[str]) -> None:
        """Decide these paths ahead (a walk's entries, while the program works), into the
        memo its own calls read. Not with --explain's hooks: they record the program's
        own decisions only."""
        if self.on_decide is None and self.on_every is None:
            for path in paths:
                self.decide(path)

    def user_rules(self) -> list[str]:
        """The user's entries as `rule_for` names them (--explain: never-matched ones)."""
        return [
            _user_rule(name, index, pattern)
            for name in ("not_found", "read_write", "read_only", "local", "mapping")
            for index, pattern in enumerate(self.user_lists.get(name, ()))
        ]

    def rule_for(self, path: str) -> str:
        """Which rule decides `path`, in words (--explain only: it tests the patterns one
        by one, as `_decide` does with them joined)."""
        dns = self.always_remote
        if dns is not None and not dns.search(path):
            dns = None
        if self.mode == "local":
            return _builtin_rule(DNS_WHAT, dns, path) if dns else "feature.fs.mode local"
        for name in ("not_found", "read_write", "read_only", "local"):
            for index, pattern in enumerate(self.user_lists.get(name, ())):
                if re.search(pattern, path, re.IGNORECASE):
                    return _user_rule(name, index, pattern)
        if dns is not None:
            return _builtin_rule(DNS_WHAT, dns, path)
        builtins = (
            ("not found (under $HOME)", self.default_not_found),
            ("read-only remote", self.default_remote_ro),
            ("local", self.default_local),
        )
        for what, builtin in builtins:
            if builtin is not None and builtin.search(path):
                return _builtin_rule(what, builtin, path)
        return f"feature.fs.mode {self.mode} (no rule matched)"

    def _decide(self, path: str) -> Access:
        if self.mode == "local":
            if self.always_remote is not None and self.always_remote.search(path):
                return Access.READ_ONLY
            return Access.LOCAL
        checks: tuple[tuple[re.Pattern[str] | _Builtin | None, Access], ...] = (
            (self.not_found, Access.NOT_FOUND),
            (self.read_write, Access.READ_WRITE),
            (self.read_only, Access.READ_ONLY),
            (self.local, Access.LOCAL),
            (self.always_remote, Access.READ_ONLY),
            (self.default_not_found, Access.NOT_FOUND),
            (self.default_remote_ro, Access.READ_ONLY),
            (self.default_local, Access.LOCAL),
        )
        for pattern, access in checks:
            if pattern is not None and pattern.search(path):
                return access
        if self.mode == "read":
            return Access.READ_ONLY
        if self.mode == "write":
            return Access.READ_WRITE
        return Access.LOCAL  # localwithoverrides

    def for_open(self, path: str, flags: int) -> Access:
        """The access for open(2) with these flags: read-only paths open locally when
        the program means to write."""
        access = self.decide(path)
        if access is Access.READ_ONLY and flags & O_WRITE_INTENT:
            return Access.LOCAL
        return access
