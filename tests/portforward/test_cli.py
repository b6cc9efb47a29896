"""`mirrord port-forward`'s command line: the -L/-R forms (pure), -h, upstream's flags that
have no effect here, usage errors, and the failures told before any session exists (a local
port in use, an agent that cannot be reached). No root, no network beyond loopback.

`PortForward` (a running `mirrord port-forward` whose stderr is read as it comes) is used by
the end-to-end tests too (tests/portforward/test_reverse.py,
tests/kube/test_kube_portforward.py)."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from mirrord.portforward import (
    ForwardSpec,
    PortForwardError,
    ReverseSpec,
    SpecError,
    parse_all,
    parse_reverse_spec,
    parse_spec,
)

MIRRORD = str(Path(sys.executable).with_name("mirrord"))


class PortForward:
    """A `mirrord port-forward` process; its stderr lines are collected by a thread."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [MIRRORD, "port-forward", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(env) if env is not None else None,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _drain(self, timeout: float) -> bool:
        """Take the next line (False at the end of stderr)."""
        line = self._queue.get(timeout=timeout)
        if line is None:
            self._queue.put(None)  # stays at the end
            return False
        self.lines.append(line)
        return True

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        """The first stderr line containing `text` (fails if mirrord ends first)."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if text in line:
                    return line
            seen = len(self.lines)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line with {text!r} in:\n{self.stderr}")
            try:
                more = self._drain(min(left, 0.5))
            except queue.Empty:
                continue
            if not more:
                raise AssertionError(
                    f"mirrord ended ({self.proc.wait()}) before {text!r}:\n{self.stderr}"
                )

    def wait(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        while True:
            try:
                if not self._drain(0):
                    break
            except queue.Empty:
                break
        return code

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)


def run(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MIRRORD, "port-forward", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(env) if env is not None else None,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the forms (pure)


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("8080:svc:80", ForwardSpec(8080, "svc", 80)),
        ("svc:80", ForwardSpec(80, "svc", 80)),
        ("3030:152.37.110.132:3038", ForwardSpec(3030, "152.37.110.132", 3038)),  # upstream's
        ("stringy.gov.biz:3038", ForwardSpec(3038, "stringy.gov.biz", 3038)),
        ("9000:[fd00::1]:443", ForwardSpec(9000, "fd00::1", 443)),
        ("[::1]:22", ForwardSpec(22, "::1", 22)),
        ("65535:h:1", ForwardSpec(65535, "h", 1)),
    ],
)
def test_forward_forms(text: str, spec: ForwardSpec) -> None:
    assert parse_spec(text) == spec


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("3030:152.37.110.132:3038:2027", "expected [LPORT:]HOST:RPORT"),  # upstream's cases
        ("152.37.110.132:3030:3038", "'152.37.110.132' is not a port number"),
        ("3030:152.37.110.132:0", "port 0 is not allowed"),
        ("0:svc:80", "port 0 is not allowed"),
        ("3o3o:152.37.110.132:3o38", "'3o38' is not a port number"),
        ("30303030:152.37.110.132:3038", "port 30303030 is out of range"),
        ("", "expected [LPORT:]HOST:RPORT"),
        ("svc", "expected [LPORT:]HOST:RPORT"),
        (":80", "expected [LPORT:]HOST:RPORT"),
        ("8080::80", "expected [LPORT:]HOST:RPORT"),
        ("8080:[fd00::1]", "expected [LPORT:]HOST:RPORT"),
        ("8080:[fd00::1:80", "expected [LPORT:]HOST:RPORT"),
        ("x[::1]:80", "expected [LPORT:]HOST:RPORT"),
        ("-1:svc:80", "'-1' is not a port number"),
        ("\uff18\uff10:svc:80", "is not a port number"),  # fullwidth "80": isdigit(), not ASCII
    ],
)
def test_forward_form_errors(text: str, why: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(text)
    assert why in str(caught.value)
    assert caught.value.exit_code == 2
    assert isinstance(caught.value, PortForwardError)


@pytest.mark.parametrize(
    ("text", "spec"),
    [("8080", ReverseSpec(8080, 8080)), ("80:8080", ReverseSpec(80, 8080))],
)
def test_reverse_forms(text: str, spec: ReverseSpec) -> None:
    assert parse_reverse_spec(text) == spec


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("0", "port 0 is not allowed"),
        ("80:0", "port 0 is not allowed"),
        ("0:80", "port 0 is not allowed"),
        ("", "'' is not a port number"),
        ("80:", "'' is not a port number"),
        ("1:2:3", "expected [REMOTE_PORT:]LOCAL_PORT"),
        ("http", "'http' is not a port number"),
        ("70000", "out of range"),
    ],
)
def test_reverse_form_errors(text: str, why: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_reverse_spec(text)
    assert why in str(caught.value)


def test_mappings_checked_together() -> None:
    fwd, rev = parse_all(["8080:a:80", "9090:b:80"], ["80:8080", "81:8080"])
    assert fwd == [ForwardSpec(8080, "a", 80), ForwardSpec(9090, "b", 80)]
    assert rev == [ReverseSpec(80, 8080), ReverseSpec(81, 8080)]  # one local port twice: fine
    with pytest.raises(SpecError, match=r"more than one mapping for local port 127\.0\.0\.1:80"):
        parse_all(["a:80", "80:b:81"], [])
    with pytest.raises(SpecError, match="more than one mapping for the target's port 80"):
        parse_all([], ["80", "80:9000"])
    with pytest.raises(SpecError, match=r"-L/--port-mapping .* -R/--reverse-port-mapping"):
        parse_all([], [])


@pytest.mark.parametrize(
    ("network", "port", "line", "note"),
    [
        (None, 8080, "mirroring port 8080 of the target (pid 7) -> 127.0.0.1:3000 "
         "(copies; the target still answers)", None),
        ({"incoming": "steal"}, 8080, "stealing port 8080 of the target (pid 7) -> "
         "127.0.0.1:3000 (this machine answers)", None),
        ({"incoming": {"mode": "steal", "http_filter": {"header_filter": "x-user: me"}}}, 8080,
         "stealing port 8080 of the target (pid 7) -> 127.0.0.1:3000 (requests matching the "
         "HTTP filter; the others stay with the target)", None),
        # http_filter.ports defaults to 80 and 8080: other ports are stolen whole.
        ({"incoming": {"mode": "steal", "http_filter": {"header_filter": "x-user: me"}}}, 9000,
         "stealing port 9000 of the target (pid 7) -> 127.0.0.1:3000 (this machine answers)",
         None),
        ({"incoming": "off"}, 8080, "mirroring port 8080", "-R mirrors (as upstream does)"),
        (False, 8080, "mirroring port 8080", "-R mirrors (as upstream does)"),
    ],
)  # fmt: skip
def test_reverse_mode_comes_from_the_config(
    network: object, port: int, line: str, note: str | None
) -> None:
    from mirrord.config import MirrordConfig
    from mirrord.portforward.reverse import reverse_settings
    from mirrord.portforward.run import _reverse_line
    from mirrord.target import Target

    raw = {} if network is None else {"feature": {"network": network}}
    settings, said = reverse_settings(MirrordConfig.model_validate(raw))
    assert _reverse_line(ReverseSpec(port, 3000), Target(pid=7), settings).startswith(line)
    assert (said is None) == (note is None) and (note is None or note in str(said))


# -- the command line


def test_help() -> None:
    for flag in ("-h", "--help"):
        r = run(flag)
        assert r.returncode == 0, r.stderr
        for option in (
            "--port-mapping", "--reverse-port-mapping", "--target", "--target-namespace",
            "--agent-namespace", "--agent-log-level", "--agent-image", "--agent-ttl",
            "--agent-startup-timeout", "--ephemeral-container", "--accept-invalid-certific",
            "--no-telemetry", "--disable-version-check", "--config-file", "--context",
            "--kubeconfig", "--agent-address",
        ):  # fmt: skip
            assert option in r.stdout, option


def test_one_of_l_and_r_is_required() -> None:
    r = run("-t", "pid/1")
    assert r.returncode == 2
    assert "-L/--port-mapping" in r.stderr and "-R/--reverse-port-mapping" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["-L", "1:svc:0"], "-L '1:svc:0': port 0 is not allowed"),
        (["-R", "0"], "-R '0': port 0 is not allowed"),
        (["-R", "8080:x"], "-R '8080:x': 'x' is not a port number"),
        (["--port-mappings", "80:a:80", "-L", "80:b:80"], "more than one mapping for local"),
        (["-c=maybe", "-L", "a:80"], "--accept-invalid-certificates: expected true or false"),
        (["--agent-address", "nowhere", "-L", "a:80"], "--agent-address nowhere: expected"),
        (["-t", "pid/x", "-L", "a:80"], "target.path: a local process target is pid/PID"),
        (["-t", "targetless", "-R", "8080"], "-R needs a target"),
        (
            ["-t", "pod/web", "--agent-address", "127.0.0.1:9", "-L", "a:80"],
            "--agent-address reaches one agent directly",
        ),
        (
            ["--agent-address", "127.0.0.1:9", "--agent-token-file", "/nonexistent", "-L", "a:80"],
            "cannot read the agent token file /nonexistent",
        ),
        (["-L", "a:80", "--frobnicate"], "No such option: --frobnicate"),
    ],
)
def test_usage_errors(args: list[str], why: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "MIRRORD_CONFIG_FILE")}
    r = run(*args, env={**env, "MIRRORD_AGENT_TOKEN": "x"})
    assert r.returncode == 2, r.stderr
    assert why in r.stderr
    assert "Traceback" not in r.stderr


def test_an_agent_address_needs_a_token() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MIRRORD_AGENT_TOKEN"}
    r = run("--agent-address", "127.0.0.1:9", "-t", "pid/1", "-L", "a:80", env=env)
    assert r.returncode == 2
    assert "--agent-address needs the agent's token" in r.stderr


def test_flags_without_effect_say_so_once_each() -> None:
    r = run(
        "--agent-ttl", "30", "-e", "--no-telemetry", "--disable-version-check",
        "-L", "1:svc:0",  # stops before any session
    )  # fmt: skip
    assert r.returncode == 2
    warnings = [line for line in r.stderr.splitlines() if "has no effect here" in line]
    assert len(warnings) == 4, r.stderr
    for flag in (
        "--agent-ttl",
        "--ephemeral-container",
        "--no-telemetry",
        "--disable-version-check",
    ):
        (line,) = [w for w in warnings if f" {flag} " in w]
        assert line.startswith(f"mirrord: warning: {flag} has no effect here (")
        assert line.endswith("; ignored")
    # The flags that mean something say nothing of the kind.
    r = run("-a", "ns", "-l", "debug", "-i", "img", "--agent-startup-timeout", "5", "-L", "1:s:0")
    assert "no effect" not in r.stderr and "not built" not in r.stderr, r.stderr


def test_a_local_port_in_use_is_said_before_any_agent_is_reached() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        start = time.monotonic()
        r = run("--agent-address", "127.0.0.1:9", "-t", "pid/1", "-L", f"{port}:svc:80",
                env={**os.environ, "MIRRORD_AGENT_TOKEN": "x"})  # fmt: skip
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: in use" in r.stderr
    assert "Traceback" not in r.stderr
    assert time.monotonic() - start < 10


def test_an_unreachable_agent_is_a_clean_error() -> None:
    port = free_port()  # nothing listens there
    r = run("--agent-address", f"127.0.0.1:{port}", "--agent-startup-timeout", "1",
            "-t", "pid/1", "-L", f"{free_port()}:svc:80",
            env={**os.environ, "MIRRORD_AGENT_TOKEN": "x"})  # fmt: skip
    assert r.returncode == 1
    assert f"could not reach the agent at 127.0.0.1:{port} within 1s" in r.stderr
    assert "Traceback" not in r.stderr
    assert "forwarding" not in r.stderr  # never claimed to forward


def test_ctrl_c_while_reaching_the_agent_stops_cleanly() -> None:
    lport = free_port()
    pf = PortForward(
        ["--agent-address", f"127.0.0.1:{free_port()}", "--agent-startup-timeout", "60",
         "-t", "pid/1", "-L", f"{lport}:svc:80"],
        env={**os.environ, "MIRRORD_AGENT_TOKEN": "x"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:  # the -L listener exists once the agent is being reached
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", lport)) == 0:
                    break
            assert time.monotonic() < deadline, pf.stderr
            time.sleep(0.05)
        code = pf.stop(signal.SIGINT, timeout=10)
    finally:
        pf.kill()
    assert code == 130, pf.stderr
    assert "mirrord: interrupted" in pf.stderr
    assert "Traceback" not in pf.stderr
    with socket.socket() as probe:  # the listener is gone
        assert probe.connect_ex(("127.0.0.1", lport)) != 0
