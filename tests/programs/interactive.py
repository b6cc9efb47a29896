#!/usr/bin/python3
"""Pty test program: prompts "name? ", answers "hello <line>", reports whether stdin is a tty,
then waits for SIGINT, prints "got SIGINT" and exits 130."""

import os
import signal
import sys

# Blocked from the start and collected with sigwait: a SIGINT sent early is not lost, and
# there is no race between checking a flag and pausing.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
sys.stdout.write("name? ")
sys.stdout.flush()
line = sys.stdin.readline().rstrip("\r\n")
print(f"hello {line}")
print(f"isatty={'yes' if os.isatty(0) else 'no'}")
print("waiting for SIGINT", flush=True)
signal.sigwait({signal.SIGINT})
print("got SIGINT", flush=True)
sys.exit(130)
