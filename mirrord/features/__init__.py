"""The features a session runs with, one folder each: its config mapping, its syscall
handlers (run by the supervisor's engines), its local proxy or delivery, its client side.

| package | owns |
| --- | --- |
| `build.py` | config + agent session → the supervisor Features of a session (the one place) |
| `check.py` | what `exec` would reject in a valid-looking config (runs the mappers) |
| `env.py` | the program's environment: the target's merged with the local one (pure) |
| `files/` | `feature.fs`: rules, handlers, the local cache, the Files client |
| `outgoing/` | `feature.network.outgoing` and DNS: filters, connect/UDP handlers, the proxy |
| `incoming/` | `feature.network.incoming`: bind/listen/accept handlers, delivery, the client |
| `sockets/` | what the network features share: sockaddrs, socket lookups, msghdrs, waits |

Importing this package imports nothing else: `build` (gRPC, the supervisor) is imported by
whoever runs a session.
"""
