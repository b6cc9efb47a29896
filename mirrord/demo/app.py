"""The demo's sample program: prints what it sees of "its pod".

Run it plain and under `mirrord exec --target pid/N`; the second run shows the pod's
world. Standard library only, and it knows nothing about mirrord.
"""

import os
import socket

SHOWN = ("SERVICE_NAME", "DATABASE_URL", "FEATURE_FLAGS", "POD_NAME", "HOME", "PATH")
CONFIG = "/srv/checkout/config.yaml"  # exists only in the pod's file system


def main() -> None:
    print(f"  hostname     : {socket.gethostname()}")
    for name in SHOWN:
        print(f"  {name:<13}: {os.environ.get(name, '(not set)')}")
    try:
        with open(CONFIG) as f:
            text = f.read().strip().replace("\n", "; ")
    except OSError as e:
        text = f"({e.strerror})"
    print(f"  {CONFIG}: {text}")


if __name__ == "__main__":
    main()
