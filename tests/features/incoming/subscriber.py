"""A stand-in for `mirrord exec` that subscribes and then waits to be killed.

argv: AGENT_ADDRESS TARGET_PID PORT MODE; the token comes from MIRRORD_AGENT_TOKEN.
Prints SUBSCRIBED once the agent's rules are in place.
"""

import asyncio
import os
import sys

from mirrord.client import AgentClient
from mirrord.features.incoming.client import IncomingClient


async def main() -> None:
    address, pid, port, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    client = await AgentClient.connect(
        address, os.environ["MIRRORD_AGENT_TOKEN"], pid, timeout=10.0, agent_ping_timeout=2.0
    )
    await IncomingClient(client).subscribe(port, "steal" if mode == "steal" else "mirror")
    print("SUBSCRIBED", flush=True)
    await asyncio.sleep(600)


asyncio.run(main())
