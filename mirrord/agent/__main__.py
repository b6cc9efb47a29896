import contextlib
import logging
import os
import sys

from mirrord.agent.main import main

code = main(sys.argv[1:])
# Every session's cleanup has run by now (rules, namespaces, helpers); the interpreter's
# own teardown (gRPC, thread pools, modules) took ~20 ms that `mirrord exec` waited for.
logging.shutdown()
for stream in (sys.stdout, sys.stderr):
    with contextlib.suppress(Exception):
        stream.flush()
os._exit(code)
