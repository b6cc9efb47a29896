"""`mirrord exec --explain`: every decision mirrord makes for the program (a file local or
remote, a connection, a DNS name, an incoming port, an environment variable), which rule
made it, and a summary at the end. See docs/explain.md for the JSON lines schema.

| module | owns |
| --- | --- |
| `record.py` | the Explainer: records decisions (thread-safe), writes JSON lines, counts |
| `summary.py` | the summary: counts per decision and rule, failures, unmatched rules (pure) |
| `hooks.py` | the remote files' failures, told by a wrapper of the fs feature's agent client |
| `schema.py` | the JSON schema of one record (pure data; docs/explain.md shows it) |

Off (no `--explain`), nothing is created: the hooks test a None attribute.
"""

from mirrord.explain.record import Explainer
from mirrord.explain.summary import Summary, summarize_file

__all__ = ["Explainer", "Summary", "summarize_file"]
