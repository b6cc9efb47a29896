"""Files from the target: path rules, a private cache of remote files, syscall handlers.

- rules.py: which paths are remote (upstream `feature.fs` semantics), pure.
- paths.py: the path a syscall names, as an absolute path, and the cache's mapping.
- structs.py: struct stat / struct statx as the kernel lays them out, pure.
- remote.py: what the handlers ask the agent (a Protocol) and its gRPC implementation.
- cache.py: the per-session cache directory remote files are materialised into.
- handlers.py: the syscall handlers and the `Feature`.

Importing the package imports none of its modules: the config check needs `config` and
`rules`, not the handlers and gRPC.
"""
