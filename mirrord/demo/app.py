"""The demo's sample program: prints what it sees of "its pod".

Run it plain and under `mirrord exec --target pid/N`; the second run shows the pod's
world. Standard library only, and it knows nothing about mirrord.
"""

import os
import socket
import urllib.request

SHOWN = ("SERVICE_NAME", "DATABASE_URL", "FEATURE_FLAGS", "POD_NAME", "HOME", "PATH")
CONFIG = "/srv/checkout/config.yaml"  # exists only in the pod's file system
# A service only the pod reaches, by a name only the pod resolves (its /etc/hosts).
INVENTORY = "http://inventory.shop.svc.cluster.local:8080/"


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
    try:
        # Short timeout: outside the pod the name does not resolve, or nothing answers.
        with urllib.request.urlopen(INVENTORY, timeout=3) as resp:
            body = resp.read().decode()
    except OSError as e:
        body = f"({getattr(e, 'reason', None) or e})"
    print(f"  GET {INVENTORY}: {body}")


def serve_once(port: int) -> None:
    """Answer one HTTP request on `port` (under mirrord steal: a request sent to the pod)."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"answered by the local program (peer {self.client_address[0]})".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with http.server.HTTPServer(("0.0.0.0", port), Handler) as server:
        server.handle_request()


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--serve"]:
        serve_once(int(sys.argv[2]))
    else:
        main()
