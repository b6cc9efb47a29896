"""Config files that are not configs: huge numbers, deep nesting, endless or blocking
files. Each is a clear ConfigError with bounded memory and time, never a traceback."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mirrord.config import ConfigError, config_from_dict
from mirrord.config.loader import load_config_file

MIRRORD = str(Path(sys.executable).with_name("mirrord"))


def _error(path: str | Path) -> str:
    with pytest.raises(ConfigError) as raised:
        load_config_file(path, environ={})
    return str(raised.value)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("big.json", '{"agent": {"ttl": ' + "9" * 5000 + "}}"),
        ("big.toml", "[agent]\nttl = " + "9" * 5000 + "\n"),
        ("big.yaml", "agent:\n  ttl: " + "9" * 5000 + "\n"),
    ],
)
def test_a_number_of_thousands_of_digits(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text)
    assert "out of range" in _error(tmp_path / name)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("deep.json", '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        ("deep.toml", "a = " + "[" * 100_000 + "]" * 100_000 + "\n"),
        ("deep.yaml", "a: " + "[" * 100_000 + "]" * 100_000 + "\n"),
        ("shallow-enough.json", '{"a": ' + "[" * 500 + "]" * 500 + "}"),  # parses: depth
    ],
)
def test_deep_nesting(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text)
    message = _error(tmp_path / name)
    assert "levels deep" in message or "maximum nesting depth" in message  # ours or libyaml's


def test_yaml_aliases_are_not_walked_exponentially(tmp_path: Path) -> None:
    lines = ["a0: &a0 [1, 2]"] + [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}]" for i in range(1, 60)]
    (tmp_path / "laughs.yaml").write_text("\n".join(lines) + "\n")
    started = time.monotonic()
    data = load_config_file(tmp_path / "laughs.yaml", environ={})
    with pytest.raises(ConfigError, match="a0"):  # unknown keys, found at once
        config_from_dict(data)
    assert time.monotonic() - started < 10


def test_dev_zero_is_refused_without_reading_it_all() -> None:
    assert "a character device" in _error("/dev/zero")


def test_a_fifo_nobody_writes_to_is_an_error_not_a_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "cfg.json"
    os.mkfifo(fifo)
    assert "nothing written" in _error(fifo)


def test_a_pipe_with_a_config_works(tmp_path: Path) -> None:
    """`mirrord exec -f <(echo …)`: a pipe that is written is read to its end."""
    fifo = tmp_path / "cfg.json"
    os.mkfifo(fifo)
    opened = threading.Event()

    def write() -> None:
        with open(fifo, "w") as f:  # blocks until the reader opens
            opened.set()
            time.sleep(0.3)  # the reader waits for the data
            f.write('{"agent": {"ttl": 5}}')

    writer = threading.Thread(target=write)
    writer.start()
    try:
        # The reader must open after the writer waits in open(): retry until it holds.
        deadline = time.monotonic() + 5
        while True:
            try:
                assert load_config_file(fifo, environ={}) == {"agent": {"ttl": 5}}
                break
            except ConfigError as e:
                assert "nothing written" in str(e) and time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        writer.join(10)


def test_the_cli_says_so_in_one_line_and_bounded_memory(tmp_path: Path) -> None:
    fifo = tmp_path / "blocked.json"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo)):
        r = subprocess.run(
            [MIRRORD, "exec", "-f", path, "--", "true"],
            capture_output=True,
            text=True,
            timeout=60,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)),
        )
        assert r.returncode != 0
        assert "Traceback" not in r.stderr, r.stderr
        assert path in r.stderr, r.stderr
